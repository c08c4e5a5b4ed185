"""QST QMI8658 6-axis IMU (the chip IMUSIC is built around).

Register facts: /work/shared/reference/imu-chips.md. Data are int16 little-endian in the order the
wire wants (ax ay az gx gy gz), so a sample is one 12-byte burst read straight into the caller's
buffer.

Rate choice (configure): the chip runs at ODR code 4 (500 Hz nominal, 448.4 Hz actual with both
sensors on) for every host rate, well above the 60/100/200 Hz the sampler reads at, so the value read
is never older than 2.3 ms. The on-chip low-pass does the anti-aliasing: 13.37 % of ODR (60 Hz) for a
200 Hz host (Nyquist 100 Hz), 5.39 % of ODR (24 Hz) for 100 and 60 Hz hosts (Nyquist 50 / 30 Hz).
Face motion sits well below 20 Hz.
"""
from micropython import const
import time

from imnode.drivers.chip import I2cChip, unmark

_WHO_AM_I = const(0x00)
_CHIP_ID = const(0x05)
_CTRL1 = const(0x02)
_CTRL2 = const(0x03)
_CTRL3 = const(0x04)
_CTRL5 = const(0x06)
_CTRL7 = const(0x08)
_TEMP_L = const(0x33)
_AX_L = const(0x35)
_RESET = const(0x60)
_RESET_CMD = const(0xB0)
_RESET_RESULT = const(0x4D)
_RESET_DONE = const(0x80)

# CTRL1: ADDR_AI (bit 6) for burst reads. BE (bit 5) is left clear: its effect is unverified and
# clear means little-endian on every reading of the datasheet.
_CTRL1_INIT = const(0x40)
_ODR_448HZ = const(4)
_LPF_MODE_5P39 = const(2)  # 5.39 % of ODR
_LPF_MODE_13P37 = const(3)  # 13.37 % of ODR
_STANDARD_GRAVITY = 9.80665
_DEG_TO_RAD = 0.017453292519943295

# Full scale -> CTRL2/CTRL3 [6:4] code. Gyro codes 0..7 are 16..2048 dps (not 32..4096).
_ACCEL_CODES = {2: 0, 4: 1, 8: 2, 16: 3}
_GYRO_CODES = {16: 0, 32: 1, 64: 2, 128: 3, 256: 4, 512: 5, 1024: 6, 2048: 7}


class Qmi8658(I2cChip):
    CHIP = 1
    ADDRESSES = (0x6B, 0x6A)

    ID_REG = _WHO_AM_I
    CHIP_ID = _CHIP_ID

    def __init__(self, i2c, addr):
        super().__init__(i2c, addr)
        self._temp = bytearray(2)
        self.accel_range_g = 0
        self.gyro_range_dps = 0
        self.accel_scale = 0.0
        self.gyro_scale = 0.0
        self._write(_RESET, _RESET_CMD)
        # The chip reports 0x80 in RESET_RESULT once its reset is over; drivers allow 500 ms.
        # It may not acknowledge at all while resetting, so a failed poll just waits longer.
        for _ in range(50):
            try:
                if self._read(_RESET_RESULT) == _RESET_DONE:
                    break
            except OSError:
                pass
            time.sleep_ms(10)
        self._check_id()
        self._write(_CTRL1, _CTRL1_INIT)
        self.configure(8, 512, 100)

    def configure(self, accel_range_g, gyro_range_dps, odr_hz):
        """Set full scales and the low-pass suited to a host sample rate of `odr_hz`."""
        if accel_range_g not in _ACCEL_CODES:
            raise ValueError("QMI8658 accel range must be 2, 4, 8 or 16 g")
        if gyro_range_dps not in _GYRO_CODES:
            raise ValueError("QMI8658 gyro range must be 16 .. 2048 dps in powers of two")
        if odr_hz <= 0:
            raise ValueError("sample rate must be positive")
        lpf = _LPF_MODE_13P37 if odr_hz >= 200 else _LPF_MODE_5P39
        self._write(_CTRL7, 0x00)  # sensors off while their settings change
        self._write(_CTRL2, (_ACCEL_CODES[accel_range_g] << 4) | _ODR_448HZ)
        self._write(_CTRL3, (_GYRO_CODES[gyro_range_dps] << 4) | _ODR_448HZ)
        self._write(_CTRL5, (lpf << 5) | 0x10 | (lpf << 1) | 0x01)
        self._write(_CTRL7, 0x03)
        self.accel_range_g = accel_range_g
        self.gyro_range_dps = gyro_range_dps
        self.accel_scale = accel_range_g * _STANDARD_GRAVITY / 32768
        self.gyro_scale = gyro_range_dps * _DEG_TO_RAD / 32768

    def read_into(self, buf12):
        """ax ay az gx gy gz as int16 LE counts into `buf12` (12-byte memoryview); no allocation."""
        self.i2c.readfrom_mem_into(self.addr, _AX_L, buf12)
        unmark(buf12, 12)

    def temperature_c(self):
        self.i2c.readfrom_mem_into(self.addr, _TEMP_L, self._temp)
        raw = self._temp[0] | (self._temp[1] << 8)
        if raw & 0x8000:
            raw -= 0x10000
        return raw / 256
