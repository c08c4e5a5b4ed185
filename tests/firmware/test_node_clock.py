"""The firmware's 64-bit device clock and sample schedule under MicroPython, against the true time
across many 2^30 tick wraps and (hi, lo) carries (hours of device time the stream tests never reach)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from imusic.emulation.launcher import firmware_dir

HELPER = Path(__file__).resolve().parent / "mp_node" / "clock_check.py"


def test_device_clock_and_schedule_match_true_time(micropython: str) -> None:
    env = dict(os.environ, MICROPYPATH=f".frozen:{firmware_dir()}")
    proc = subprocess.run([micropython, str(HELPER), "3"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:2] == ["CLOCK", "OK"] and int(proc.stdout.split()[2]) > 12000
