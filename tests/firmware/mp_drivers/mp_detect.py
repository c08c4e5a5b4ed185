"""Detection over several buses; prints [[imu name, addr] | None, [mag name, addr] | None] per bus."""
from emu_bus import EmuI2C
from emu_chips import StubChip
from harness import CHIP_EMUS, ManualClock, emit, make_source
from imnode.drivers.detect import detect_imu, detect_mag

clock = ManualClock(1000)
source = make_source({"motion": 1})


def chip(name, addr):
    return CHIP_EMUS[name](source, 0, clock, addr=addr)


BUSES = {
    "empty": [],
    "qmi_6a": [chip("qmi8658", 0x6A)],
    "qmi_6b_qmc": [chip("qmi8658", 0x6B), chip("qmc5883p", 0x2C)],
    "icm_68": [chip("icm42688", 0x68)],
    "icm_69_qmc": [chip("icm42688", 0x69), chip("qmc5883p", 0x2C)],
    # A QMC5883L (id 0xFF at 0x0D, at its own 0x0D) and one strapped to 0x2C: neither is a QMC5883P.
    "qmc5883l": [StubChip(0x0D, {0x0D: 0xFF}), StubChip(0x2C, {0x0D: 0xFF})],
    # LSM6DSOX at the QMI8658's address (WHO_AM_I 0x0F = 0x6C) and an MPU-6500 at the ICM's.
    "lookalikes": [StubChip(0x6A, {0x0F: 0x6C}), StubChip(0x68, {0x75: 0x70})],
}

result = {}
for name, devices in BUSES.items():
    bus = EmuI2C(devices)
    found = []
    for hit in (detect_imu(bus), detect_mag(bus)):
        found.append(None if hit is None else [hit[0].__name__, hit[1]])
    result[name] = found
emit(result)
