"""Recording and export speed (no thresholds: a table).

- write: ``RecordingWriter.data`` for an 11-IMU 200 Hz stream (4 samples per SAMPLES frame, 50
  frames/s), one DATA chunk per frame (the worst case: every serial read returns one frame), with
  the 100 ms timer flush running; reported as MB/s and as the share of one second that one second
  of stream costs the recording thread.
- read: iterating the DATA chunks of an hour-sized recording of that stream (11 IMUs x 200 Hz x
  3600 s = 7.92 M IMU-samples, about 100 MB) built from encoded SAMPLES frames; also the same
  pass followed by the bulk SAMPLES decoder (``decode_samples_bulk``) on the joined bytes.
- export: ``write_npz`` / ``read_npz`` of an hour of 60 Hz aligned frames of 11 IMUs (216,000
  frames, float64), uncompressed and compressed.

Run: ``.venv/bin/python bench/bench_recording.py [--seconds 3600] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from imusic.export import FrameArrays, read_npz, write_npz
from imusic.protocol import MsgType, encode_frame, encode_samples_payload
from imusic.protocol.bulk import decode_samples_bulk
from imusic.recording import ChunkKind, RecordingReader, RecordingWriter

N_IMUS = 11
RATE_HZ = 200
N_SAMPLES = 4
PERIOD_US = 1_000_000 // RATE_HZ
FRAMES_PER_S = RATE_HZ // N_SAMPLES
FRAME_RATE_HZ = 60
VALUE_POOL = 64  # distinct sample blocks, reused: encoding 180,000 unique ones would dominate the bench


def stream_frames(seconds: float) -> list[bytes]:
    """SAMPLES frames of one node for ``seconds`` of stream, with consecutive seq and times."""
    rng = np.random.default_rng(5)
    status = np.zeros(N_IMUS, dtype=np.uint8)
    pool = [rng.integers(-3000, 3000, size=(2, N_SAMPLES, N_IMUS, 3), dtype=np.int16) for _ in range(VALUE_POOL)]
    frames = []
    for k in range(int(seconds * FRAMES_PER_S)):
        accel, gyro = pool[k % VALUE_POOL]
        payload = encode_samples_payload(k * N_SAMPLES * PERIOD_US, PERIOD_US, status, accel, gyro)
        frames.append(encode_frame(MsgType.SAMPLES, payload, node_id=1, seq=k % 65536))
    return frames


def write_recording(path: Path, frames: list[bytes]) -> float:
    """Seconds spent recording ``frames`` (one chunk each, 20 ms of stream apart), close included."""
    t0 = time.perf_counter()
    with RecordingWriter(path) as w:
        link = w.add_link("serial:///dev/ttyACM0")
        data = w.data
        for k, frame in enumerate(frames):
            data(link, 1000.0 + k / FRAMES_PER_S, frame)
    return time.perf_counter() - t0


def read_chunks(path: Path) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    n = size = 0
    for chunk in RecordingReader(path).chunks([ChunkKind.DATA]):
        n += 1
        size += len(chunk.payload)
    return time.perf_counter() - t0, n, size


def read_and_decode(path: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    stream = b"".join(c.payload for c in RecordingReader(path).chunks([ChunkKind.DATA]))
    samples = decode_samples_bulk(stream).node_stats[1].samples
    return time.perf_counter() - t0, samples


def hour_of_frames(seconds: float) -> FrameArrays:
    rng = np.random.default_rng(9)
    n_frames = int(seconds * FRAME_RATE_HZ)
    valid = rng.random((n_frames, N_IMUS)) > 0.01
    shape = (n_frames, N_IMUS, 3)
    accel, gyro, mag = (rng.standard_normal(shape) for _ in range(3))
    for a in (accel, gyro, mag):
        a[~valid] = np.nan
    return FrameArrays(t_host_s=1000.0 + np.arange(n_frames) / FRAME_RATE_HZ, accel_mps2=accel, gyro_rads=gyro,
                       mag_uT=mag, valid=valid, sites=tuple(f"site_{i}" for i in range(N_IMUS)),
                       node_ids=(1,) * 4 + (2,) * 4 + (3,) * 3, meta={"rate_hz": FRAME_RATE_HZ})


def main() -> None:
    parser = argparse.ArgumentParser(description="recording and export speed")
    parser.add_argument("--seconds", type=float, default=3600.0, help="stream length in seconds (default an hour)")
    parser.add_argument("--keep", type=Path, help="write the files here and keep them (default: a temp dir)")
    args = parser.parse_args()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="imusic-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        frames = stream_frames(args.seconds)
        build_s = time.perf_counter() - t0
        stream_bytes = sum(len(f) for f in frames)
        imu_samples = len(frames) * N_SAMPLES * N_IMUS
        print(f"stream: {args.seconds:g} s of {N_IMUS} IMUs at {RATE_HZ} Hz, {len(frames)} SAMPLES frames, "
              f"{stream_bytes / 1e6:.1f} MB, {imu_samples / 1e6:.2f} M IMU-samples (encoded in {build_s:.1f} s)")
        rec = workdir / "hour.imu"
        write_s = write_recording(rec, frames)
        file_mb = rec.stat().st_size / 1e6
        read_s, n_chunks, read_bytes = read_chunks(rec)
        assert n_chunks == len(frames) and read_bytes == stream_bytes
        decode_s, decoded = read_and_decode(rec)
        assert decoded == imu_samples
        arrays = hour_of_frames(args.seconds)
        npz = workdir / "hour.npz"
        t0 = time.perf_counter()
        write_npz(npz, arrays, overwrite=True)
        npz_write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        read_npz(npz)
        npz_read_s = time.perf_counter() - t0
        npz_mb = npz.stat().st_size / 1e6
        npz_z = workdir / "hour_z.npz"
        t0 = time.perf_counter()
        write_npz(npz_z, arrays, overwrite=True, compress=True)
        npz_z_write_s = time.perf_counter() - t0
        npz_z_mb = npz_z.stat().st_size / 1e6

        print(f"recording file: {file_mb:.1f} MB ({(file_mb * 1e6 - stream_bytes) / len(frames):.0f} bytes per chunk "
              f"of framing); aligned frames: {len(arrays)} x {N_IMUS} IMUs at {FRAME_RATE_HZ} Hz\n")
        print(f"{'step':<34} {'seconds':>8} {'MB/s':>8} {'s per stream s':>15} {'M IMU-samples/s':>16}")
        rows = [
            ("write (1 chunk per frame)", write_s, stream_bytes, imu_samples),
            ("read: iterate DATA chunks", read_s, stream_bytes, imu_samples),
            ("read + decode_samples_bulk", decode_s, stream_bytes, imu_samples),
        ]
        for name, seconds, size, samples in rows:
            print(f"{name:<34} {seconds:8.3f} {size / seconds / 1e6:8.1f} {seconds / args.seconds:15.5f} "
                  f"{samples / seconds / 1e6:16.2f}")
        for name, seconds, size in (("export npz", npz_write_s, npz_mb), ("read npz", npz_read_s, npz_mb),
                                    ("export npz (compressed)", npz_z_write_s, npz_z_mb)):
            print(f"{name:<34} {seconds:8.3f} {size / seconds:8.1f} {seconds / args.seconds:15.5f} {'':>16}"
                  f"  ({size:.0f} MB file)")
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
