"""How the int8 / float32 instruction ratio of the student changes with its size, per core.

The shipped int8 student costs about 0.7x its float32 twin on a Cortex-A72 (Raspberry Pi 4) and
about 0.45x on a Cortex-A76 (Raspberry Pi 5). This bench asks whether that is the size of the model
(fixed per-invoke work) or the kernels: it builds students of growing width (random weights; the
cost of a TFLite model does not depend on its weights' values), converts each with the exporter's
own ONNX -> onnx2tf path to float32, full int8 with float input/output (what ships) and full int8
with int8 input/output, and counts guest instructions per ``invoke()`` under emulation exactly as
``imusic edge-check`` does (median over the windows, first invoke excluded, bracket cost removed).

For the shipped size it also counts LiteRT's built-in kernels (no XNNPACK delegate), the other
way the same files can run.

Read the "per MAC" rows: the slope between the smallest and the largest model is the kernels' cost
per multiply-accumulate, free of the fixed per-invoke work. Their ratio is where the int8 / float32
ratio goes as a model grows.

Needs the [export] extra (torch, onnx2tf) and the edge tools (``make edge-check`` prepares them).
Run: ``.venv/bin/python bench/bench_edge_scaling.py [--cpu cortex-a72 --cpu cortex-a76] [--windows 12]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from imusic.errors import UserError

WINDOW_FRAMES, CHANNELS = 48, 110  # the imusic layout's model input (11 face sites)
SIZES: tuple[dict[str, Any], ...] = (
    {"width": 32, "head_hidden": 32, "dilations": [1]},
    {},  # the shipped architecture (Student's defaults): SIZES[SHIPPED]
    {"width": 128},
    {"width": 256, "head_hidden": 256},
)
SHIPPED = 1
PRECISIONS = ("float32", "int8", "int8_io")


def convert(arch: dict[str, Any], work: Path, calib: np.ndarray) -> tuple[Any, dict[str, Path]]:
    import torch

    from imusic_model import export as ex
    from imusic_model.student import Student

    torch.manual_seed(0)
    model = Student(WINDOW_FRAMES, CHANNELS, **arch).eval()

    class Spec:  # what export_onnx reads of a ModelSpec
        input_shape = (1, WINDOW_FRAMES, CHANNELS)

    ex.export_onnx(model, Spec, work / "student.onnx")  # type: ignore[arg-type]
    return model, ex.run_onnx2tf(work / "student.onnx", work, calib)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", action="append", default=None, help="core to emulate (repeat; default both)")
    ap.add_argument("--windows", type=int, default=12, help="invokes per file (default 12)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = ap.parse_args(argv)
    cpus = args.cpu or ["cortex-a72", "cortex-a76"]

    from imusic.edge.check import check_precision
    from imusic.edge.emulator import prepare

    rng = np.random.default_rng(0)
    x = np.clip(rng.standard_normal((args.windows, WINDOW_FRAMES, CHANNELS)), -4, 4).astype(np.float32)
    calib = np.clip(rng.standard_normal((200, WINDOW_FRAMES, CHANNELS)), -4, 4).astype(np.float32)
    guests = {cpu: prepare(cpu) for cpu in cpus}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="imusic-scaling-") as tmp:
        for n, arch in enumerate(SIZES):
            work = Path(tmp) / f"m{n}"
            work.mkdir()
            model, files = convert(arch, work, calib)
            row: dict[str, Any] = {"arch": model.arch_dict(), "macs": model.macs(),
                                   "params": sum(p.numel() for p in model.parameters()),
                                   "kib": {p: files[p].stat().st_size // 1024 for p in PRECISIONS}}
            for cpu, guest in guests.items():
                for prec in PRECISIONS:
                    r = check_precision(guest, prec, files[prec], x, work, lambda _m: None, empty_brackets=8)
                    if not r["ok"] or r["xnnpack"]["fallback_ops"]:
                        raise UserError(f"{prec} width {model.width} on {cpu}: outputs differ from x86 or ops fell "
                                        f"back ({r['xnnpack']['fallback_ops']})")
                    row[f"{cpu}/{prec}"] = float(r["instructions"]["per_frame"])
                if n == SHIPPED:  # LiteRT's built-in kernels instead of XNNPACK too
                    for prec in ("float32", "int8"):
                        r = check_precision(guest, prec, files[prec], x, work, lambda _m: None, empty_brackets=8,
                                            kernels="builtin")
                        if not r["ok"]:
                            raise UserError(f"{prec} on built-in kernels on {cpu}: outputs differ from x86")
                        row[f"{cpu}/{prec}/builtin"] = float(r["instructions"]["per_frame"])
            rows.append(row)
            print(f"  width {model.width}: done", file=sys.stderr, flush=True)

    print("int8 / float32 guest instructions per invoke, by student size (random weights; "
          "one XNNPACK partition, no fallback op in every file)")
    head = f"{'width':>5} {'MACs':>9} {'params':>8} {'f32 KiB':>7} {'i8 KiB':>6}"
    for cpu in cpus:
        head += f" | {cpu + ' f32':>16} {'int8':>9} {'int8 io':>9} {'ratio':>5} {'io':>5}"
    print(head)
    for row in rows:
        line = (f"{row['arch']['width']:>5} {row['macs']:>9,} {row['params']:>8,} {row['kib']['float32']:>7} "
                f"{row['kib']['int8']:>6}")
        for cpu in cpus:
            f, i, io = (row[f"{cpu}/{p}"] for p in PRECISIONS)
            line += f" | {f:>16,.0f} {i:>9,.0f} {io:>9,.0f} {i / f:>5.2f} {io / f:>5.2f}"
        print(line)
    small, large = rows[0], rows[-1]
    d_macs = large["macs"] - small["macs"]
    line = f"{'per MAC (slope, smallest to largest)':>39}"
    for cpu in cpus:
        f, i, io = ((large[f"{cpu}/{p}"] - small[f"{cpu}/{p}"]) / d_macs for p in PRECISIONS)
        line += f" | {f:>16.3f} {i:>9.3f} {io:>9.3f} {i / f:>5.2f} {io / f:>5.2f}"
    print(line)
    shipped = rows[SHIPPED]
    print("\nthe shipped size on LiteRT's built-in kernels (no XNNPACK delegate), instructions per invoke:")
    for cpu in cpus:
        f, i = shipped[f"{cpu}/float32/builtin"], shipped[f"{cpu}/int8/builtin"]
        print(f"  {cpu}: float32 {f:,.0f}, int8 {i:,.0f} (XNNPACK: {shipped[f'{cpu}/float32']:,.0f} and "
              f"{shipped[f'{cpu}/int8']:,.0f})")
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as exc:
        print(f"bench_edge_scaling: {exc}", file=sys.stderr)
        sys.exit(1)
