"""An emulated aarch64 Python on this x86 machine, prepared once and cached.

Pieces (cache layout under ``cache_dir()``):

- ``rootfs-bookworm-arm64/``: Debian bookworm's arm64 ``python3`` (what Raspberry Pi OS 12 has),
  from ``debootstrap --foreign`` (downloads and unpacks the base without running arm code), then
  every downloaded ``.deb`` unpacked with ``dpkg-deb -x`` (the foreign second stage would need
  binfmt_misc, which containers here do not have).
- ``site-<key>/``: the aarch64 wheels of the host's own versions of LiteRT and imusic's runtime
  dependencies (same versions on both sides, so a difference is the machine's, not a release's).
  LiteRT 2.x wheels are tagged manylinux_2_27, which pip only accepts when that tag is named.
- ``views/<cpu>/``: the root QEMU's ``-L`` points at: the rootfs hard-linked, plus a
  ``proc/cpuinfo`` for the chosen core. QEMU passes the host's x86 ``/proc/cpuinfo`` through
  otherwise, and LiteRT's CPU detection crashes on it (SIGSEGV creating the interpreter).
- ``plugin/insn_count-<qemu>-<hash>.so``: the instruction-count plugin, compiled from
  ``insn_count.c`` for the installed QEMU (Debian ships no plugins or plugin header).

QEMU is called explicitly (``qemu-aarch64 -cpu C -L VIEW VIEW/usr/bin/python3.11 ...``): no
binfmt registration needed. The dynamic ``qemu-aarch64`` (package qemu-user) is used because
the static build cannot load plugins.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imusic.errors import UserError

__all__ = ["CPUS", "CpuModel", "EdgeError", "EdgeToolsMissing", "Guest", "GuestRun", "cache_dir", "prepare",
           "stderr_log"]

SUITE = "bookworm"
GUEST_PYTHON = "usr/bin/python3.11"
WHEEL_PLATFORMS = ("manylinux_2_27_aarch64", "manylinux_2_28_aarch64", "manylinux2014_aarch64",
                   "manylinux_2_17_aarch64")
# Distributions the guest needs: LiteRT for the model, the rest for imusic's streaming runtime.
GUEST_DISTRIBUTIONS = ("ai-edge-litert", "numpy", "scipy", "pyyaml", "imufusion", "construct", "pyserial")
INSTALL_HINT = "apt-get install qemu-user debootstrap gcc"


class EdgeError(UserError):
    """The emulated run could not be prepared or did not complete."""


class EdgeToolsMissing(EdgeError):
    """A host tool the emulation needs is not installed."""


@dataclass(frozen=True)
class CpuModel:
    """A QEMU CPU model and what the fake ``/proc/cpuinfo`` says about it."""

    name: str  # QEMU -cpu name
    part: str  # MIDR part number (Arm: 0xd08 A72, 0xd0b A76)
    variant: str
    revision: int
    features: str  # the kernel's hwcap names for this core
    devices: str  # boards with this core class

    def cpuinfo(self, n_cpus: int) -> str:
        block = ("processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {f}\nCPU implementer\t: 0x41\n"
                 "CPU architecture: 8\nCPU variant\t: {v}\nCPU part\t: {p}\nCPU revision\t: {r}\n")
        return "\n".join(block.format(i=i, f=self.features, v=self.variant, p=self.part, r=self.revision)
                         for i in range(n_cpus)) + "\n"


CPUS: dict[str, CpuModel] = {
    "cortex-a72": CpuModel("cortex-a72", "0xd08", "0x0", 3, "fp asimd evtstrm crc32 cpuid",
                           "Raspberry Pi 4 (BCM2711)"),
    "cortex-a76": CpuModel("cortex-a76", "0xd0b", "0x4", 1,
                           "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
                           "lrcpc dcpop asimddp", "Raspberry Pi 5 (BCM2712); Jetson Orin's A78AE is of this class"),
}


def cache_dir(explicit: str | Path | None = None) -> Path:
    """``--cache`` if given, else $IMUSIC_EDGE_CACHE, else $XDG_CACHE_HOME/imusic/edge (~/.cache)."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("IMUSIC_EDGE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "imusic" / "edge"


Log = Callable[[str], None]


def stderr_log(msg: str) -> None:
    print(f"edge: {msg}", file=sys.stderr, flush=True)


def _require(tools: dict[str, str]) -> dict[str, str]:
    """Paths of the named tools; one error naming every missing one and what installs it."""
    found = {t: shutil.which(t) for t in tools}
    missing = [t for t, p in found.items() if p is None]
    if missing:
        pkgs = " ".join(dict.fromkeys(tools[t] for t in missing))
        raise EdgeToolsMissing(f"edge-check needs {', '.join(missing)} (not found on PATH): install them, "
                               f"e.g. `apt-get install {pkgs}` on Debian/Ubuntu")
    return {t: str(p) for t, p in found.items()}


def _run(cmd: list[str], what: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    try:
        res = subprocess.run(cmd, check=False, text=True, capture_output=True, **kw)
    except OSError as exc:
        raise EdgeError(f"{what}: cannot run {cmd[0]}: {exc}") from None
    if res.returncode != 0:
        tail = " | ".join((res.stderr or res.stdout).strip().splitlines()[-3:])
        raise EdgeError(f"{what} failed (exit {res.returncode}): {tail}")
    return res


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One preparer at a time per cache (tests and CLI runs may start together)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def debian_mirror() -> str:
    """$IMUSIC_DEBIAN_MIRROR, else the Debian mirror this machine's apt uses, else deb.debian.org."""
    env = os.environ.get("IMUSIC_DEBIAN_MIRROR")
    if env:
        return env
    try:
        out = subprocess.run(["apt-cache", "policy"], check=False, text=True, capture_output=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    for line in out.splitlines():
        m = re.search(r"(https?://\S+)\s+\S+/main\b", line)
        if m and "o=Debian" in out and "security" not in m.group(1):
            return m.group(1)
    return "http://deb.debian.org/debian"


def qemu_version(qemu: str) -> tuple[int, int]:
    out = _run([qemu, "--version"], "qemu-aarch64 --version").stdout
    m = re.search(r"version (\d+)\.(\d+)", out)
    if not m:
        raise EdgeError(f"cannot read the QEMU version from {out.strip()!r}")
    return int(m.group(1)), int(m.group(2))


def _plugin_api(version: tuple[int, int]) -> int:
    # Plugins arrived in 4.2; 9.0 raised the minimum plugin API to 2 (and dropped inline adds).
    if version < (4, 2):
        raise EdgeError(f"QEMU {version[0]}.{version[1]} has no TCG plugins (4.2 or newer needed)")
    return 1 if version < (9, 0) else 2


def _build_rootfs(dest: Path, log: Log) -> None:
    tools = _require({"debootstrap": "debootstrap", "dpkg-deb": "dpkg"})
    if os.geteuid() != 0:
        raise EdgeError("preparing the aarch64 root filesystem runs debootstrap, which needs root: run "
                        "edge-check once as root (or point --cache at a prepared cache)")
    mirror = debian_mirror()
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"downloading Debian {SUITE} arm64 python3 from {mirror} (debootstrap --foreign, once)")
    _run([tools["debootstrap"], "--foreign", "--arch=arm64", "--variant=minbase", "--include=python3",
          SUITE, str(tmp), mirror], "debootstrap", timeout=1800)
    archives = tmp / "var" / "cache" / "apt" / "archives"
    debs = sorted(archives.glob("*.deb"))
    if not any(d.name.startswith("python3.11-minimal_") for d in debs):
        raise EdgeError(f"debootstrap did not download python3.11 into {archives}")
    log(f"unpacking {len(debs)} packages (dpkg-deb -x)")
    for deb in debs:
        _run([tools["dpkg-deb"], "-x", str(deb), str(tmp)], f"dpkg-deb -x {deb.name}", timeout=600)
        deb.unlink()
    if not (tmp / GUEST_PYTHON).exists():
        raise EdgeError(f"{GUEST_PYTHON} missing after unpacking the packages")
    (tmp / ".imusic-ready").write_text(f"{SUITE} {mirror}\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def _host_versions() -> dict[str, str]:
    out = {}
    for dist in GUEST_DISTRIBUTIONS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            raise EdgeError(f"{dist} is not installed on this machine: install imusic's runtime "
                            f"dependencies first (pip install imusic)") from None
    return out


def _build_site(dest: Path, versions: dict[str, str], wheels: Path, log: Log) -> None:
    pins = [f"{d}=={v}" for d, v in versions.items()]
    plat: list[str] = []
    for p in WHEEL_PLATFORMS:
        plat += ["--platform", p]
    target = ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", *plat]
    wheels.mkdir(parents=True, exist_ok=True)
    log(f"downloading aarch64 wheels: {' '.join(pins)}")
    _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *target, "-d", str(wheels), *pins],
         "pip download (aarch64 wheels)", timeout=1800)
    files = [str(p) for p in sorted(wheels.glob("*.whl"))
             if any(p.name.lower().startswith(d.replace("-", "_").lower() + "-" + versions[d] + "-")
                    for d in versions)]
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", *target, "--target", str(tmp),
          *files], "pip install --target (aarch64 wheels)", timeout=1800)
    (tmp / ".imusic-ready").write_text(" ".join(pins) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    shutil.rmtree(wheels, ignore_errors=True)  # installed: the downloads are not needed again


def _build_plugin(dest: Path, src: Path, api: int, log: Log) -> None:
    tools = _require({"cc": "gcc"})
    log(f"compiling the instruction-count plugin (QEMU plugin API {api})")
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    _run([tools["cc"], "-shared", "-fPIC", "-O2", f"-DIMUSIC_PLUGIN_API={api}", "-o", str(tmp), str(src)],
         "compiling insn_count.c", timeout=300)
    tmp.rename(dest)


def _build_view(view: Path, rootfs: Path, cpu: CpuModel) -> None:
    """A root for ``-L``: the rootfs hard-linked (no copy, and no symlinks the guest could see and
    resolve to host paths), with this core's ``/proc/cpuinfo``."""
    stamp = (rootfs / ".imusic-ready").read_text()
    # As many CPUs as the host has: the guest's CPU detection also reads the host's /sys.
    text = cpu.cpuinfo(max(1, os.cpu_count() or 1))
    ready = view / ".imusic-ready"
    if ready.exists() and ready.read_text() == stamp and (view / "proc" / "cpuinfo").read_text() == text:
        return
    tmp = view.with_name(view.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    _run(["cp", "-al", str(rootfs), str(tmp)], "linking the rootfs view", timeout=600)
    (tmp / "proc").mkdir(exist_ok=True)
    (tmp / "proc" / "cpuinfo").write_text(text)
    shutil.rmtree(view, ignore_errors=True)
    tmp.rename(view)


@dataclass
class GuestRun:
    """One emulated run: the guest's stderr, and the instruction counts at each mark (in order)
    and at exit."""

    stderr: str
    marks: list[int]
    total: int | None


@dataclass
class Guest:
    """A prepared emulated aarch64 Python for one CPU model."""

    qemu: str
    view: Path
    site: Path
    plugin: Path
    cpu: CpuModel
    qemu_version: tuple[int, int]

    def run(self, script: Path, args: list[str], *, pythonpath: Sequence[Path] = (), timeout_s: float = 3600.0,
            count: bool = True) -> GuestRun:
        """Run ``python3.11 script args`` in the guest; returns the plugin's counts."""
        with tempfile.TemporaryDirectory(prefix="imusic-edge-") as td:
            counts = Path(td) / "counts.txt"
            env = {
                "PATH": "/usr/bin:/bin",
                "HOME": td,
                "LANG": "C.UTF-8",
                "PYTHONPATH": os.pathsep.join([str(self.site), *map(str, pythonpath)]),
                "PYTHONNOUSERSITE": "1",
                "PYTHONDONTWRITEBYTECODE": "1",
                "PYTHONHASHSEED": "0",
                "OMP_NUM_THREADS": "1",
            }
            cmd = [self.qemu, "-cpu", self.cpu.name, "-L", str(self.view)]
            if count:
                cmd += ["-plugin", f"{self.plugin},out={counts}"]
            cmd += [str(self.view / GUEST_PYTHON), str(script), *args]
            try:
                res = subprocess.run(cmd, check=False, env=env, text=True, capture_output=True, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                raise EdgeError(f"the emulated run took longer than {timeout_s:.0f} s") from None
            if res.returncode != 0:
                lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("INFO: ")]
                tail = " | ".join(lines[-4:])
                if res.returncode < 0:
                    tail = f"killed by signal {-res.returncode}" + (f": {tail}" if tail else "")
                raise EdgeError(f"the emulated aarch64 run failed (exit {res.returncode}): {tail}")
            marks: list[int] = []
            total = None
            if count:
                for line in counts.read_text().splitlines():
                    parts = line.split()
                    if parts and parts[0] == "mark":
                        marks.append(int(parts[2]))
                    elif parts and parts[0] == "total":
                        total = int(parts[1])
            return GuestRun(res.stderr, marks, total)


def prepare(cpu: str = "cortex-a72", cache: str | Path | None = None, log: Log = stderr_log) -> Guest:
    """The emulated Python for ``cpu``, building whatever the cache lacks (once; later calls only
    check stamps). Raises EdgeToolsMissing naming the packages to install."""
    if cpu not in CPUS:
        raise EdgeError(f"unknown --cpu {cpu!r}: choose one of {', '.join(CPUS)}")
    tools = _require({"qemu-aarch64": "qemu-user"})
    version = qemu_version(tools["qemu-aarch64"])
    api = _plugin_api(version)
    root = cache_dir(cache)
    rootfs = root / f"rootfs-{SUITE}-arm64"
    versions = _host_versions()
    key = hashlib.sha1(" ".join(f"{d}=={v}" for d, v in versions.items()).encode()).hexdigest()[:10]
    site = root / f"site-{key}"
    src = Path(__file__).with_name("insn_count.c")
    src_key = hashlib.sha1(src.read_bytes()).hexdigest()[:10]
    plugin = root / "plugin" / f"insn_count-qemu{version[0]}.{version[1]}-api{api}-{src_key}.so"
    with _locked(root / ".lock"):
        for stale in [*root.glob("*.tmp[0-9]*"), *root.glob("*/*.tmp[0-9]*")]:  # an interrupted build's
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        if not (rootfs / ".imusic-ready").exists():
            _build_rootfs(rootfs, log)
        if not (site / ".imusic-ready").exists():
            _build_site(site, versions, root / "wheels", log)
        if not plugin.exists():
            plugin.parent.mkdir(parents=True, exist_ok=True)
            _build_plugin(plugin, src, api, log)
        view = root / "views" / cpu
        view.parent.mkdir(parents=True, exist_ok=True)
        _build_view(view, rootfs, CPUS[cpu])
    return Guest(tools["qemu-aarch64"], view, site, plugin, CPUS[cpu], version)
