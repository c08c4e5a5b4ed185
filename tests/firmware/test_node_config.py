"""A bad node.json never stops a node: it says what is wrong (LOG) and streams with defaults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from conftest import decode_all, run_emulated_to_file
from imusic.protocol import Hello, Log, LogLevel, Samples, StatusBit

SEED = 5


def _run(tmp_path: Path, config: Any, n_imus: int = 4) -> tuple[list[Any], Any]:
    data, stderr = run_emulated_to_file(tmp_path, imus=n_imus, clock="virtual", seed=SEED, max_seconds=1.5,
                                        node_config=config)
    assert "Traceback" not in stderr
    return decode_all(data)


def _check_streams_correct_values(messages: list[Any], emu: Any, n_imus: int) -> Hello:
    hello = next(m for m in messages if isinstance(m, Hello))
    samples = [m for m in messages if isinstance(m, Samples)]
    assert hello.n_imus == n_imus and len(samples) > 10
    source = emu.source.SimpleMotion(SEED, 16)
    # The bus scan finds the IMUs in bus, mux channel order: the emulator's order.
    for frame in samples[::7]:
        assert not np.any(frame.status & StatusBit.STALE)
        for imu, info in enumerate(hello.imus):
            want = emu.chips.expected_imu_counts(source, imu, frame.t_first_us, info.accel_range_g,
                                                 info.gyro_range_dps)
            assert list(frame.accel[0, imu]) + list(frame.gyro[0, imu]) == want
    t = np.concatenate([s.t_us() for s in samples])
    assert np.all(np.diff(t) == 1_000_000 // hello.rate_hz)
    return hello


def test_garbage_json_logs_an_error_and_streams_with_defaults(tmp_path: Path, emu_modules: Any) -> None:
    messages, decoder = _run(tmp_path, "{ this is not json")
    logs = [m for m in messages if isinstance(m, Log)]
    assert any(m.level == LogLevel.ERROR and "not valid JSON" in m.text for m in logs), logs
    hello = _check_streams_correct_values(messages, emu_modules, 4)
    assert hello.node_id == 1 and hello.rate_hz == 100 and hello.samples_per_frame == 2
    assert [i.site for i in hello.imus] == ["imu0", "imu1", "imu2", "imu3"]
    assert decoder.nodes[1].lost_frames == 0


def test_unknown_fields_and_bad_values_are_logged_and_defaulted(tmp_path: Path, emu_modules: Any) -> None:
    config = {"node_id": 9, "rate_hz": 7, "colour": "blue", "accel_range_g": 3, "samples_per_frame": 0,
              "imus": [{"bus": 5}, "nonsense"], "link": {"type": "pigeon"}, "autostart": "yes"}
    messages, _ = _run(tmp_path, json.dumps(config))
    text = "\n".join(m.text for m in messages if isinstance(m, Log) and m.level == LogLevel.WARNING)
    for word in ("rate_hz", "colour", "accel_range_g", "samples_per_frame", "imus[0]", "imus[1]", "pigeon",
                 "autostart"):
        assert word in text, f"no LOG about {word}: {text}"
    hello = _check_streams_correct_values(messages, emu_modules, 4)
    assert hello.node_id == 9  # the good field is kept
    assert hello.rate_hz == 100 and hello.imus[0].accel_range_g == 8


def test_a_config_that_is_not_an_object_or_missing_imus_falls_back_to_a_scan(tmp_path: Path,
                                                                                emu_modules: Any) -> None:
    messages, _ = _run(tmp_path / "a", "[1, 2, 3]", n_imus=3)
    assert any(isinstance(m, Log) and "JSON object" in m.text for m in messages)
    _check_streams_correct_values(messages, emu_modules, 3)
