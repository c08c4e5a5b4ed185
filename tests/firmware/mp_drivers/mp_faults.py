"""A chip that stops answering inside a time window, and one switched off by set_failing()."""
from emu_bus import EmuI2C
from emu_chips import Qmc5883pEmu, Qmi8658Emu
from emu_source import SimpleMotion
from harness import ManualClock, args, counts, emit
from imnode.drivers.qmc5883p import Qmc5883p
from imnode.drivers.qmi8658 import Qmi8658

a = args()
clock = ManualClock(0)
source = SimpleMotion(a["seed"])
imu_emu = Qmi8658Emu(source, 0, clock, addr=0x6A, fail_windows=a["windows"])
mag_emu = Qmc5883pEmu(source, 0, clock)
bus = EmuI2C([imu_emu, mag_emu])
imu = Qmi8658(bus, 0x6A)
imu.configure(4, 256, 200)
mag = Qmc5883p(bus, 0x2C)
buf = bytearray(12)
view = memoryview(buf)
timeline = []
for t_us in a["times"]:
    clock.t_us = t_us
    try:
        imu.read_into(view)
        timeline.append(counts(buf))
    except OSError as exc:
        timeline.append(exc.args[0])
mag_buf = bytearray(6)
switched = []
for failing in (True, False):
    mag_emu.set_failing(failing)
    try:
        mag.read_into(memoryview(mag_buf))
        switched.append(counts(mag_buf))
    except OSError as exc:
        switched.append(exc.args[0])
    switched.append(Qmc5883p.probe(bus, 0x2C))
emit({"timeline": timeline, "switched": switched})
