"""TDK InvenSense ICM-42688-P 6-axis IMU.

Register facts: /work/shared/reference/imu-chips.md (all registers used here are in user bank 0).
Accel (0x1F..0x24) and gyro (0x25..0x2A) data are contiguous and big-endian: one 12-byte burst read,
then the bytes of each value are swapped in place into the wire's little-endian.

Invalid data: the chip outputs -32768 for a sensor that has no valid data (off, or still starting:
accel 20 ms, gyro 60 ms). That is exactly the wire's "could not read" marker, so when any axis reads
-32768 the driver marks the whole sample missing (all six values -32768), as the wire requires;
the sampler treats it like a failed read. The chip itself saturates at +-32767.

Rate choice (configure): ODR 1 kHz for every host rate (well above 60/100/200 Hz, so the value read
is at most 1 ms old); the UI low-pass (GYRO_ACCEL_CONFIG0 0x52, bandwidth = ODR / n) does the
anti-aliasing: ODR/16 = 62.5 Hz for a 200 Hz host (Nyquist 100 Hz), ODR/40 = 25 Hz for 100 and
60 Hz hosts (Nyquist 50 / 30 Hz).
"""
from micropython import const
import time

from imnode.drivers.chip import I2cChip

_DEVICE_CONFIG = const(0x11)
_TEMP_DATA1 = const(0x1D)
_ACCEL_DATA_X1 = const(0x1F)
_PWR_MGMT0 = const(0x4E)
_GYRO_CONFIG0 = const(0x4F)
_ACCEL_CONFIG0 = const(0x50)
_GYRO_ACCEL_CONFIG0 = const(0x52)
_WHO_AM_I = const(0x75)
_REG_BANK_SEL = const(0x76)
_CHIP_ID = const(0x47)

_ODR_1KHZ = const(6)
_BW_ODR_DIV16 = const(5)
_BW_ODR_DIV40 = const(7)
_PWR_LOW_NOISE = const(0x0F)  # gyro and accel in low-noise mode, temperature sensor on
_STANDARD_GRAVITY = 9.80665
_DEG_TO_RAD = 0.017453292519943295

# Full scale -> FS_SEL code in CONFIG0 [7:5]; sensitivity is 32768 / full scale.
_ACCEL_CODES = {16: 0, 8: 1, 4: 2, 2: 3}
_GYRO_CODES = {2000: 0, 1000: 1, 500: 2, 250: 3, 125: 4}


class Icm42688(I2cChip):
    CHIP = 2
    ADDRESSES = (0x68, 0x69)
    ID_REG = _WHO_AM_I
    CHIP_ID = _CHIP_ID

    def __init__(self, i2c, addr):
        super().__init__(i2c, addr)
        self._temp = bytearray(2)
        self.accel_range_g = 0
        self.gyro_range_dps = 0
        self.accel_scale = 0.0
        self.gyro_scale = 0.0
        self._write(_REG_BANK_SEL, 0)
        self._write(_DEVICE_CONFIG, 0x01)  # soft reset; the chip needs 1 ms before the next access
        time.sleep_ms(2)
        self._check_id()
        self.configure(8, 500, 100)

    def configure(self, accel_range_g, gyro_range_dps, odr_hz):
        """Set full scales and the low-pass suited to a host sample rate of `odr_hz`."""
        if accel_range_g not in _ACCEL_CODES:
            raise ValueError("ICM-42688-P accel range must be 2, 4, 8 or 16 g")
        if gyro_range_dps not in _GYRO_CODES:
            raise ValueError("ICM-42688-P gyro range must be 125, 250, 500, 1000 or 2000 dps")
        if odr_hz <= 0:
            raise ValueError("sample rate must be positive")
        bw = _BW_ODR_DIV16 if odr_hz >= 200 else _BW_ODR_DIV40
        self._write(_GYRO_CONFIG0, (_GYRO_CODES[gyro_range_dps] << 5) | _ODR_1KHZ)
        self._write(_ACCEL_CONFIG0, (_ACCEL_CODES[accel_range_g] << 5) | _ODR_1KHZ)
        self._write(_GYRO_ACCEL_CONFIG0, (bw << 4) | bw)
        if self._read(_PWR_MGMT0) != _PWR_LOW_NOISE:
            self._write(_PWR_MGMT0, _PWR_LOW_NOISE)
            # No register access for 200 us after a power mode change; the gyro then needs 60 ms
            # before its data are valid (until then the chip reads -32768, reported as missing).
            time.sleep_ms(1)
        self.accel_range_g = accel_range_g
        self.gyro_range_dps = gyro_range_dps
        self.accel_scale = accel_range_g * _STANDARD_GRAVITY / 32768
        self.gyro_scale = gyro_range_dps * _DEG_TO_RAD / 32768

    def read_into(self, buf12):
        """ax ay az gx gy gz as int16 LE counts into `buf12` (12-byte memoryview); no allocation."""
        self.i2c.readfrom_mem_into(self.addr, _ACCEL_DATA_X1, buf12)
        invalid = False
        for i in range(0, 12, 2):
            hi = buf12[i]
            lo = buf12[i + 1]
            if hi == 0x80 and lo == 0:
                invalid = True
            buf12[i] = lo
            buf12[i + 1] = hi
        if invalid:
            for i in range(0, 12, 2):
                buf12[i] = 0x00
                buf12[i + 1] = 0x80

    def temperature_c(self):
        self.i2c.readfrom_mem_into(self.addr, _TEMP_DATA1, self._temp)
        raw = (self._temp[0] << 8) | self._temp[1]
        if raw & 0x8000:
            raw -= 0x10000
        return raw / 132.48 + 25
