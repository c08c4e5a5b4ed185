"""Shared test setup: the tests folder on sys.path (for testenv), the MicroPython binary for the
emulator, and helpers to run an emulated node and decode what it sent."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from testenv import REPO, micropython_binary  # noqa: E402

MP_EMULATION = REPO / "host_sdk" / "imusic" / "emulation" / "mp"

# The launcher and the firmware tests find the unix port the same way the Makefile does.
_mp = micropython_binary()
if _mp and not os.environ.get("IMUSIC_MICROPYTHON"):
    os.environ["IMUSIC_MICROPYTHON"] = _mp


@pytest.fixture(scope="session")
def micropython() -> str:
    """Path of the MicroPython unix port (installed by `make bootstrap`)."""
    assert _mp, "micropython (unix port) not found: run `make bootstrap` or set IMUSIC_MICROPYTHON"
    return _mp


@pytest.fixture(scope="session")
def emu_modules() -> Any:
    """The emulation's MicroPython-side modules, imported into CPython (chips, source) so tests
    can recompute exactly what the emulated chips served."""
    if str(MP_EMULATION) not in sys.path:
        sys.path.insert(0, str(MP_EMULATION))
    import emu_chips  # type: ignore  # on sys.path only from here on
    import emu_source  # type: ignore

    class Modules:
        chips = emu_chips
        source = emu_source

    return Modules


def run_emulated_to_file(tmp_path: Path, **kwargs: Any) -> tuple[bytes, str]:
    """Run an emulated node to its end with the stream in a file; (stream bytes, stderr text)."""
    from imusic.emulation.launcher import EmulatedNode

    out = tmp_path / "stream.bin"
    node = EmulatedNode(link=f"file:{out}", workdir=tmp_path / "emu", **kwargs)
    with node:
        code = node.wait(timeout=120)
        stderr = node.stderr_text()
    assert code == 0, f"emulated node ended with {code}:\n{stderr}"
    return out.read_bytes(), stderr


def decode_all(data: bytes) -> tuple[list[Any], Any]:
    """Every message in a byte stream, and the decoder (for its stats)."""
    from imusic.protocol import StreamDecoder

    decoder = StreamDecoder()
    messages = decoder.feed(data) + decoder.flush()
    return messages, decoder
