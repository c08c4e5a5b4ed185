"""Paths and tool lookups shared by the tests (the MicroPython binary, stubs, the firmware tree)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIRMWARE = REPO / "firmware"
STUBS = REPO / ".cache" / "stubs"
VECTORS = Path(__file__).resolve().parent / "vectors"
REAL_IMU = REPO.parent / "shared" / "data" / "real-imu"


def venv_tool(name: str) -> str | None:
    """A console script of the test environment, found beside the running interpreter first."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


def micropython_binary() -> str | None:
    """The MicroPython unix port, found the way `imusic emulate-node` finds it; None when missing."""
    from imusic.emulation.launcher import find_micropython
    from imusic.errors import UserError

    try:
        return find_micropython()
    except UserError:
        return None


def firmware_files() -> list[Path]:
    return sorted(p for p in FIRMWARE.rglob("*.py") if "__pycache__" not in p.parts)


def run_cli(*args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run ``imusic ARGS`` in a subprocess, the way a user would."""
    return subprocess.run([sys.executable, "-m", "imusic.cli", *args], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Bad input: non-zero exit, exactly one line on stderr, no traceback, and it names the problem."""
    assert proc.returncode != 0, proc
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
