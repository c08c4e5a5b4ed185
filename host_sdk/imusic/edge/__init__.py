"""Edge proof: a model on emulated aarch64 (Raspberry Pi 4/5, Jetson) against x86 (docs/edge.md).

- ``emulator``: the cached emulated aarch64 Python (Debian bookworm under QEMU user mode, the
  aarch64 LiteRT and runtime wheels, a fake ``/proc/cpuinfo`` per core, the instruction-count
  plugin ``insn_count.c``).
- ``guest``: the code that runs a model, executed unchanged on both machines.
- ``check``: ``edge_check()`` behind ``imusic edge-check``: windows, both runs, comparisons,
  instruction counts, XNNPACK partitions and fallback ops.
"""

from __future__ import annotations

from imusic.edge.check import (
    FLOAT32_FLOOR_ULPS,
    FLOAT32_SPREAD_FACTOR,
    INT8_TOLERANCE_LSB,
    compare_outputs,
    edge_check,
    format_report,
    resolve_model,
)
from imusic.edge.emulator import CPUS, EdgeError, EdgeToolsMissing, cache_dir, prepare

__all__ = ["CPUS", "FLOAT32_FLOOR_ULPS", "FLOAT32_SPREAD_FACTOR", "INT8_TOLERANCE_LSB", "EdgeError",
           "EdgeToolsMissing", "cache_dir", "compare_outputs", "edge_check", "format_report", "prepare",
           "resolve_model"]
