"""Host decode speed of SAMPLES, in IMU-samples per second on one core (no thresholds: a table).

Stream: 11 IMUs (6-axis), 4 samples per frame, 200 Hz, about 10 MB. Three paths over the same bytes:
- stream:  ``StreamDecoder.feed`` in 64 KiB chunks (construct-derived header parse, numpy per frame)
- bulk:    ``decode_samples_bulk`` (one Python step per frame, numpy over all frames)
- construct: ``SamplesLayout.parse`` (the interpreted construct definition) of each payload, timed on
           the first 200 frames: why SAMPLES take the numpy path.
- ceiling: frame boundaries known in advance; only CRC-32 of each frame and ``numpy.frombuffer`` of
           its payload: what any decoder in Python must at least do per frame.

Run: ``.venv/bin/python bench/bench_decode.py [--mb 10] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import time
import zlib
from typing import Any

import numpy as np

from imusic.protocol import FRAME_OVERHEAD, HEADER_SIZE, MsgType, StreamDecoder, encode_frame, encode_samples_payload
from imusic.protocol.bulk import decode_samples_bulk
from imusic.protocol.messages import SamplesLayout

N_IMUS = 11
N_SAMPLES = 4
PERIOD_US = 5000


def make_stream(target_bytes: int, seed: int = 1) -> tuple[bytes, list[tuple[int, int]], int]:
    """Frames of the bench shape until ``target_bytes``; returns (bytes, [(start, end)], IMU-samples)."""
    rng = np.random.default_rng(seed)
    status = np.zeros(N_IMUS, dtype=np.uint8)
    parts, bounds = [], []
    at = seq = 0
    while at < target_bytes:
        values = rng.integers(-2000, 2000, size=(2, N_SAMPLES, N_IMUS, 3), dtype=np.int16)
        payload = encode_samples_payload(seq * N_SAMPLES * PERIOD_US, PERIOD_US, status, values[0], values[1])
        frame = encode_frame(MsgType.SAMPLES, payload, node_id=1, seq=seq % 65536)
        parts.append(frame)
        bounds.append((at, at + len(frame)))
        at += len(frame)
        seq += 1
    return b"".join(parts), bounds, seq * N_SAMPLES * N_IMUS


def run_stream(data: bytes) -> int:
    decoder = StreamDecoder()
    chunk = 65536
    for i in range(0, len(data), chunk):
        decoder.feed(data[i:i + chunk])
    decoder.flush()
    return decoder.nodes[1].samples


def run_bulk(data: bytes) -> int:
    return decode_samples_bulk(data).node_stats[1].samples


def run_ceiling(data: bytes, bounds: list[tuple[int, int]]) -> int:
    view = memoryview(data)
    crc32 = zlib.crc32
    frombuffer = np.frombuffer
    total = 0
    for start, end in bounds:
        if crc32(view[start + 2:end - 4]) != int.from_bytes(view[end - 4:end], "little"):
            raise AssertionError("bench stream is corrupt")
        total += frombuffer(view, dtype="<i2", count=(end - start - FRAME_OVERHEAD) // 2, offset=start + HEADER_SIZE).size
    return total


CONSTRUCT_FRAMES = 200


def run_construct(data: bytes, bounds: list[tuple[int, int]]) -> int:
    total = 0
    for start, end in bounds[:CONSTRUCT_FRAMES]:
        parsed: Any = SamplesLayout.parse(data[start + HEADER_SIZE:end - 4])
        total += parsed.n_samples * parsed.n_imus
    return total


def best_time(fn, repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description="host decode speed of SAMPLES")
    parser.add_argument("--mb", type=float, default=10.0, help="stream size in MB (default 10)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per path; the best is reported")
    args = parser.parse_args()
    data, bounds, imu_samples = make_stream(int(args.mb * 1e6))
    print(f"stream: {len(data) / 1e6:.1f} MB, {len(bounds)} SAMPLES frames, {N_IMUS} IMUs x {N_SAMPLES} samples, "
          f"{imu_samples} IMU-samples")
    rows = []
    for name, fn in (("stream", lambda: run_stream(data)), ("bulk", lambda: run_bulk(data)),
                     ("ceiling", lambda: run_ceiling(data, bounds))):
        seconds, _ = best_time(fn, args.repeat)
        rows.append((name, seconds, 1.0))
    # the interpreted construct path only on a few frames, scaled to the whole stream
    share = min(CONSTRUCT_FRAMES, len(bounds)) / len(bounds)
    seconds, _ = best_time(lambda: run_construct(data, bounds), 1)
    rows.append(("construct*", seconds, share))
    print(f"{'path':<10} {'seconds':>8} {'frames/s':>10} {'M IMU-samples/s':>16} {'MB/s':>8}")
    for name, seconds, part in rows:
        full = seconds / part  # seconds for the whole stream
        print(f"{name:<10} {full:8.4f} {len(bounds) / full:10.0f} {imu_samples / full / 1e6:16.3f} "
              f"{len(data) / full / 1e6:8.1f}")
    print(f"* timed on the first {CONSTRUCT_FRAMES} frames and scaled to the whole stream")


if __name__ == "__main__":
    main()
