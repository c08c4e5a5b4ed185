"""The real firmware under MicroPython, emulated IMUs, virtual clock: what the host decodes is
exactly what the emulated chips were fed, at the scheduled tick times, with nothing lost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from conftest import decode_all, run_emulated_to_file
from imusic.emulation.launcher import Fault, build_layout
from imusic.protocol import INVALID_SAMPLE, Hello, Log, Samples, Status, StatusBit

SEED = 7
WRAP_US = 1 << 30


def _stream(messages: list[Any]) -> tuple[Hello, list[Samples]]:
    hellos = [m for m in messages if isinstance(m, Hello)]
    samples = [m for m in messages if isinstance(m, Samples)]
    assert hellos, "no HELLO"
    assert samples, "no SAMPLES"
    return hellos[0], samples


def _instants(samples: list[Samples]) -> np.ndarray:
    return np.concatenate([s.t_us() for s in samples])


def _check_timing_and_sequence(samples: list[Samples], decoder: Any, node_id: int, period_us: int,
                               max_seconds: float) -> np.ndarray:
    t = _instants(samples)
    # Monotonic, evenly spaced, nothing missing: every tick from the first to the last.
    assert np.all(np.diff(t) == period_us)
    assert t[0] == period_us  # the first tick is one period after the stream starts
    spf = samples[0].n_samples
    assert t[-1] >= max_seconds * 1e6 - (spf + 1) * period_us  # ran to the end
    seqs = [s.seq for s in samples]
    stats = decoder.nodes[node_id]
    assert stats.lost_frames == 0
    assert decoder.stats.crc_errors == 0 and decoder.stats.garbage_bytes == 0
    all_seq = np.array(seqs)
    assert np.all(np.diff(all_seq) >= 1)
    return t


def _expected(emu: Any, source: Any, hello: Hello, imu: int, t_us: int) -> tuple[list[int], list[int]]:
    info = hello.imus[imu]
    six = emu.chips.expected_imu_counts(source, imu, t_us, info.accel_range_g, info.gyro_range_dps)
    mag = emu.chips.expected_mag_counts(source, imu, t_us, info.mag_range_gauss) if info.mag_chip else [0, 0, 0]
    return six, mag


def _check_values(emu: Any, hello: Hello, samples: list[Samples], skip: Any = lambda imu, t: False) -> int:
    """Every decoded count equals what the emulated chip served at the sample's device time."""
    source = emu.source.SimpleMotion(SEED, 16)
    checked = 0
    for frame in samples:
        for k, t in enumerate(frame.t_us()):
            for imu in range(frame.n_imus):
                if skip(imu, int(t)):
                    continue
                six, mag = _expected(emu, source, hello, imu, int(t))
                got = list(frame.accel[k, imu]) + list(frame.gyro[k, imu])
                assert got == six, f"imu {imu} at t={t}: {got} != {six}"
                if hello.imus[imu].mag_chip:
                    assert list(frame.mag[k, imu]) == mag
                checked += 1
    return checked


def _check_si(emu: Any, hello: Hello, frame: Samples) -> None:
    """counts x HELLO scale = the physical value fed to the chip, within half a count."""
    from array import array

    source = emu.source.SimpleMotion(SEED, 16)
    values = array("i", [0] * 9)
    for imu, info in enumerate(hello.imus):
        source.read(imu, int(frame.t_first_us), values)
        accel_mps2 = frame.accel[0, imu] * info.accel_scale
        gyro_rads = frame.gyro[0, imu] * info.gyro_scale
        assert np.allclose(accel_mps2, np.array(values[0:3]) * 1e-6, atol=info.accel_scale * 0.5001, rtol=0)
        assert np.allclose(gyro_rads, np.array(values[3:6]) * 1e-6, atol=info.gyro_scale * 0.5001, rtol=1e-6)
        if info.mag_chip:
            mag_ut = frame.mag[0, imu] * info.mag_scale
            assert np.allclose(mag_ut, np.array(values[6:9]) * 1e-3, atol=info.mag_scale * 0.5001, rtol=1e-6)


def test_eleven_imus_two_buses_stream_every_sample_exactly(tmp_path: Path, emu_modules: Any) -> None:
    chips = ["qmi8658", "icm42688"] * 5 + ["qmi8658"]
    layout = build_layout(11, chips=chips, mags=(0, 7))
    seconds = 3.0
    data, _ = run_emulated_to_file(tmp_path, imus=layout, rate_hz=200, node_id=4, clock="virtual", seed=SEED,
                                   max_seconds=seconds)
    messages, decoder = decode_all(data)
    hello, samples = _stream(messages)

    assert hello.node_id == 4 and hello.rate_hz == 200 and hello.n_imus == 11
    assert [i.chip for i in hello.imus] == [1 if c == "qmi8658" else 2 for c in chips]
    assert [i.bus for i in hello.imus] == [0] * 6 + [1] * 5
    assert {i.mux_addr for i in hello.imus} == {0x70}
    assert [i.mag_chip for i in hello.imus] == [1 if i in (0, 7) else 0 for i in range(11)]
    assert all(s.n_imus == 11 and s.period_us == 5000 and s.n_samples == 4 for s in samples)
    for s in samples:
        assert list(s.has_mag) == [i in (0, 7) for i in range(11)]
        assert not np.any(s.status & (StatusBit.STALE | StatusBit.I2C_ERROR | StatusBit.REINIT))

    t = _check_timing_and_sequence(samples, decoder, 4, 5000, seconds)
    assert len(t) * 11 == decoder.nodes[4].samples
    assert _check_values(emu_modules, hello, samples) == len(t) * 11
    _check_si(emu_modules, hello, samples[len(samples) // 2])
    assert not [m for m in messages if isinstance(m, Log) and m.level >= 30]


def test_clock_wrap_one_second_in_gives_no_time_jump(tmp_path: Path, emu_modules: Any) -> None:
    start_us = WRAP_US - 1_000_000  # the board's tick counter wraps one second into the run
    seconds = 2.5
    data, _ = run_emulated_to_file(tmp_path, imus=3, rate_hz=100, clock="virtual", start_us=start_us, seed=SEED,
                                   max_seconds=seconds)
    messages, decoder = decode_all(data)
    hello, samples = _stream(messages)
    t = _check_timing_and_sequence(samples, decoder, 1, 10_000, seconds)
    # The ticks wrapped at device time 1 s: samples on both sides, spaced exactly, right values.
    assert t[0] < 1_000_000 < t[-1]
    _check_values(emu_modules, hello, samples)
    status = [m for m in messages if isinstance(m, Status)]
    assert [s.uptime_us for s in status] == sorted(s.uptime_us for s in status)
    assert status[-1].uptime_us >= 2_000_000


def test_failing_imu_is_marked_then_recovers_while_others_stream(tmp_path: Path, emu_modules: Any) -> None:
    bad = 2
    t1_us, t2_us = 1_000_000, 1_500_000
    rate_hz = 100
    retry_us = (rate_hz // 10) * 10_000  # the sampler retries a failed chip every rate/10 ticks
    data, _ = run_emulated_to_file(tmp_path, imus=4, rate_hz=rate_hz, clock="virtual", seed=SEED,
                                   faults=[Fault(bad, t1_us, t2_us)], max_seconds=2.5)
    messages, decoder = decode_all(data)
    hello, samples = _stream(messages)
    _check_timing_and_sequence(samples, decoder, 1, 10_000, 2.5)

    source = emu_modules.source.SimpleMotion(SEED, 16)
    marked_t = []
    reinit_frames = []
    for frame in samples:
        st = int(frame.status[bad])
        marked = [bool(np.all(frame.accel[k, bad] == INVALID_SAMPLE) and np.all(frame.gyro[k, bad] == INVALID_SAMPLE))
                  for k in range(frame.n_samples)]
        marked_t += [int(t) for t, m in zip(frame.t_us(), marked) if m]
        if any(marked):
            assert st & StatusBit.STALE
        else:
            assert not st & StatusBit.STALE
        if st & StatusBit.REINIT:
            reinit_frames.append(frame)
        for k, t in enumerate(frame.t_us()):
            if t1_us <= t < t2_us:
                assert marked[k], f"sample at {t} inside the fault window was not marked"
            elif not marked[k]:
                six, _ = _expected(emu_modules, source, hello, bad, int(t))
                assert list(frame.accel[k, bad]) + list(frame.gyro[k, bad]) == six
    # Marked from the failure until at most one retry interval after the chip answers again.
    assert marked_t[0] == t1_us
    assert t2_us - 10_000 <= marked_t[-1] < t2_us + retry_us
    assert len(marked_t) == (marked_t[-1] - marked_t[0]) // 10_000 + 1
    # The bus error shows in the frame where it happened, REINIT once when the chip came back.
    first_bad = next(f for f in samples if f.status[bad] & StatusBit.STALE)
    assert first_bad.status[bad] & StatusBit.I2C_ERROR
    assert len(reinit_frames) == 1 and reinit_frames[0].t_first_us >= t2_us - 20_000
    # The other IMUs never noticed.
    _check_values(emu_modules, hello, samples, skip=lambda imu, t: imu == bad)
    for frame in samples:
        assert not np.any(np.delete(frame.status, bad) & (StatusBit.STALE | StatusBit.I2C_ERROR))
    last_status = [m for m in messages if isinstance(m, Status)][-1]
    assert last_status.i2c_errors[bad] >= 1
    assert [e for i, e in enumerate(last_status.i2c_errors) if i != bad] == [0, 0, 0]
    assert any(isinstance(m, Log) and "again" in m.text for m in messages)
