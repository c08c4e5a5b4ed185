"""Shared by the MicroPython driver scripts: a settable clock, bus building, result printing."""
import json
import struct
import sys

from emu_chips import Icm42688Emu, Qmc5883pEmu, Qmi8658Emu
from emu_source import ConstantSource, SimpleMotion

CHIP_EMUS = {"qmi8658": Qmi8658Emu, "icm42688": Icm42688Emu, "qmc5883p": Qmc5883pEmu}


class ManualClock:
    """Device time that moves only when the script says so."""

    def __init__(self, t_us=0):
        self.t_us = t_us

    def now_us(self):
        return self.t_us


def args():
    """The script's parameters: JSON on stdin (this unix port aborts on long command lines)."""
    text = sys.stdin.read()
    return json.loads(text) if text else {}


def make_source(spec):
    """{"motion": seed} or {"constant": [9 ints]} (the same description the host test uses)."""
    if "constant" in spec:
        return ConstantSource(spec["constant"])
    return SimpleMotion(spec["motion"])


def driver_class(name):
    if name == "qmi8658":
        from imnode.drivers.qmi8658 import Qmi8658
        return Qmi8658
    if name == "icm42688":
        from imnode.drivers.icm42688 import Icm42688
        return Icm42688
    from imnode.drivers.qmc5883p import Qmc5883p
    return Qmc5883p


def counts(buf):
    return list(struct.unpack("<%dh" % (len(buf) // 2), buf))


def emit(result):
    print("RESULT " + json.dumps(result))
