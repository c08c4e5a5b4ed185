/*
 * QEMU TCG plugin for imusic edge-check: counts guest instructions executed and writes the running
 * count whenever the guest asks for a mark.
 *
 * A mark is the syscall lseek(-1, IMUSIC_MARK_BASE + k, SEEK_SET): it fails with EBADF in the
 * guest (no side effect) and lets a Python script bracket the code it wants measured. Each mark
 * appends "mark <k> <instructions so far>" to the file given as out=PATH; "total <n>" at exit.
 *
 * Only the few entry points used here are declared (QEMU's qemu-plugin.h is not in Debian's
 * binary packages); the plugin API is a stable C ABI, version-checked by QEMU at load through
 * `qemu_plugin_version`. IMUSIC_PLUGIN_API picks the version the installed QEMU speaks (1 up to
 * QEMU 8.x, 2 from 9.0, which also dropped the inline-add call: the callback path is used there).
 *
 * Build: cc -shared -fPIC -O2 -DIMUSIC_PLUGIN_API=1 -o insn_count.so insn_count.c
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef IMUSIC_PLUGIN_API
#define IMUSIC_PLUGIN_API 1
#endif

#define EXPORT __attribute__((visibility("default")))
#define IMUSIC_MARK_BASE 0x1a7e5e00ULL /* marks are BASE + 0..255 */
#define AARCH64_NR_LSEEK 62

typedef uint64_t plugin_id;
struct qemu_plugin_tb;
typedef struct qemu_info qemu_info_t; /* never dereferenced here */

typedef void (*tb_trans_cb)(plugin_id id, struct qemu_plugin_tb *tb);
typedef void (*vcpu_udata_cb)(unsigned int vcpu_index, void *userdata);
typedef void (*udata_cb)(plugin_id id, void *userdata);
typedef void (*syscall_cb)(plugin_id id, unsigned int vcpu_index, int64_t num, uint64_t a1,
                           uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6,
                           uint64_t a7, uint64_t a8);

extern void qemu_plugin_register_vcpu_tb_trans_cb(plugin_id id, tb_trans_cb cb);
extern size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
extern void qemu_plugin_register_vcpu_syscall_cb(plugin_id id, syscall_cb cb);
extern void qemu_plugin_register_atexit_cb(plugin_id id, udata_cb cb, void *userdata);
#if IMUSIC_PLUGIN_API < 2
/* enum qemu_plugin_op: QEMU_PLUGIN_INLINE_ADD_U64 == 0 */
extern void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, int op, void *ptr,
                                                     uint64_t imm);
#else
/* enum qemu_plugin_cb_flags: QEMU_PLUGIN_CB_NO_REGS == 0 */
extern void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, vcpu_udata_cb cb,
                                                 int flags, void *userdata);
#endif

EXPORT int qemu_plugin_version = IMUSIC_PLUGIN_API;

/* The guest runs one thread that matters (the interpreter is created with one thread); counts of
 * any other thread land here too, unsynchronised, which is why the check uses one thread. */
static uint64_t insns;
static FILE *out;

#if IMUSIC_PLUGIN_API >= 2
static void on_tb_exec(unsigned int vcpu_index, void *userdata)
{
    (void)vcpu_index;
    insns += (uint64_t)(uintptr_t)userdata;
}
#endif

static void on_tb_trans(plugin_id id, struct qemu_plugin_tb *tb)
{
    (void)id;
    uint64_t n = qemu_plugin_tb_n_insns(tb);
#if IMUSIC_PLUGIN_API < 2
    qemu_plugin_register_vcpu_tb_exec_inline(tb, 0, &insns, n);
#else
    qemu_plugin_register_vcpu_tb_exec_cb(tb, on_tb_exec, 0, (void *)(uintptr_t)n);
#endif
}

static void on_syscall(plugin_id id, unsigned int vcpu_index, int64_t num, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    (void)id; (void)vcpu_index; (void)a3; (void)a4; (void)a5; (void)a6; (void)a7; (void)a8;
    if (num == AARCH64_NR_LSEEK && (int32_t)a1 == -1 && a2 >= IMUSIC_MARK_BASE &&
        a2 < IMUSIC_MARK_BASE + 256) {
        fprintf(out, "mark %llu %llu\n", (unsigned long long)(a2 - IMUSIC_MARK_BASE),
                (unsigned long long)insns);
        fflush(out);
    }
}

static void on_qemu_exit(plugin_id id, void *userdata)
{
    (void)id; (void)userdata;
    fprintf(out, "total %llu\n", (unsigned long long)insns);
    fclose(out);
}

EXPORT int qemu_plugin_install(plugin_id id, const qemu_info_t *info, int argc, char **argv)
{
    (void)info;
    const char *path = NULL;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            path = argv[i] + 4;
        }
    }
    out = path ? fopen(path, "w") : stderr;
    if (!out) {
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb_trans);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, on_qemu_exit, NULL);
    return 0;
}
