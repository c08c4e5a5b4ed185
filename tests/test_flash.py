"""``imusic flash``: the plan, precompilation, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testenv import FIRMWARE, assert_one_line_error, run_cli


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "node.json"
    path.write_text(json.dumps({"node_id": 3, "board": "rp2040", "rate_hz": 100}))
    return path


def test_dry_run_lists_firmware_board_file_config_and_reset(config: Path) -> None:
    proc = run_cli("flash", "--port", "/dev/ttyACM9", "--board", "rp2040", "--config", str(config), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert ":main.py" in out and ":node.json" in out and ":imnode/node.py" in out
    assert ":imnode/boards/rp2040.py" in out and ":imnode/boards/picow.py" in out
    assert ":imnode/boards/common.py" in out
    assert ":imnode/boards/esp32.py" not in out  # other boards' files stay off the board
    assert out.strip().splitlines()[-1].endswith("connect /dev/ttyACM9 reset")
    # Every firmware module is in the plan.
    for src in FIRMWARE.rglob("*.py"):
        rel = src.relative_to(FIRMWARE).as_posix()
        if "/boards/" in rel and rel.endswith(("esp32.py", "esp32s3.py", "esp32c3.py")):
            continue
        assert ":" + rel in out, rel


def test_dry_run_with_mpy_targets_compiled_modules(config: Path) -> None:
    proc = run_cli("flash", "--port", "/dev/ttyUSB0", "--board", "rp2040", "--config", str(config),
                   "--mpy", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "-march=armv6m" in proc.stdout
    assert ":imnode/node.mpy" in proc.stdout and ":main.py" in proc.stdout


@pytest.mark.parametrize("board", ["rp2040", "esp32s3", "esp32c3"])
def test_precompiled_modules_are_valid_mpy_for_the_board(board: str, tmp_path: Path) -> None:
    from imusic.flash import _compile, plan_flash

    cfg = tmp_path / "node.json"
    cfg.write_text("{}")
    plan = plan_flash("/dev/null", board, cfg, compile_mpy=True)
    _compile(plan)
    mpys = [src for src, dst in plan.files if dst.endswith(".mpy")]
    assert mpys and all(p.exists() for p in mpys)
    assert len(mpys) == sum(1 for _, dst in plan.files if dst.endswith(".mpy"))
    for mpy in mpys:
        assert mpy.read_bytes()[:2] == b"M\x06", mpy  # .mpy magic and format version 6 (MicroPython >= 1.22)


def test_unknown_board_is_one_line(config: Path) -> None:
    proc = run_cli("flash", "--port", "/dev/ttyACM0", "--board", "arduino-uno", "--config", str(config))
    assert_one_line_error(proc, "unknown board", "arduino-uno")


def test_missing_config_is_one_line(tmp_path: Path) -> None:
    proc = run_cli("flash", "--port", "/dev/ttyACM0", "--board", "esp32", "--config", str(tmp_path / "nope.json"))
    assert_one_line_error(proc, "does not exist")


def test_config_that_is_not_json_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "node.json"
    bad.write_bytes(b"{node_id: 1,")
    proc = run_cli("flash", "--port", "/dev/ttyACM0", "--board", "esp32", "--config", str(bad))
    assert_one_line_error(proc, "not valid JSON")


def test_config_for_another_board_is_refused(config: Path) -> None:
    proc = run_cli("flash", "--port", "/dev/ttyACM0", "--board", "esp32", "--config", str(config), "--dry-run")
    assert_one_line_error(proc, "rp2040")


def test_port_that_does_not_exist_is_one_line(config: Path) -> None:
    proc = run_cli("flash", "--port", "/dev/ttyNOPE42", "--board", "rp2040", "--config", str(config))
    assert_one_line_error(proc, "/dev/ttyNOPE42", "does not exist")


def test_hold_at_repl_sends_two_ctrl_c_and_waits_for_the_port() -> None:
    import os
    import tty

    from imusic.flash import hold_at_repl

    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        hold_at_repl(os.ttyname(slave), settle_s=2)
        assert os.read(master, 16) == b"\x03\x03"  # what the node's link reads as "hold at the REPL"
    finally:
        os.close(master)
        os.close(slave)
