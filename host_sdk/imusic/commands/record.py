"""``imusic record``: a session's raw bytes, both directions, with host times, into a .imu file."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("urls", nargs="*", metavar="URL", help="links: serial paths/URLs, udp://HOST:PORT, emu://?...")
    p.add_argument("--out", required=True, help="the recording to create (.imu)")
    p.add_argument("--emulate", type=int, default=0, metavar="N",
                   help="also start N emulated nodes (the real firmware under MicroPython), 11 IMUs each")
    p.add_argument("--rate", type=int, default=100, choices=(60, 100, 200), help="sample rate of emulated nodes")
    p.add_argument("--seconds", type=float, default=None, help="stop after this long (default: until Ctrl-C)")
    p.add_argument("--frame-rate", type=float, default=60.0, help="aligned frame rate for the live summary")


def run(args: argparse.Namespace) -> int:
    import signal
    import time
    from pathlib import Path

    from imusic.errors import UserError
    from imusic.session import Session

    if args.emulate < 0 or args.emulate > 8:
        raise UserError("--emulate must be 0 .. 8")
    urls = list(args.urls) + [f"emu://?imus=11&rate={args.rate}&node_id={i + 1}&seed={i + 1}"
                              for i in range(args.emulate)]
    if not urls:
        raise UserError("nothing to record: give link URLs or --emulate N")
    out = Path(args.out)
    if out.exists():
        raise UserError(f"{out} exists: a recording is never overwritten")
    # SIGTERM ends a recording as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    t_start = time.monotonic()
    frames = 0
    try:
        with Session.open(urls, rate_hz=args.frame_rate, record=out) as session:
            print(f"recording {len(urls)} link(s) to {out}; nodes {sorted(session.nodes)}", flush=True)
            next_report = t_start + 1.0
            for _frame in session.frames(timeout_s=1.0):
                frames += 1
                now = time.monotonic()
                if args.seconds is not None and now - t_start >= args.seconds:
                    break
                if now >= next_report:
                    next_report += 1.0
                    parts = [f"node {nid}: {c.stats().samples} IMU-samples, lost {c.stats().lost_frames}"
                             for nid, c in sorted(session.nodes.items())]
                    print(f"t={now - t_start:5.1f}s frames {frames}  " + "; ".join(parts), flush=True)
    except KeyboardInterrupt:
        pass
    print(f"recorded {out} ({out.stat().st_size if out.exists() else 0} bytes, {frames} aligned frames seen)")
    return 0
