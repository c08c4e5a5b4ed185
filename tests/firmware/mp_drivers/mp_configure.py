"""Configure one chip at each requested setting; print the control registers read back and scales.

stdin: {"chip": name, "addr": a, "regs": [control registers], "settings": [[args...], ...]}
Each setting is the argument list of configure(); a ValueError is reported as "ValueError".
"""
from emu_bus import EmuI2C
from harness import CHIP_EMUS, ManualClock, args, driver_class, emit, make_source

a = args()
clock = ManualClock(1000)
bus = EmuI2C([CHIP_EMUS[a["chip"]](make_source({"motion": 0}), 0, clock, addr=a["addr"])])
driver = driver_class(a["chip"])(bus, a["addr"])
init_regs = [bus.readfrom_mem(a["addr"], reg, 1)[0] for reg in a["regs"]]
out = []
for setting in a["settings"]:
    try:
        driver.configure(*setting)
    except ValueError:
        out.append("ValueError")
        continue
    regs = [bus.readfrom_mem(a["addr"], reg, 1)[0] for reg in a["regs"]]
    if a["chip"] == "qmc5883p":
        scales = [driver.range_gauss, driver.mag_scale]
    else:
        scales = [driver.accel_range_g, driver.gyro_range_dps, driver.accel_scale, driver.gyro_scale]
    out.append([regs, scales])
emit({"init": init_regs, "results": out})
