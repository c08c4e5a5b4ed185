"""``imusic stats``: what a recording holds, per node, after decoding and alignment."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recording", help="a .imu recording")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--rate", type=float, default=60.0, help="aligned frame rate (default 60)")


def run(args: argparse.Namespace) -> int:
    import json

    from imusic.replay import replay_blocks

    result = replay_blocks(args.recording, args.rate)
    report = {"duration_s": round(result.duration_s, 3), "nodes": result.nodes,
              "frames_aligned": result.frames_aligned, "frames_with_gaps": result.frames_with_gaps}
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{args.recording}: {report['duration_s']:.1f} s, {result.frames_aligned} aligned frames at "
          f"{args.rate:g} Hz, {result.frames_with_gaps} with gaps")
    for node_id, n in report["nodes"].items():
        offset = "n/a" if n["clock_offset_ms"] is None else f"{n['clock_offset_ms']:.3f} ms"
        drift = "n/a" if n["clock_drift_ppm"] is None else f"{n['clock_drift_ppm']:+.1f} ppm"
        print(f"  node {node_id}: {n['imus']} IMUs, {n['samples']} IMU-samples at {n['rate_hz']:.1f} Hz, "
              f"lost frames {n['lost_frames']}, CRC errors {n['crc_errors']}, reboots {n['reboots']}, "
              f"clock offset {offset}, drift {drift} ({n['clock_source'] or 'no fit'})")
    for url in result.unknown_links:
        print(f"  {url}: no HELLO, not replayed")
    return 0
