"""Two Ctrl-C bytes outside any frame hand a board to a REPL tool: reset, then one boot that skips
the node (and its watchdog); the boot after that runs the node again."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import decode_all
from imusic.emulation.launcher import MP_DIR, RESET_EXIT_CODE, EmulatedNode, firmware_dir
from imusic.protocol import Cmd, Samples, encode_command

HELPER = Path(__file__).resolve().parent / "mp_node" / "repl_escape.py"


def test_ctrl_c_twice_reboots_into_a_held_repl_once(tmp_path: Path, micropython: str) -> None:
    node = EmulatedNode(imus=2, clock="virtual", link="pty", max_seconds=2, workdir=tmp_path)
    node._write_files()
    env = dict(os.environ, MICROPYPATH=f".frozen:{firmware_dir()}:{MP_DIR}", IMUSIC_EMU=str(node.settings_path))

    def boot(stdin: bytes) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([micropython, str(HELPER)], input=stdin, capture_output=True, env=env, cwd=tmp_path,
                              timeout=60)

    # A command whose bytes hold 0x03 0x03 inside a frame is not an escape.
    framed = encode_command(1, 0x0303, Cmd.GET_STATUS)
    assert b"\x03\x03" in framed
    proc = boot(framed)
    assert proc.returncode == 0 and not (tmp_path / "imnode.hold").exists()

    proc = boot(b"\x03\x03")
    assert proc.returncode == RESET_EXIT_CODE, proc.stderr
    assert (tmp_path / "imnode.hold").exists()

    held = boot(b"")
    assert held.returncode == 0
    assert b"REPL" in held.stdout and not [m for m in decode_all(held.stdout)[0] if isinstance(m, Samples)]
    assert not (tmp_path / "imnode.hold").exists()

    again = boot(b"")
    assert again.returncode == 0
    assert [m for m in decode_all(again.stdout)[0] if isinstance(m, Samples)]
