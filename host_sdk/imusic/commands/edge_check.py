"""``imusic edge-check``: run a model on emulated aarch64 (Raspberry Pi 4/5, Jetson) and compare
with x86 (docs/edge.md)."""

from __future__ import annotations

import argparse

CPU_CHOICES = ("cortex-a72", "cortex-a76")  # imusic.edge.CPUS, without importing it here


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="'default' (the shipped model), a model directory (model.json), or one .tflite file")
    p.add_argument("--cpu", default="cortex-a72", choices=CPU_CHOICES,
                   help="emulated core: cortex-a72 = Raspberry Pi 4, cortex-a76 = Raspberry Pi 5 / "
                        "Jetson Orin class (default cortex-a72)")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="recordings (.imu files under DIR, or one .imu) or a windows .npy (N, W, C) to feed "
                        "the model (default: a simulated 8 s recording)")
    p.add_argument("--windows", type=int, default=64, help="feature windows to compare (default 64)")
    p.add_argument("--no-stream", action="store_true",
                   help="skip the streaming-runtime check (imusic.infer, features + model, on both machines)")
    p.add_argument("--stream-frames", type=int, default=None,
                   help="frames of the recording the streaming check replays (default 480)")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="where the emulated Python is kept (default $IMUSIC_EDGE_CACHE or ~/.cache/imusic/edge)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from imusic.edge.check import edge_check, format_report, main_json

    report = edge_check(args.model, cpu=args.cpu, data=args.data, cache=args.cache, n_windows=args.windows,
                        stream=not args.no_stream, stream_frames=args.stream_frames)
    if args.json:
        main_json(report)
    else:
        print(format_report(report))
    return 0 if report["ok"] else 1
