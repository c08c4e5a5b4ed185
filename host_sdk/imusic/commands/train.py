"""``imusic train teacher|student``: train the blendshape models on paired recordings.

The work is in ``imusic_model.train`` (PyTorch, the ``[train]`` extra), imported only here in
run(). Past one machine, start the same command under torchrun, e.g.
``torchrun --nproc_per_node=2 -m imusic.cli train student --data DIR --out OUT``.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from typing import Any

from imusic.errors import UserError

TRAIN_INSTALL = "pip install 'imusic[train]'"


def add_arguments(p: argparse.ArgumentParser) -> None:
    # numbers are parsed in run(): a bad value is one clear line, not a usage dump
    p.add_argument("kind", choices=("teacher", "student"), help="which model to train")
    p.add_argument("--data", required=True, help="dataset directory (imusic simulate output, or paired recordings)")
    p.add_argument("--out", required=True, help="output directory: last.pt, best.pt (and ridge.npz for a student)")
    p.add_argument("--epochs", default=None, help="epochs (teacher: of stage 2, the denoiser; default by kind)")
    p.add_argument("--stage1-epochs", default=None, help="teacher: epochs of stage 1, the encoder's regression")
    p.add_argument("--batch", default=None, help="global batch size (default 256)")
    p.add_argument("--lr", default=None, help="peak learning rate (default by kind; fine-tuning a tenth)")
    p.add_argument("--seed", default="0", help="seed of the run (default 0); the subject split does not follow it")
    p.add_argument("--threads", default="2", help="torch threads per process (default 2)")
    p.add_argument("--resume", action="store_true", help="continue OUT/last.pt (same settings)")
    p.add_argument("--max-windows", default=None, help="training windows used (a seeded subset; default by kind)")
    p.add_argument("--val-windows", default="4096", help="validation windows scored each epoch (default 4096)")
    p.add_argument("--teacher", default=None, help="student: distil from this teacher checkpoint (its best.pt)")
    p.add_argument("--distill-weight", default="0.25",
                   help="student: share of the loss on the teacher's outputs, the rest on the truth (default 0.25)")
    p.add_argument("--teacher-steps", default=None, help="student: DDIM steps of the teacher's outputs (default its own)")
    p.add_argument("--imu-dropout", default="0.3", help="probability a training window loses one IMU (default 0.3)")
    p.add_argument("--finetune", action="store_true", help="student: fine-tune --from MODEL on --data")
    p.add_argument("--from", dest="from_model", default=None, help="with --finetune: the student checkpoint to start from")
    p.add_argument("--cache-dir", default=None, help="feature cache (default DATA/.imusic-cache)")
    p.add_argument("--no-ridge", action="store_true",
                   help="student: do not fit the ridge baseline (then no ridge.npz, and export ships none)")
    p.add_argument("--stop-after", default=None,
                   help="stop once this many epochs (both teacher stages counted) are done; continue with --resume")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (epoch lines only)")


def _num(name: str, text: Any, kind: type, lo: float | None = None, hi: float | None = None) -> Any:
    if text is None:
        return None
    try:
        v = kind(text)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be {'an integer' if kind is int else 'a number'}, not {text!r}") from None
    if not math.isfinite(float(v)) or (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"at least {lo:g}" if hi is None else f"between {lo:g} and {hi:g}"
        raise UserError(f"{name} must be {rng}, not {text}")
    return v


def run(args: argparse.Namespace) -> int:
    # Spinning OpenMP workers on a busy machine made small training steps 10-50x slower here
    # (measured on a shared 2-core box); passive waiting costs nothing when the machine is idle.
    # Only takes effect before torch is first imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Likewise OpenBLAS (numpy/scipy: the ridge baseline's solves): two spinning threads made a
    # 1320-dimension Cholesky 1-2 s instead of 0.03 s on the busy machine. Torch has its own BLAS.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        import torch  # noqa: F401
        import tqdm  # noqa: F401
    except ImportError:
        raise UserError(f"training needs PyTorch and tqdm: {TRAIN_INSTALL}") from None
    mod: Any = importlib.import_module("imusic_model.train")
    cfg = mod.TrainConfig(
        kind=args.kind, data=args.data, out=args.out,
        epochs=_num("--epochs", args.epochs, int, 1), stage1_epochs=_num("--stage1-epochs", args.stage1_epochs, int, 0),
        batch=_num("--batch", args.batch, int, 1), lr=_num("--lr", args.lr, float, 1e-12),
        seed=_num("--seed", args.seed, int, 0), threads=_num("--threads", args.threads, int, 1),
        resume=bool(args.resume), max_windows=_num("--max-windows", args.max_windows, int, 1),
        val_windows=_num("--val-windows", args.val_windows, int, 1), teacher=args.teacher,
        distill_weight=_num("--distill-weight", args.distill_weight, float, 0, 1),
        teacher_steps=_num("--teacher-steps", args.teacher_steps, int, 1),
        imu_dropout=_num("--imu-dropout", args.imu_dropout, float, 0, 1), finetune=bool(args.finetune),
        from_model=args.from_model, cache_dir=args.cache_dir, progress=not args.no_progress,
        stop_after=_num("--stop-after", args.stop_after, int, 1), ridge=not args.no_ridge,
        command=" ".join(["imusic"] + sys.argv[1:]))
    return int(mod.main(cfg))
