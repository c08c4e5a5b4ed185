"""``imusic export``: a recording's aligned frames to npz, csv or hdf5, or a trained student
checkpoint (.pt) to a model directory (ONNX, float32 and int8 TFLite, model.json)."""

from __future__ import annotations

import argparse

CHECKPOINT_SUFFIXES = (".pt", ".pth")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="INPUT", help="a .imu recording, or a student checkpoint (.pt) from `imusic train`")
    p.add_argument("--to", default=None, choices=("npz", "csv", "hdf5"), help="recording: output format")
    p.add_argument("--out", default=None, help="recording: output file (default: the recording's name with the "
                   "format's suffix); checkpoint: the model directory to write")
    p.add_argument("--rate", type=float, default=None, help="recording: aligned frame rate (default 60)")
    model = p.add_argument_group("checkpoint export (needs the [export] extra; docs/runtime.md)")
    model.add_argument("--no-int8", action="store_true", help="do not write the int8 TFLite file")
    model.add_argument("--no-float32", action="store_true", help="do not write the float32 TFLite file")
    model.add_argument("--force", action="store_true", help="overwrite the model in a non-empty --out directory")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    if Path(args.input).suffix.lower() in CHECKPOINT_SUFFIXES:
        return _export_model(args)
    return _export_frames(args)


def _export_frames(args: argparse.Namespace) -> int:
    from pathlib import Path

    from imusic.errors import UserError
    from imusic.export import write_frames
    from imusic.replay import replay_blocks

    if args.to is None:
        raise UserError("--to is required for a recording: npz, csv or hdf5")
    if args.no_int8 or args.no_float32 or args.force:
        raise UserError("--no-int8, --no-float32 and --force are for a checkpoint (.pt), not a recording")
    rate = 60.0 if args.rate is None else args.rate
    suffix = {"npz": ".npz", "csv": ".csv", "hdf5": ".h5"}[args.to]
    out = Path(args.out) if args.out else Path(args.input).with_suffix(suffix)
    if out.exists():
        raise UserError(f"{out} exists: choose another --out")
    result = replay_blocks(args.input, rate)
    if not result.frames_aligned:
        raise UserError(f"{args.input} holds no aligned frames (no node said HELLO and sent samples)")
    meta = {"recording": str(args.input), "rate_hz": rate, "nodes": result.nodes}
    write_frames(out, result.blocks, fmt=args.to, meta=meta)
    print(f"wrote {result.frames_aligned} frames x {result.blocks[0].valid.shape[1]} IMUs to {out}")
    return 0


def _export_model(args: argparse.Namespace) -> int:
    import importlib
    import importlib.util
    import sys

    from imusic.errors import UserError

    if args.to is not None or args.rate is not None:
        raise UserError("--to and --rate are for a recording; a checkpoint exports to a model directory (--out DIR)")
    if not args.out:
        raise UserError("--out DIR is required: the model directory to write")
    if importlib.util.find_spec("torch") is None:
        raise UserError("model export needs torch and the converters: pip install 'imusic[export]' then "
                        "pip install --no-deps tf-keras==2.21.0 onnx2tf==1.29.24")
    # imusic_model is the torch side (model_export/): imported by name, only when a checkpoint is exported
    export_checkpoint = importlib.import_module("imusic_model.export").export_checkpoint

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    report = export_checkpoint(args.input, args.out, int8=not args.no_int8, float32=not args.no_float32,
                               force=args.force, log=say)
    for key, name in report.files.items():
        err = report.parity.get(key, {})
        extra = f", max |error| vs PyTorch {err['max_abs']:.2g}" if err else ""
        if "max_abs_lsb" in err:
            extra += f" ({err['max_abs_lsb']:.1f} output LSB)"
        print(f"{report.out_dir / name}: {report.sizes_bytes[name] / 1024:.0f} KiB{extra}")
    if report.ridge:
        print(f"{report.out_dir / 'ridge.npz'}: ridge baseline (from {report.ridge})")
    for note in report.notes:
        print(f"note: {note}")
    print(f"{report.out_dir / 'model.json'}: metadata; export took {report.seconds['total_s']:.0f} s")
    return 0
