"""Drivers on register files holding -32768 in every data register (chip-level edge cases)."""
from emu_bus import EmuI2C
from emu_chips import StubChip
from harness import counts, emit
from imnode.drivers.qmc5883p import Qmc5883p
from imnode.drivers.qmi8658 import Qmi8658

qmi_regs = {0x00: 0x05, 0x4D: 0x80}
for reg in range(0x35, 0x41, 2):
    qmi_regs[reg] = 0x00
    qmi_regs[reg + 1] = 0x80
qmi_regs[0x36] = 0x7F  # ax = 0x7F00 stays as it is
qmc_regs = {0x00: 0x80}
for reg in range(0x01, 0x07, 2):
    qmc_regs[reg] = 0x00
    qmc_regs[reg + 1] = 0x80
bus = EmuI2C([StubChip(0x6B, qmi_regs), StubChip(0x2C, qmc_regs)])
buf12 = bytearray(12)
Qmi8658(bus, 0x6B).read_into(memoryview(buf12))
buf6 = bytearray(6)
Qmc5883p(bus, 0x2C).read_into(memoryview(buf6))
emit({"qmi": counts(buf12), "qmc": counts(buf6)})
