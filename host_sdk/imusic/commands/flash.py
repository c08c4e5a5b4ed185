"""``imusic flash``: copy the firmware and a node config to a board, then reset it."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", required=True, help="serial port of the board (e.g. /dev/ttyACM0, COM3)")
    p.add_argument("--board", required=True, help="esp32, esp32s3, esp32c3, rp2040 (Pico) or picow")
    p.add_argument("--config", required=True, type=Path, help="node config (see firmware/node.json.example)")
    p.add_argument("--mpy", action="store_true",
                   help="precompile modules with mpy-cross for the board's architecture (the board's "
                        "MicroPython must read this mpy-cross's .mpy version)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the mpremote commands; touch nothing")


def run(args: argparse.Namespace) -> int:
    from imusic.flash import carry_out, plan_flash

    plan = plan_flash(args.port, args.board, args.config, compile_mpy=args.mpy)
    if args.dry_run:
        print(plan.describe())
        return 0
    carry_out(plan)
    print(f"flashed {len(plan.files)} files to {plan.board} on {plan.port}; board reset")
    return 0
