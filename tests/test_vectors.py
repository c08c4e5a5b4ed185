"""Golden byte streams made by the firmware under MicroPython (tests/vectors/make_vectors.py).

The host decodes them to what the emulation was set up with (not to what the decoder said last
time), the bulk path agrees with the streaming path, and the firmware still produces the same
messages: a change of the wire format without a new protocol version and new vectors fails here.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import decode_all
from imusic.protocol import INVALID_SAMPLE, ChipId, Hello, MagChip, Samples, Status, StatusBit
from imusic.protocol.bulk import decode_samples_bulk
from testenv import VECTORS

MANIFEST: dict[str, dict[str, Any]] = json.loads((VECTORS / "manifest.json").read_text())
CHIP_IDS = {"qmi8658": ChipId.QMI8658, "icm42688": ChipId.ICM42688P}


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_vector_decodes_to_what_the_emulation_was_fed(name: str, emu_modules: Any) -> None:
    spec = MANIFEST[name]
    data = (VECTORS / f"{name}.bin").read_bytes()
    messages, decoder = decode_all(data)
    assert decoder.stats.crc_errors == 0 and decoder.stats.garbage_bytes == 0
    assert list(decoder.nodes) == [spec["node_id"]]
    node = decoder.nodes[spec["node_id"]]
    assert node.lost_frames == 0 and node.duplicates == 0 and node.seq_resets == 0

    hello = next(m for m in messages if isinstance(m, Hello))
    assert hello.protocol_version == 1 and hello.board == "emulated" and hello.rate_hz == spec["rate_hz"]
    assert [i.chip for i in hello.imus] == [CHIP_IDS[c] for c in spec["chips"]]
    assert [i.mag_chip for i in hello.imus] == [MagChip.QMC5883P if k in spec["mags"] else MagChip.NONE
                                              for k in range(len(spec["chips"]))]

    samples = [m for m in messages if isinstance(m, Samples)]
    t_us = np.concatenate([s.t_us() for s in samples])
    period_us = 1_000_000 // spec["rate_hz"]  # whole microseconds: 60 Hz ticks every 16,666 us
    assert np.all(np.diff(t_us) == period_us)  # no jump, even across the 2^30 tick wrap
    n_expected = spec["rate_hz"] * spec["seconds"]
    assert n_expected - 2 * hello.samples_per_frame <= len(t_us) <= n_expected

    source = emu_modules.source.SimpleMotion(spec["seed"], 16)
    faults = spec["faults"]
    for frame in samples:
        for k, t in enumerate(frame.t_us()):
            for imu, info in enumerate(hello.imus):
                failing = any(i == imu and t0 <= t < t1 for i, t0, t1 in faults)
                got = np.concatenate([frame.accel[k, imu], frame.gyro[k, imu]])
                if failing:
                    assert np.all(got == INVALID_SAMPLE) and frame.status[imu] & StatusBit.STALE
                    continue
                want = emu_modules.chips.expected_imu_counts(source, imu, int(t), info.accel_range_g,
                                                             info.gyro_range_dps)
                assert list(got) == want, (name, imu, int(t))
                if info.mag_chip:
                    assert list(frame.mag[k, imu]) == emu_modules.chips.expected_mag_counts(
                        source, imu, int(t), info.mag_range_gauss)


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_bulk_path_agrees_with_the_stream_decoder(name: str) -> None:
    data = (VECTORS / f"{name}.bin").read_bytes()
    messages, _ = decode_all(data)
    samples = [m for m in messages if isinstance(m, Samples)]
    batch = decode_samples_bulk(data)
    node = batch.nodes[MANIFEST[name]["node_id"]]
    assert np.array_equal(node.t_us, np.concatenate([s.t_us() for s in samples]))
    assert np.array_equal(node.accel, np.concatenate([s.accel for s in samples]))
    assert np.array_equal(node.gyro, np.concatenate([s.gyro for s in samples]))


def _comparable(data: bytes) -> list[Any]:
    """The messages of a stream, with STATUS.free_heap zeroed: the heap left free moves with any
    change to the firmware's code, while everything else on the wire depends only on the format
    and the emulation."""
    messages, _ = decode_all(data)
    return [dataclasses.replace(m, free_heap=0) if isinstance(m, Status) else m for m in messages]


def test_firmware_still_produces_the_vectors(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(VECTORS / "make_vectors.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for name in MANIFEST:
        fresh = (tmp_path / f"{name}.bin").read_bytes()
        golden = (VECTORS / f"{name}.bin").read_bytes()
        assert len(fresh) == len(golden), f"{name}: frame sizes changed; a format change needs a version bump"
        assert _comparable(fresh) == _comparable(golden), f"{name}: the firmware's messages changed"
