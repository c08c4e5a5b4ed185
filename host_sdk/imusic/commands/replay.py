"""``imusic replay``: run a recording through the session pipeline and summarise what comes out."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recording", help="a .imu recording")
    p.add_argument("--pace", choices=("fast", "recorded"), default="fast",
                   help="as fast as possible (default) or at the recorded pace")
    p.add_argument("--rate", type=float, default=60.0, help="aligned frame rate (default 60)")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from imusic.session import Session, recording_url

    with Session.open([recording_url(args.recording, pace=args.pace)], rate_hz=args.rate) as session:
        last_second = None
        for frame in session.frames():
            second = int(frame.t_host_s)
            if second != last_second:
                last_second = second
                accel = np.linalg.norm(frame.accel_mps2, axis=1)
                print(f"t={frame.t_host_s:10.3f}s  {int(frame.valid.sum())}/{frame.valid.size} IMUs valid  "
                      f"|a| {np.nanmin(accel) if frame.valid.any() else float('nan'):.2f}.."
                      f"{np.nanmax(accel) if frame.valid.any() else float('nan'):.2f} m/s^2", flush=True)
        st = session.stats
        print(f"{st.frames_aligned} frames over {st.duration_s:.1f} s, {st.frames_with_gaps} with gaps; "
              f"nodes {', '.join(session.node_report())}")
    return 0
