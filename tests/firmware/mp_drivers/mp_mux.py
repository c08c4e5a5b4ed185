"""Two QMI8658 at the same address behind a TCA9548A (channels 0 and 3), plus an ICM on channel 5."""
from emu_bus import EmuI2C, EmuMux
from emu_chips import Icm42688Emu, Qmi8658Emu
from emu_source import SimpleMotion
from harness import ManualClock, args, counts, emit
from imnode.drivers.icm42688 import Icm42688
from imnode.drivers.qmi8658 import Qmi8658
from imnode.drivers.tca9548a import Tca9548a


class CountingMux(EmuMux):
    writes = 0

    def write_raw(self, buf):
        self.writes += 1
        super().write_raw(buf)


a = args()
clock = ManualClock(a["t_us"])
source = SimpleMotion(a["seed"])
mux_emu = CountingMux(0x71)
mux_emu.attach(0, Qmi8658Emu(source, 0, clock, addr=0x6B))
mux_emu.attach(3, Qmi8658Emu(source, 3, clock, addr=0x6B))
mux_emu.attach(5, Icm42688Emu(source, 5, clock, addr=0x68))
bus = EmuI2C([mux_emu])
mux = Tca9548a(bus, 0x71)
result = {}


def error_of(fn):
    try:
        fn()
    except OSError as exc:
        return exc.args[0]
    return None


result["probe_none_selected"] = Qmi8658.probe(bus, 0x6B)
result["none_selected"] = error_of(lambda: bus.readfrom_mem(0x6B, 0, 1))
drivers = {}
for ch in (0, 3):
    mux.select(ch)
    drivers[ch] = Qmi8658(bus, 0x6B)
    drivers[ch].configure(8, 512, 100)
mux.select(5)
icm = Icm42688(bus, 0x68)
icm.configure(8, 500, 100)
result["scan_ch5"] = bus.scan()

buf = bytearray(12)
view = memoryview(buf)
for ch in (0, 3):
    mux.select(ch)
    drivers[ch].read_into(view)
    result["ch%d" % ch] = counts(buf)
    result["icm_from_ch%d" % ch] = error_of(lambda: icm.read_into(view))

before = mux_emu.writes
for _ in range(3):
    mux.select(0)
result["writes_for_3_selects_of_a_new_channel"] = mux_emu.writes - before
mux.disable()
result["control_after_disable"] = mux_emu.control
result["after_disable"] = error_of(lambda: drivers[3].read_into(view))
mux.select(3)
result["control_after_select"] = bus.readfrom(0x71, 1)[0]
bus.writeto(0x71, bytes((0x09,)))  # channels 0 and 3 together: both chips answer at 0x6B
result["both_enabled"] = error_of(lambda: drivers[0].read_into(view))
result["scan_both"] = bus.scan()
emit(result)
