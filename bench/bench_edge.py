"""A model on the Raspberry Pi 4, Raspberry Pi 5 and Jetson Orin, estimated from emulated aarch64
runs: guest instructions per frame (counted by QEMU, not timed), model size, XNNPACK partitions
and fallback ops, and a per-frame time under a stated assumption.

Each core runs ``imusic.edge.edge_check`` (docs/edge.md): the model's own cost per frame (one
``invoke()``, median over 64 windows of a simulated recording, first invoke excluded) and, with
the streaming runtime, the whole per-frame cost of ``BlendshapeStream.update`` (features + model,
Python included; median over the frames after the window filled).

Estimated time = instructions / (clock x IPC). Clocks are the boards' stock maximum; the IPC
(instructions per cycle) is an ASSUMPTION, not a measurement: 1.0 for the Cortex-A72 (2-wide
in-order-ish issue for this mix of NEON kernels and interpreter code) and 1.5 for the A76/A78
class. Real boards may differ by tens of percent either way; the instruction counts are the
measured part. Jetson Orin's Cortex-A78AE has no QEMU model in Debian 12 (QEMU 7.2): it is
counted as a Cortex-A76 (same Armv8.2 features: dot product, fp16) at its own clock.

Run: ``.venv/bin/python bench/bench_edge.py [--model default|DIR] [--no-stream] [--cache DIR]``
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from imusic.edge import edge_check
from imusic.errors import UserError


@dataclass(frozen=True)
class Board:
    name: str
    core: str  # what the chip has
    qemu_cpu: str  # what is emulated
    clock_ghz: float
    ipc_assumed: float


BOARDS = (
    Board("Raspberry Pi 4", "Cortex-A72", "cortex-a72", 1.8, 1.0),
    Board("Raspberry Pi 5", "Cortex-A76", "cortex-a76", 2.4, 1.5),
    Board("Jetson Orin Nano", "Cortex-A78AE", "cortex-a76", 1.5, 1.5),
)


def est_ms(instructions: float | None, board: Board) -> str:
    if not instructions:
        return "-"
    return f"{instructions / (board.clock_ghz * 1e9 * board.ipc_assumed) * 1e3:.3f}"


def _ops(d: dict[str, int]) -> str:
    return ", ".join(f"{k} x{v}" if v > 1 else k for k, v in d.items()) or "none"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default", help="'default', a model directory or a .tflite (default: default)")
    ap.add_argument("--no-stream", action="store_true", help="model only: skip the streaming runtime")
    ap.add_argument("--cache", default=None, help="emulated Python cache (default ~/.cache/imusic/edge)")
    args = ap.parse_args(argv)
    reports: dict[str, dict[str, Any]] = {}
    try:
        for cpu in dict.fromkeys(b.qemu_cpu for b in BOARDS):
            reports[cpu] = edge_check(args.model, cpu=cpu, cache=args.cache, stream=not args.no_stream)
    except UserError as exc:
        print(f"bench_edge: {exc}", file=sys.stderr)
        return 2
    first = next(iter(reports.values()))
    precisions = list(first["precisions"])
    d = first["data"]
    print(f"Model {first['model']}, LiteRT {first['runtime']['litert']} (aarch64 wheel), 1 thread, XNNPACK; "
          f"{first['windows']} windows of a {d.get('seconds', '?')} s simulated '{d.get('scenario', '?')}' recording "
          f"(SIMULATED data); {first['runtime']['guest']}.\n")
    print("Estimated time = instructions / (clock x IPC); the IPC is assumed (A72 1.0, A76/A78 1.5), the "
          "instructions are counted.\n")
    print("| board (core, clock) | emulated as | precision | model file | model instr/frame | est. ms (model) "
          "| runtime instr/frame (features + model) | est. ms (runtime) | XNNPACK partitions | ops on built-in kernels "
          "| matches x86 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for board in BOARDS:
        r = reports[board.qemu_cpu]
        streams = {s["precision"]: s for s in r["stream"]}
        for p in precisions:
            res = r["precisions"][p]
            model_insn = res["instructions"]["per_frame"]
            run_insn = streams[p]["instructions_per_frame"] if p in streams else None
            print(f"| {board.name} ({board.core}, {board.clock_ghz:g} GHz) | {board.qemu_cpu} | {p} "
                  f"| {res['size_bytes'] / 1024:.0f} KiB | {model_insn:,.0f} | {est_ms(model_insn, board)} "
                  f"| {f'{run_insn:,.0f}' if run_insn else '-'} | {est_ms(run_insn, board)} "
                  f"| {res['xnnpack']['partitions']} | {_ops(res['xnnpack']['fallback_ops'])} "
                  f"| {'yes' if res['ok'] and (p not in streams or streams[p]['ok']) else 'NO'} |")
    if "int8" in precisions and "float32" in precisions:
        print()
        for cpu, r in reports.items():
            ratio = (r["precisions"]["int8"]["instructions"]["per_frame"]
                     / r["precisions"]["float32"]["instructions"]["per_frame"])
            print(f"{cpu}: int8 / float32 model instructions = {ratio:.2f} (issue 6 target <= 0.5; "
                  f"int8 <= 2,000,000 per frame on cortex-a72)")
    if not first["stream"]:
        print(f"\nstreaming runtime not measured: {first['stream_note']}")
    return 0 if all(r["ok"] for r in reports.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
