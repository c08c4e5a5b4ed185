"""Which chip answers where: chip-id probing over each driver's candidate addresses."""
from .qmi8658 import Qmi8658
from .icm42688 import Icm42688
from .qmc5883p import Qmc5883p

IMU_DRIVERS = (Qmi8658, Icm42688)
MAG_DRIVERS = (Qmc5883p,)


def _first_answering(i2c, drivers):
    for cls in drivers:
        for addr in cls.ADDRESSES:
            if cls.probe(i2c, addr):
                return cls, addr
    return None


def detect_imu(i2c):
    """(driver class, address) of the first 6-axis chip whose id matches, or None."""
    return _first_answering(i2c, IMU_DRIVERS)


def detect_mag(i2c):
    """(driver class, address) of the first magnetometer whose id matches, or None."""
    return _first_answering(i2c, MAG_DRIVERS)
