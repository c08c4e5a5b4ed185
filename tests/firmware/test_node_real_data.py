"""Real IMU motion through the whole chain: a public recording from a real MEMS IMU (VQF test
data: gyroscope, accelerometer and magnetometer at 285.7 Hz, hand motion up to 5.7 rad/s and
1.7 g) replayed through the emulated chips and the real firmware under MicroPython. The host
decodes exactly the counts the chips served, and in SI units the recording itself, to within the
chips' resolution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import decode_all, run_emulated_to_file
from imusic.emulation.launcher import build_layout
from imusic.protocol import Hello, Samples
from testenv import REAL_IMU

RECORDING = REAL_IMU / "vqf-imu-data.npz"
SECONDS = 8
START_S = 7.5  # the recording rests for its first ~9.5 s: take 2 s of rest, then motion


@pytest.fixture(scope="module")
def recording() -> dict[str, np.ndarray]:
    if not RECORDING.exists():
        pytest.skip(f"real IMU recording not found at {RECORDING}")
    data = np.load(RECORDING)
    return {k: np.asarray(data[k], dtype=np.float64) for k in ("gyr", "acc", "mag", "sampling_rate")}


def test_real_recording_replayed_through_firmware_decodes_to_the_recording(
        recording: dict[str, np.ndarray], emu_modules: Any, tmp_path: Path) -> None:
    rate = float(recording["sampling_rate"])
    period_us = round(1e6 / rate)
    n_rows = int(SECONDS * rate) + 2
    first = int(START_S * rate)
    acc, gyr, mag = (recording[k][first:first + n_rows] for k in ("acc", "gyr", "mag"))
    # Source tables hold integer micro-units: um/s^2, urad/s, nT. Two IMUs replay the recording
    # from different starting points, so a slot mix-up would show.
    offsets = (0, 500)
    rows = []
    for r in range(n_rows - max(offsets)):
        row: list[int] = []
        for off in offsets:
            k = r + off
            row += [round(v * 1e6) for v in acc[k]] + [round(v * 1e6) for v in gyr[k]] + [round(v * 1e3) for v in mag[k]]
        rows.append(row)
    table = tmp_path / "real.tbl"
    emu_modules.source.write_table(str(table), period_us, len(offsets), rows)

    data, _ = run_emulated_to_file(tmp_path, imus=build_layout(2, mags=(0, 1)), rate_hz=200, clock="virtual",
                                   source={"kind": "table", "path": str(table), "loop": False},
                                   max_seconds=SECONDS - 3)
    messages, decoder = decode_all(data)
    assert decoder.stats.crc_errors == 0 and decoder.nodes[1].lost_frames == 0
    hello = next(m for m in messages if isinstance(m, Hello))
    samples = [m for m in messages if isinstance(m, Samples)]
    t_us = np.concatenate([s.t_us() for s in samples])
    counts = {name: np.concatenate([getattr(s, name) for s in samples]).astype(np.int64)
              for name in ("accel", "gyro", "mag")}
    assert len(t_us) >= 200 * (SECONDS - 4)

    source = emu_modules.source.TableSource(str(table), False)
    for imu, off in enumerate(offsets):
        info = hello.imus[imu]
        # 1. Exactly the counts the emulated chips were fed.
        for k in range(0, len(t_us), 7):
            six = emu_modules.chips.expected_imu_counts(source, imu, int(t_us[k]), info.accel_range_g,
                                                        info.gyro_range_dps)
            three = emu_modules.chips.expected_mag_counts(source, imu, int(t_us[k]), info.mag_range_gauss)
            assert list(counts["accel"][k, imu]) + list(counts["gyro"][k, imu]) == six
            assert list(counts["mag"][k, imu]) == three
        # 2. In SI units, the recording itself (linearly interpolated at each sample time).
        t_rec_s = (np.arange(n_rows - off) * period_us) / 1e6
        t_s = t_us / 1e6
        for name, scale, series in (("accel", info.accel_scale, acc), ("gyro", info.gyro_scale, gyr),
                                    ("mag", info.mag_scale, mag)):
            want = np.stack([np.interp(t_s, t_rec_s, series[off:, axis]) for axis in range(3)], axis=1)
            got = counts[name][:, imu] * scale
            # One count of quantisation, plus the chips' fixed-point units (1e-6 SI, 1 nT).
            assert np.max(np.abs(got - want)) <= scale * 1.01 + 1e-3, name
        # The motion is real: the gyroscope moved well beyond its noise.
        assert np.ptp(counts["gyro"][:, imu] * info.gyro_scale) > 0.5
