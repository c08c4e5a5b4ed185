"""QST QMC5883P 3-axis magnetometer (not the QMC5883L: other address, other register map).

Register facts: /work/shared/reference/imu-chips.md. X, Y, Z are int16 little-endian at 0x01..0x06,
read in one burst straight into the caller's buffer.

Rate choice (configure): continuous mode at the smallest chip ODR (10/50/100/200 Hz) at or above the
host sample rate, so each host sample sees a fresh field value; over-sampling ratio 8 (the lowest
noise the chip offers), down-sampling 1.
"""
from micropython import const
import time

from imnode.drivers.chip import I2cChip, unmark

_CHIP_ID_REG = const(0x00)
_CHIP_ID = const(0x80)
_DATA_X_L = const(0x01)
_STATUS = const(0x09)
_CONTROL1 = const(0x0A)
_CONTROL2 = const(0x0B)
_VENDOR_0D = const(0x0D)
_AXIS_SIGN = const(0x29)
_SOFT_RESET = const(0x80)
_MODE_CONTINUOUS = const(3)
_STATUS_OVERFLOW = const(0x02)

# Full scale (gauss) -> (RNG code in CONTROL2 [3:2], counts per gauss).
_RANGES = {30: (0, 1000), 12: (1, 2500), 8: (2, 3750), 2: (3, 15000)}
_ODRS = ((10, 0), (50, 1), (100, 2), (200, 3))  # (Hz, CONTROL1 [3:2] code), ascending


class Qmc5883p(I2cChip):
    MAG_CHIP = 1
    ADDRESSES = (0x2C,)
    ID_REG = _CHIP_ID_REG
    CHIP_ID = _CHIP_ID

    def __init__(self, i2c, addr=0x2C):
        super().__init__(i2c, addr)
        self.range_gauss = 0
        self.mag_scale = 0.0
        self._write(_CONTROL2, _SOFT_RESET)
        time.sleep_ms(50)  # the datasheet gives no reset time; 50 ms is the safe choice
        self._check_id()
        # As QST's own init does: axis sign definition and the undocumented 0x0D setting.
        self._write(_AXIS_SIGN, 0x06)
        self._write(_VENDOR_0D, 0x40)
        self.configure(8, 100)

    def configure(self, range_gauss, odr_hz):
        """Set the full scale and a continuous-mode rate suited to a host sample rate of `odr_hz`."""
        if range_gauss not in _RANGES:
            raise ValueError("QMC5883P range must be 2, 8, 12 or 30 gauss")
        if odr_hz <= 0:
            raise ValueError("sample rate must be positive")
        rng_code, counts_per_gauss = _RANGES[range_gauss]
        odr_code = 3
        for hz, code in _ODRS:
            if hz >= odr_hz:
                odr_code = code
                break
        self._write(_CONTROL1, 0x00)  # suspend while the range changes
        self._write(_CONTROL2, rng_code << 2)  # set/reset on
        self._write(_CONTROL1, (odr_code << 2) | _MODE_CONTINUOUS)  # OSR 8, DSR 1
        self.range_gauss = range_gauss
        self.mag_scale = 100.0 / counts_per_gauss  # 1 gauss = 100 uT

    def read_into(self, buf6):
        """mx my mz as int16 LE counts into `buf6` (6-byte memoryview); no allocation."""
        self.i2c.readfrom_mem_into(self.addr, _DATA_X_L, buf6)
        unmark(buf6, 6)

    def overflowed(self):
        """True when the last conversion exceeded the full scale (STATUS bit 1)."""
        return bool(self._read(_STATUS) & _STATUS_OVERFLOW)
