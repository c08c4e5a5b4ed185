"""Print aligned frames from a session: the first thing to try with imusic.

    python examples/print_frames.py                       # two emulated nodes, no hardware
    python examples/print_frames.py /dev/ttyACM0 udp://:50100
    python examples/print_frames.py file://rec.imu         # replay a recording

Each line: the frame's host time, how many IMUs are valid, and per site the acceleration
magnitude in m/s^2 and the angular rate magnitude in rad/s.
"""

from __future__ import annotations

import sys

import numpy as np

import imusic


def main(urls: list[str], max_frames: int = 120) -> int:
    urls = urls or ["emu://?imus=3&rate=100&node_id=1", "emu://?imus=2&rate=100&node_id=2&seed=2"]
    with imusic.Session.open(urls, rate_hz=60.0) as session:
        for n, frame in enumerate(session.frames(timeout_s=2.0)):
            if n % 30 == 0:  # twice a second
                accel_mps2 = np.linalg.norm(frame.accel_mps2, axis=1)
                gyro_rads = np.linalg.norm(frame.gyro_rads, axis=1)
                sites = " ".join(f"{site}:{a:.2f}/{w:.2f}" for site, a, w in zip(frame.sites, accel_mps2, gyro_rads))
                print(f"t={frame.t_host_s:.3f}s valid {int(frame.valid.sum())}/{frame.valid.size}  {sites}")
            if n + 1 >= max_frames:
                break
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
