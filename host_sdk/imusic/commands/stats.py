"""``imusic stats``: what a recording holds, per node, after decoding and alignment."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recording", help="a .imu recording")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--rate", type=float, default=60.0, help="aligned frame rate (default 60)")


def run(args: argparse.Namespace) -> int:
    import json

    from imusic.session import Session, recording_url

    with Session.open([recording_url(args.recording)], rate_hz=args.rate) as session:
        for _ in session.frames():
            pass
        st = session.stats
        report = {"duration_s": round(st.duration_s, 3), "nodes": session.node_report(),
                  "frames_aligned": st.frames_aligned, "frames_with_gaps": st.frames_with_gaps}
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{args.recording}: {report['duration_s']:.1f} s, {st.frames_aligned} aligned frames at {args.rate:g} Hz, "
          f"{st.frames_with_gaps} with gaps")
    for node_id, n in report["nodes"].items():
        offset = "n/a" if n["clock_offset_ms"] is None else f"{n['clock_offset_ms']:.3f} ms"
        drift = "n/a" if n["clock_drift_ppm"] is None else f"{n['clock_drift_ppm']:+.1f} ppm"
        print(f"  node {node_id}: {n['imus']} IMUs, {n['samples']} IMU-samples at {n['rate_hz']:.1f} Hz, "
              f"lost frames {n['lost_frames']}, CRC errors {n['crc_errors']}, reboots {n['reboots']}, "
              f"clock offset {offset}, drift {drift} ({n['clock_source'] or 'no fit'})")
    return 0
