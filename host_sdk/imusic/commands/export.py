"""``imusic export``: a recording's aligned frames to npz, csv or hdf5."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recording", help="a .imu recording")
    p.add_argument("--to", required=True, choices=("npz", "csv", "hdf5"), help="output format")
    p.add_argument("--out", default=None, help="output file (default: the recording's name with the format's suffix)")
    p.add_argument("--rate", type=float, default=60.0, help="aligned frame rate (default 60)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from imusic.errors import UserError
    from imusic.export import write_frames
    from imusic.replay import replay_blocks

    suffix = {"npz": ".npz", "csv": ".csv", "hdf5": ".h5"}[args.to]
    out = Path(args.out) if args.out else Path(args.recording).with_suffix(suffix)
    if out.exists():
        raise UserError(f"{out} exists: choose another --out")
    result = replay_blocks(args.recording, args.rate)
    if not result.frames_aligned:
        raise UserError(f"{args.recording} holds no aligned frames (no node said HELLO and sent samples)")
    meta = {"recording": str(args.recording), "rate_hz": args.rate, "nodes": result.nodes}
    write_frames(out, result.blocks, fmt=args.to, meta=meta)
    print(f"wrote {result.frames_aligned} frames x {result.blocks[0].valid.shape[1]} IMUs to {out}")
    return 0
