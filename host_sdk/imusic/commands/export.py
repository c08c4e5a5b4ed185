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
    from imusic.session import Session, recording_url

    suffix = {"npz": ".npz", "csv": ".csv", "hdf5": ".h5"}[args.to]
    out = Path(args.out) if args.out else Path(args.recording).with_suffix(suffix)
    if out.exists():
        raise UserError(f"{out} exists: choose another --out")
    with Session.open([recording_url(args.recording)], rate_hz=args.rate) as session:
        frames = list(session.frames())
        if not frames:
            raise UserError(f"{args.recording} holds no aligned frames (no node said HELLO and sent samples)")
        meta = {"recording": str(args.recording), "rate_hz": args.rate, "nodes": session.node_report()}
        write_frames(out, frames, fmt=args.to, meta=meta)
    print(f"wrote {len(frames)} frames x {frames[0].valid.size} IMUs to {out}")
    return 0
