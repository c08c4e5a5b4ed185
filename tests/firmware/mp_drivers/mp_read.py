"""read_into at several device times; prints the counts and the raw data registers.

stdin: {"chip": name, "addr": a, "imu_index": i, "source": {...}, "config": [configure args],
          "times": [t_us, ...], "raw": [reg, n], "pwr": value or null (ICM PWR_MGMT0 override)}
"""
from emu_bus import EmuI2C
from harness import CHIP_EMUS, ManualClock, args, counts, driver_class, emit, make_source

a = args()
clock = ManualClock(a["times"][0])
bus = EmuI2C([CHIP_EMUS[a["chip"]](make_source(a["source"]), a["imu_index"], clock, addr=a["addr"])])
driver = driver_class(a["chip"])(bus, a["addr"])
driver.configure(*a["config"])
if a.get("pwr") is not None:
    bus.writeto_mem(a["addr"], 0x4E, bytes((a["pwr"],)))
n = 6 if a["chip"] == "qmc5883p" else 12
buf = bytearray(n)
view = memoryview(buf)
samples = []
raws = []
for t_us in a["times"]:
    clock.t_us = t_us
    driver.read_into(view)
    samples.append(counts(buf))
    raws.append(list(bus.readfrom_mem(a["addr"], a["raw"][0], a["raw"][1])))
extra = driver.overflowed() if a["chip"] == "qmc5883p" else driver.temperature_c()
emit({"samples": samples, "raw": raws, "extra": extra})
