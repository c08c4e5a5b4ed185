"""Session figures (no thresholds: a table).

1. Replay: decode and align a recording of one node with 11 IMUs at 200 Hz (4 samples per frame)
   through ``Session`` (message by message, as a live session), and in bulk (``imusic.replay``:
   whole links decoded at once, samples mapped and aligned in segments), and export the frames
   to npz. The recording is built from encoded frames: a HELLO, then SAMPLES with consecutive
   sequence numbers and times.
2. Live: frame arrival to aligned frame out, for 11 IMUs at 200 Hz spread over three emulated nodes
   (the real firmware under MicroPython, on ptys): from the host receive time of the bytes that made
   frames due to the moment those frames are handed out.

    .venv/bin/python bench/bench_session.py [--seconds 3600] [--live-seconds 10]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from imusic.export import write_npz
from imusic.protocol import Hello, ImuInfo, MsgType, encode, encode_frame, encode_samples_payload
from imusic.recording import RecordingWriter
from imusic.replay import replay_blocks
from imusic.session import Session, recording_url

N_IMUS, RATE_HZ, N_SAMPLES = 11, 200, 4
PERIOD_US = 1_000_000 // RATE_HZ
FRAMES_PER_S = RATE_HZ // N_SAMPLES
G = 9.80665


def build_recording(path: Path, seconds: float) -> int:
    """An hour-style recording; returns the IMU-samples in it."""
    imus = tuple(ImuInfo(1, 0, i // 6, 0x70, i % 6, 0x6B, 0, f"site{i}", 8, 512, 0,
                         8 * G / 32768, math.radians(512) / 32768, 0.0) for i in range(N_IMUS))
    hello = Hello(1, 0, 0, 0, 1, 0, 1, "bench", bytes(8), 7, RATE_HZ, N_SAMPLES, 0, imus)
    rng = np.random.default_rng(3)
    status = np.zeros(N_IMUS, dtype=np.uint8)
    pool = [rng.integers(-3000, 3000, size=(2, N_SAMPLES, N_IMUS, 3), dtype=np.int16) for _ in range(64)]
    n_frames = int(seconds * FRAMES_PER_S)
    with RecordingWriter(path) as writer:
        link = writer.add_link("serial:///dev/ttyACM0")
        writer.data(link, 100.0, encode(hello))
        for k in range(n_frames):
            accel, gyro = pool[k % 64]
            payload = encode_samples_payload(k * N_SAMPLES * PERIOD_US, PERIOD_US, status, accel, gyro)
            # received 1 ms after its last sample
            t_host_s = 100.0 + ((k + 1) * N_SAMPLES * PERIOD_US) * 1e-6 + 0.001
            writer.data(link, t_host_s, encode_frame(MsgType.SAMPLES, payload, node_id=1, seq=(k + 1) % 65536))
    return n_frames * N_SAMPLES * N_IMUS


def stats_replay(path: Path) -> tuple[float, object]:
    """What ``imusic stats`` does: decode, sync and align the recording in bulk."""
    t0 = time.perf_counter()
    result = replay_blocks(path)
    return time.perf_counter() - t0, result


def session_replay(path: Path) -> tuple[float, int]:
    """What an app iterating ``Session.frames()`` over a recording pays (one Frame object each)."""
    t0 = time.perf_counter()
    with Session.open([recording_url(path)]) as session:
        n = sum(1 for _ in session.frames())
    return time.perf_counter() - t0, n


def live(seconds: float) -> np.ndarray:
    urls = ["emu://?imus=4&rate=200&node_id=1", "emu://?imus=4&rate=200&node_id=2&seed=2",
            "emu://?imus=3&rate=200&node_id=3&seed=3"]
    with Session.open(urls) as session:
        t_end = time.monotonic() + seconds
        for _ in session.frames(timeout_s=2.0):
            if time.monotonic() >= t_end:
                break
        return np.array(session.release_latencies_s())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3600.0)
    ap.add_argument("--live-seconds", type=float, default=10.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rec = Path(tmp) / "hour.imu"
        n_samples = build_recording(rec, args.seconds)
        stats_s, result = stats_replay(rec)
        t0 = time.perf_counter()
        write_npz(Path(tmp) / "hour.npz", result.blocks)  # what `imusic export --to npz` writes
        export_s = time.perf_counter() - t0
        del result
        session_s, n_frames = session_replay(rec)
    print(f"recording: {args.seconds:g} s of one node, 11 IMUs at 200 Hz, {n_samples:,} IMU-samples; "
          f"{n_frames:,} aligned frames at 60 Hz")
    print()
    print("| step | seconds | M IMU-samples/s |")
    print("|---|---|---|")
    print(f"| decode + sync + align in bulk (`imusic stats`) | {stats_s:.2f} | {n_samples / stats_s / 1e6:.2f} |")
    print(f"| npz export of those frames (`imusic export`, after the above) | {export_s:.2f} | |")
    print(f"| `Session.frames()` over the recording (a Frame object each) | {session_s:.2f} | {n_samples / session_s / 1e6:.2f} |")
    lat = live(args.live_seconds) * 1e3
    print()
    print("| live: 11 IMUs at 200 Hz over 3 emulated nodes | releases | median (ms) | p99 (ms) |")
    print("|---|---|---|---|")
    print(f"| arrival of the bytes that make frames due -> frames out | {len(lat)} | "
          f"{np.median(lat):.3f} | {np.percentile(lat, 99):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
