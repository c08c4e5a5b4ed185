"""Two Ctrl-C bytes outside any frame hand a board to a REPL tool: reset, then one boot that skips
the node (and its watchdog); the boot after that runs the node again."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import decode_all
from imusic.emulation.launcher import RESET_EXIT_CODE, EmulatedNode
from imusic.protocol import Cmd, Samples, encode_command

HELPER = Path(__file__).resolve().parent / "mp_node" / "repl_escape.py"


def test_ctrl_c_twice_reboots_into_a_held_repl_once(tmp_path: Path, micropython: str) -> None:
    node = EmulatedNode(imus=2, clock="virtual", link="pty", max_seconds=2, workdir=tmp_path)

    def boot(stdin: bytes) -> subprocess.CompletedProcess[bytes]:
        return node.run_script(HELPER, input=stdin, timeout=60)

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
