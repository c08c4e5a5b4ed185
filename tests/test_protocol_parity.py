"""The firmware's wire constants (imported by the real MicroPython) agree with the host's."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from imusic.protocol import constants as host
from testenv import FIRMWARE, micropython_binary

DUMP = """
import json
import imnode.proto as p
from imnode.drivers.qmi8658 import Qmi8658
from imnode.drivers.icm42688 import Icm42688
from imnode.drivers.qmc5883p import Qmc5883p
out = {}
for name in dir(p):
    v = getattr(p, name)
    if name[0] != '_' and name.upper() == name and isinstance(v, int):
        out[name] = v
out['chip:QMI8658'] = Qmi8658.CHIP
out['chip:ICM42688P'] = Icm42688.CHIP
out['mag:QMC5883P'] = Qmc5883p.MAG_CHIP
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def firmware_constants() -> dict[str, int]:
    mp = micropython_binary()
    assert mp, "the MicroPython unix port is installed by `make test`"
    env = dict(os.environ, MICROPYPATH=f".frozen:{FIRMWARE}")
    proc = subprocess.run([mp, "-c", DUMP], capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def expected() -> dict[str, int]:
    want = {
        "VERSION": host.PROTOCOL_VERSION,
        "SYNC0": host.SYNC[0],
        "SYNC1": host.SYNC[1],
        "HEADER_SIZE": host.HEADER_SIZE,
        "CRC_SIZE": host.CRC_SIZE,
        "OVERHEAD": host.FRAME_OVERHEAD,
        "MAX_PAYLOAD": host.MAX_PAYLOAD,
        "BROADCAST_ID": host.BROADCAST_NODE,
        "chip:QMI8658": host.ChipId.QMI8658,
        "chip:ICM42688P": host.ChipId.ICM42688P,
        "mag:QMC5883P": host.MagChip.QMC5883P,
    }
    families = [("", host.MsgType), ("FLAG_", host.Flag), ("CMD_", host.Cmd), ("ERR_", host.NackError),
                ("ST_", host.StatusBit), ("LINK_", host.Link), ("LOG_", host.LogLevel)]
    for prefix, enum in families:
        for member in enum:
            want[prefix + str(member.name)] = int(member)
    return want


def test_every_host_constant_has_the_same_value_in_the_firmware(firmware_constants: dict[str, int]) -> None:
    mismatched = {name: (value, firmware_constants.get(name)) for name, value in expected().items()
                  if firmware_constants.get(name) != value}
    assert not mismatched, f"name: (host, firmware) {mismatched}"


def test_firmware_has_no_unknown_member_of_a_host_family(firmware_constants: dict[str, int]) -> None:
    # A command, status bit or error code added on one side only would pass the test above.
    want = expected()
    prefixes = ("CMD_", "ERR_", "ST_", "FLAG_", "LINK_", "LOG_")
    extra = [name for name in firmware_constants
             if name.startswith(prefixes) and name not in want and name not in ("LOG_MAX_TEXT",)]
    assert not extra, extra
