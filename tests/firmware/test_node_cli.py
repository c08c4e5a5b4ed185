"""`imusic emulate-node`: bad arguments are one clear line and exit 2; a run writes a decodable stream."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import decode_all
from imusic.commands import emulate_node
from imusic.errors import UserError
from imusic.protocol import Hello, Samples

RUN_COMMAND = """
import argparse, sys
from imusic.commands import emulate_node
from imusic.errors import UserError
parser = argparse.ArgumentParser()
emulate_node.add_arguments(parser)
try:
    sys.exit(emulate_node.run(parser.parse_args(sys.argv[1:])))
except UserError as exc:
    print(f"imusic: error: {exc}", file=sys.stderr)
    sys.exit(2)
"""


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    # The subcommand module on its own, as imusic.cli runs it (UserError -> one line, status 2).
    return subprocess.run([sys.executable, "-c", RUN_COMMAND, *argv], capture_output=True, text=True, timeout=60)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    emulate_node.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize("argv", [
    ("--rate", "7"), ("--rate", "fast"), ("--imus", "17"), ("--link", "serial"), ("--link", "udp:localhost"),
    ("--clock", "sundial"), ("--fail", "3:2:1"), ("--fail", "20:0:1"), ("--seconds", "-1"),
])
def test_bad_arguments_are_one_user_error(argv: tuple[str, ...]) -> None:
    with pytest.raises(UserError):
        emulate_node.run(_args(*argv))


def test_bad_rate_exits_2_with_one_line() -> None:
    proc = _run("--rate", "7")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["imusic: error: --rate must be one of 60, 100, 200, not 7"]
    assert proc.stdout == ""


def test_file_run_prints_destination_and_streams(tmp_path: Path) -> None:
    out = tmp_path / "s.bin"
    proc = _run("--imus", "2", "--rate", "60", "--clock", "virtual", "--seconds", "1", "--link", f"file:{out}",
                "--node-id", "9", "--fail", "1:0.2:0.4")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    messages, decoder = decode_all(out.read_bytes())
    hello = next(m for m in messages if isinstance(m, Hello))
    assert hello.node_id == 9 and hello.rate_hz == 60 and hello.n_imus == 2
    samples = [m for m in messages if isinstance(m, Samples)]
    assert len(samples) >= 50 and decoder.nodes[9].lost_frames == 0
    assert any(s.status[1] & 1 for s in samples) and not any(s.status[0] & 1 for s in samples)
