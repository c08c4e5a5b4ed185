"""Register-level emulators of the QMI8658, ICM-42688-P and QMC5883P.

MicroPython-compatible (never flashed: the unix port runs the real drivers against them) and
importable by CPython. Register facts: /work/shared/reference/imu-chips.md.

Each chip is created as `Chip(source, imu_index, clock, addr=...)`. Whenever the firmware reads a
span that touches the data or status registers, the chip takes one snapshot of
`source.read(imu_index, clock.now_us(), ...)` and converts it to counts at the range currently in
its control registers; a burst read is therefore one consistent sample. The conversion is the
module-level pure functions below (`accel_counts`, `gyro_counts`, `mag_counts`; integer rounding
half away from zero, clamped to +-32767 so -32768 never appears), and `expected_imu_counts` /
`expected_mag_counts` recompute in CPython exactly what a chip served.

Modelled: chip id, soft reset (completes at once), control registers that read back what was
written, auto-increment (QMI8658 only with CTRL1.ADDR_AI), data in the chip's endianness,
temperature (a fixed `temp_cdeg`), data-ready bits that clear when the data are read, the ICM's
-32768 for a sensor that is off, the ICM register bank select, the QMC overflow bit. Not modelled:
FIFOs, sensor start-up delays, self-test, low-pass filtering, noise.
"""
from array import array

from emu_bus import EmuDevice

STANDARD_GRAVITY_UMPS2 = 9806650  # 9.80665 m/s^2
COUNT_MAX = 32767

# Single-byte constants (MicroPython const() is not needed: this file never runs on a board).
QMI8658_CHIP_ID = 0x05
ICM42688_CHIP_ID = 0x47
QMC5883P_CHIP_ID = 0x80
QMC5883P_COUNTS_PER_GAUSS = {30: 1000, 12: 2500, 8: 3750, 2: 15000}
_QMC_RANGE_BY_CODE = (30, 12, 8, 2)
_QMC_ODR_MHZ = (10000, 50000, 100000, 200000)


# ---- conversion: physical value (integer micro-units) -> counts, identical in CPython and MicroPython

def _round_div(num, den):
    """num / den rounded half away from zero (den > 0), integers only."""
    if num >= 0:
        return (2 * num + den) // (2 * den)
    return -((den - 2 * num) // (2 * den))


def _clamp(count):
    if count > COUNT_MAX:
        return COUNT_MAX
    if count < -COUNT_MAX:
        return -COUNT_MAX
    return count


def accel_counts(accel_umps2, range_g):
    """Counts for a specific force in um/s^2 at +-range_g full scale (32768 counts = range_g)."""
    return _clamp(_round_div(accel_umps2 * 32768, range_g * STANDARD_GRAVITY_UMPS2))


def gyro_counts_mdps(rate_urads, range_mdps):
    """Counts for an angular rate in urad/s at a full scale in milli-deg/s.

    counts = rate * 32768 / (range * pi / 180); pi is taken as 355/113 (relative error 8.5e-8, far
    below a count), which keeps every product a small int for rates up to thousands of rad/s.
    """
    return _clamp(_round_div(rate_urads * (32768 * 180 * 113), range_mdps * (355 * 1000)))


def gyro_counts(rate_urads, range_dps):
    return gyro_counts_mdps(rate_urads, range_dps * 1000)


def mag_counts(field_nt, range_gauss):
    """Counts for a field in nT at +-range_gauss (QMC5883P sensitivities; 1 gauss = 1e5 nT)."""
    return _clamp(_round_div(field_nt * QMC5883P_COUNTS_PER_GAUSS[range_gauss], 100000))


def expected_imu_counts(source, imu_index, t_us, accel_range_g, gyro_range_dps):
    """[ax, ay, az, gx, gy, gz] counts a 6-axis chip serves at `t_us` (both chips scale alike)."""
    values = array("i", [0] * 9)
    source.read(imu_index, t_us, values)
    return ([accel_counts(values[i], accel_range_g) for i in range(3)]
            + [gyro_counts(values[i], gyro_range_dps) for i in range(3, 6)])


def expected_mag_counts(source, imu_index, t_us, range_gauss):
    """[mx, my, mz] counts the QMC5883P serves at `t_us`."""
    values = array("i", [0] * 9)
    source.read(imu_index, t_us, values)
    return [mag_counts(values[i], range_gauss) for i in range(6, 9)]


def _put_le(regs, reg, count):
    regs[reg] = count & 0xFF
    regs[reg + 1] = (count >> 8) & 0xFF


def _put_be(regs, reg, count):
    regs[reg] = (count >> 8) & 0xFF
    regs[reg + 1] = count & 0xFF


class RegisterFileEmu(EmuDevice):
    """A chip with 256 byte registers; subclasses add behaviour through the underscored hooks.

    `read_mem` refreshes the live registers (`_refresh`) once per transaction when the span touches
    [_live_lo, _live_hi], then copies bytes out, auto-incrementing unless `_auto_increment()` is
    false, in which case every byte comes from the first register. `write_mem` hands each byte to
    `_write_reg`, which decides what is writable and what a write triggers (reset, bank select).
    """

    _live_lo = 0x100  # no live registers unless a subclass says so
    _live_hi = -1

    def __init__(self, addr, clock=None, fail_windows=()):
        super().__init__(addr, clock, fail_windows)
        self.regs = bytearray(256)
        self.reset()

    def reset(self):
        for i in range(256):
            self.regs[i] = 0

    def _auto_increment(self):
        return True

    def _refresh(self):
        pass

    def _after_read(self, first, last):
        pass

    def _write_reg(self, reg, value):
        self.regs[reg] = value

    def read_mem(self, reg, buf):
        n = len(buf)
        if n == 0:
            return
        regs = self.regs
        if self._auto_increment():
            last = reg + n - 1
            if reg <= self._live_hi and last >= self._live_lo:
                self._refresh()
            for i in range(n):
                buf[i] = regs[(reg + i) & 0xFF]
        else:
            last = reg
            if self._live_lo <= reg <= self._live_hi:
                self._refresh()
            value = regs[reg & 0xFF]
            for i in range(n):
                buf[i] = value
        self._after_read(reg, last)

    def write_mem(self, reg, buf):
        step = 1 if self._auto_increment() else 0
        for i in range(len(buf)):
            self._write_reg((reg + i * step) & 0xFF, buf[i])


class StubChip(RegisterFileEmu):
    """A plain register file with fixed contents, e.g. a chip whose id must be rejected."""

    def __init__(self, addr, registers, clock=None, fail_windows=()):
        self._initial = dict(registers)
        super().__init__(addr, clock, fail_windows)

    def reset(self):
        super().reset()
        for reg, value in self._initial.items():
            self.regs[reg] = value


class _SensorEmu(RegisterFileEmu):
    """What the emulated sensors share: the source, a value snapshot, a data-ready sample counter."""

    def __init__(self, source, imu_index, clock, addr, fail_windows=(), temp_cdeg=3200):
        self.source = source
        self.imu_index = imu_index
        self.temp_cdeg = temp_cdeg
        self._values = array("i", [0] * 9)
        self._sample_index = 0  # sample counter at the last refresh
        self._read_index = -1  # sample counter when the data were last read
        super().__init__(addr, clock, fail_windows)

    def _odr_mhz(self):
        return 0

    def _snapshot(self):
        """Source values at the clock's now; advance the data-ready sample counter."""
        now_us = self.clock.now_us()
        self.source.read(self.imu_index, now_us, self._values)
        odr_mhz = self._odr_mhz()
        self._sample_index = now_us * odr_mhz // 1000000000 if odr_mhz else 0
        return self._values


class Qmi8658Emu(_SensorEmu):
    """QMI8658: id 0x05 at 0x00, little-endian data at 0x35..0x40, temperature int16/256 at 0x33."""

    ADDRESSES = (0x6B, 0x6A)
    _live_lo = 0x2D
    _live_hi = 0x40
    # Actual ODR with both sensors on, per CTRL2/CTRL3 [3:0] code (mHz); 0 = code not modelled.
    _ODR_MHZ = (7174400, 3587200, 1793600, 896800, 448400, 224200, 112100, 56050, 28025,
                0, 0, 0, 128000, 21000, 11000, 3000)

    def __init__(self, source, imu_index, clock, addr=0x6B, fail_windows=(), temp_cdeg=3200):
        super().__init__(source, imu_index, clock, addr, fail_windows, temp_cdeg)

    def reset(self):
        super().reset()
        self.regs[0x00] = QMI8658_CHIP_ID
        self.regs[0x01] = 0x7C  # revision id
        self.regs[0x4D] = 0x80  # RESET_RESULT: reset done
        self._read_index = -1

    def _auto_increment(self):
        return bool(self.regs[0x02] & 0x40)

    def accel_range_g(self):
        return 2 << ((self.regs[0x03] >> 4) & 0x3)

    def gyro_range_dps(self):
        return 16 << ((self.regs[0x04] >> 4) & 0x7)

    def _odr_mhz(self):
        return self._ODR_MHZ[self.regs[0x03] & 0x0F]

    def _write_reg(self, reg, value):
        if reg == 0x60:
            if value == 0xB0:
                self.reset()
        elif 0x02 <= reg <= 0x14:  # CTRL1..CTRL9, calibration, FIFO control: read/write
            self.regs[reg] = value
        # everything else is read-only

    def _refresh(self):
        regs = self.regs
        values = self._snapshot()
        enabled = regs[0x08]
        accel_on = enabled & 0x01 and not regs[0x02] & 0x01
        gyro_on = enabled & 0x02 and not regs[0x02] & 0x01
        status = 0
        if self._sample_index != self._read_index:
            status = (0x01 if accel_on else 0) | (0x02 if gyro_on else 0)
        regs[0x2E] = status
        ts = self._sample_index & 0xFFFFFF
        regs[0x30] = ts & 0xFF
        regs[0x31] = (ts >> 8) & 0xFF
        regs[0x32] = ts >> 16
        _put_le(regs, 0x33, self.temp_cdeg * 256 // 100)
        accel_range = self.accel_range_g()
        gyro_range_mdps = self.gyro_range_dps() * 1000
        for axis in range(3):
            _put_le(regs, 0x35 + 2 * axis, accel_counts(values[axis], accel_range) if accel_on else 0)
            _put_le(regs, 0x3B + 2 * axis,
                    gyro_counts_mdps(values[3 + axis], gyro_range_mdps) if gyro_on else 0)

    def _after_read(self, first, last):
        if first <= 0x40 and last >= 0x35:
            self._read_index = self._sample_index


class Icm42688Emu(_SensorEmu):
    """ICM-42688-P: id 0x47 at 0x75, big-endian data (temp 0x1D, accel 0x1F, gyro 0x25), bank 0 only."""

    ADDRESSES = (0x68, 0x69)
    _live_lo = 0x1D
    _live_hi = 0x2D
    # ODR per CONFIG0 [3:0] code, mHz (0 = reserved).
    _ODR_MHZ = (0, 32000000, 16000000, 8000000, 4000000, 2000000, 1000000, 200000, 100000,
                50000, 25000, 12500, 0, 0, 0, 500000)

    def __init__(self, source, imu_index, clock, addr=0x68, fail_windows=(), temp_cdeg=3200):
        self.bank = 0
        super().__init__(source, imu_index, clock, addr, fail_windows, temp_cdeg)

    def reset(self):
        super().reset()
        regs = self.regs
        self.bank = 0
        regs[0x75] = ICM42688_CHIP_ID
        regs[0x4F] = 0x06  # GYRO_CONFIG0: 2000 dps, 1 kHz
        regs[0x50] = 0x06  # ACCEL_CONFIG0: 16 g, 1 kHz
        regs[0x52] = 0x11  # GYRO_ACCEL_CONFIG0: default filter bandwidths
        regs[0x2D] = 0x10  # INT_STATUS: RESET_DONE
        for reg in range(0x1D, 0x2B, 2):  # sensors off: every data register reads -32768
            regs[reg] = 0x80
        self._read_index = -1

    def accel_range_g(self):
        return 16 >> ((self.regs[0x50] >> 5) & 0x3)

    def gyro_range_mdps(self):
        return 2000000 >> (self.regs[0x4F] >> 5)

    def _odr_mhz(self):
        return self._ODR_MHZ[self.regs[0x4F] & 0x0F]

    def read_mem(self, reg, buf):
        if self.bank != 0 and reg != 0x76:
            for i in range(len(buf)):  # banks 1..4 are not modelled: they read as zeros
                buf[i] = 0
            return
        super().read_mem(reg, buf)

    def _write_reg(self, reg, value):
        if reg == 0x76:
            self.bank = value & 0x07
            self.regs[0x76] = self.bank
        elif self.bank != 0:
            return
        elif reg == 0x11:
            if value & 0x01:
                self.reset()
            else:
                self.regs[0x11] = value
        elif reg < 0x1D or 0x2D < reg < 0x75 or reg > 0x76:  # data, status and WHO_AM_I are read-only
            self.regs[reg] = value

    def _refresh(self):
        regs = self.regs
        values = self._snapshot()
        pwr = regs[0x4E]
        accel_on = (pwr & 0x03) >= 2  # low-power or low-noise
        gyro_on = (pwr & 0x0C) == 0x0C  # low-noise
        temp_on = (accel_on or gyro_on) and not pwr & 0x20
        # DATA_RDY_INT (INT_STATUS bit 3) while a sample newer than the last data read exists.
        regs[0x2D] = (regs[0x2D] & ~0x08) & 0xFF
        if (accel_on or gyro_on) and self._sample_index != self._read_index:
            regs[0x2D] |= 0x08
        if temp_on:  # deg C = raw / 132.48 + 25
            _put_be(regs, 0x1D, _round_div((self.temp_cdeg - 2500) * 13248, 10000))
        else:
            _put_be(regs, 0x1D, -32768)
        accel_range = self.accel_range_g()
        gyro_range_mdps = self.gyro_range_mdps()
        for axis in range(3):
            _put_be(regs, 0x1F + 2 * axis, accel_counts(values[axis], accel_range) if accel_on else -32768)
            _put_be(regs, 0x25 + 2 * axis,
                    gyro_counts_mdps(values[3 + axis], gyro_range_mdps) if gyro_on else -32768)

    def _after_read(self, first, last):
        if first <= 0x2A and last >= 0x1F:
            self._read_index = self._sample_index
        if first <= 0x2D <= last:
            self.regs[0x2D] = 0  # INT_STATUS clears on read


class Qmc5883pEmu(_SensorEmu):
    """QMC5883P: id 0x80 at 0x00, X/Y/Z little-endian at 0x01..0x06, STATUS 0x09 (DRDY, overflow)."""

    ADDRESSES = (0x2C,)
    _live_lo = 0x01
    _live_hi = 0x09

    def __init__(self, source, imu_index, clock, addr=0x2C, fail_windows=()):
        super().__init__(source, imu_index, clock, addr, fail_windows)

    def reset(self):
        super().reset()
        self.regs[0x00] = QMC5883P_CHIP_ID
        self._read_index = -1

    def range_gauss(self):
        return _QMC_RANGE_BY_CODE[(self.regs[0x0B] >> 2) & 0x3]

    def _odr_mhz(self):
        return _QMC_ODR_MHZ[(self.regs[0x0A] >> 2) & 0x3]

    def _write_reg(self, reg, value):
        if reg == 0x0B and value & 0x80:
            self.reset()  # SOFT_RST
        elif reg >= 0x0A:  # data and status are read-only
            self.regs[reg] = value

    def _refresh(self):
        regs = self.regs
        if regs[0x0A] & 0x03 == 0:  # suspend: the data registers hold their last values
            regs[0x09] = 0
            return
        values = self._snapshot()
        range_gauss = self.range_gauss()
        full_scale = range_gauss * QMC5883P_COUNTS_PER_GAUSS[range_gauss]
        overflow = False
        for axis in range(3):
            count = mag_counts(values[6 + axis], range_gauss)
            if count > full_scale or count < -full_scale:
                overflow = True
            _put_le(regs, 0x01 + 2 * axis, count)
        status = 0x02 if overflow else 0
        if self._sample_index != self._read_index:
            status |= 0x01
        regs[0x09] = status

    def _after_read(self, first, last):
        if first <= 0x06 and last >= 0x01:
            self._read_index = self._sample_index
