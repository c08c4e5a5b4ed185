"""The firmware's allocation-free CRC-32 (imnode.proto.crc32_at, viper) equals binascii's, under
the real MicroPython, for every length and content we throw at it; verification rejects a flip."""

from __future__ import annotations

import os
import subprocess
import zlib

from testenv import FIRMWARE

SCRIPT = """
import sys
from binascii import crc32
from imnode.proto import CRC_TABLE, crc32_at
seed = 12345
bad = 0
for n in range(0, 700, 7):
    buf = bytearray(n + 8)
    for i in range(n + 8):
        seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
        buf[i] = seed >> 16 & 0xFF
    crc32_at(buf, 2, 2 + n, CRC_TABLE, 1)
    got = buf[2 + n] | buf[3 + n] << 8 | buf[4 + n] << 16 | buf[5 + n] << 24
    if got != crc32(memoryview(buf)[2:2 + n]) or not crc32_at(buf, 2, 2 + n, CRC_TABLE, 0):
        bad += 1
    if n:
        buf[2 + n // 2] ^= 0x10
        if crc32_at(buf, 2, 2 + n, CRC_TABLE, 0):
            bad += 1
b = bytearray(b"123456789") + bytearray(4)
crc32_at(b, 0, 9, CRC_TABLE, 1)
print(bad, bytes(b[9:]).hex())
"""


def test_viper_crc_matches_binascii_and_rejects_a_flipped_bit(micropython: str) -> None:
    env = dict(os.environ, MICROPYPATH=f".frozen:{FIRMWARE}")
    proc = subprocess.run([micropython, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    bad, check = proc.stdout.split()
    assert bad == "0"
    assert bytes.fromhex(check) == zlib.crc32(b"123456789").to_bytes(4, "little")  # 0xCBF43926
