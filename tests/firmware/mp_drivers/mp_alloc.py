"""Heap use of 1,000 read_into rounds over QMI8658, ICM-42688-P and QMC5883P behind a TCA9548A."""
import gc

from emu_bus import EmuI2C, EmuMux
from emu_chips import Icm42688Emu, Qmc5883pEmu, Qmi8658Emu
from emu_source import SimpleMotion
from harness import ManualClock, emit
from imnode.drivers.icm42688 import Icm42688
from imnode.drivers.qmc5883p import Qmc5883p
from imnode.drivers.qmi8658 import Qmi8658
from imnode.drivers.tca9548a import Tca9548a

clock = ManualClock(1_000_000)
source = SimpleMotion(7)
mux_emu = EmuMux(0x70)
mux_emu.attach(0, Qmi8658Emu(source, 0, clock, addr=0x6B, fail_windows=[(0, 10)]))
mux_emu.attach(1, Icm42688Emu(source, 1, clock, addr=0x68))
mux_emu.attach(2, Qmc5883pEmu(source, 2, clock))
bus = EmuI2C([mux_emu])
mux = Tca9548a(bus, 0x70)
mux.select(0)
qmi = Qmi8658(bus, 0x6B)
mux.select(1)
icm = Icm42688(bus, 0x68)
mux.select(2)
qmc = Qmc5883p(bus, 0x2C)
samples = bytearray(30)
imu_views = (memoryview(samples)[0:12], memoryview(samples)[12:24])
mag_view = memoryview(samples)[24:30]
qmi_view = imu_views[0]
icm_view = imu_views[1]


def loop(rounds):
    for _ in range(rounds):
        clock.t_us += 5000
        mux.select(0)
        qmi.read_into(qmi_view)
        mux.select(1)
        icm.read_into(icm_view)
        mux.select(2)
        qmc.read_into(mag_view)


def measure(rounds):
    # Locals only: a new module global would itself grow the globals dict mid-measurement.
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    loop(rounds)
    grown = gc.mem_alloc() - before
    gc.enable()
    return grown


def allocating_loop(rounds):
    for _ in range(rounds):
        qmc.read_into(memoryview(bytearray(6)))  # a fresh buffer per read: what must be avoided


def measure_control(rounds):
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    allocating_loop(rounds)
    grown = gc.mem_alloc() - before
    gc.enable()
    return grown


loop(10)  # warm up
grown = measure(1000)
emit({"grown_bytes": grown, "control_grown_bytes": measure_control(100), "t_us": clock.t_us,
      "samples": list(samples)})
