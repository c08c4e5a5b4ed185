"""The ``imusic`` command line.

Each subcommand lives in ``imusic.commands.<name>`` with ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their subcommand runs, so ``imusic decode``
never pays for what ``imusic flash`` imports.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from imusic import __version__
from imusic.errors import UserError

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "emulate-node": ("imusic.commands.emulate_node", "run the real firmware under MicroPython with emulated IMUs"),
    "decode": ("imusic.commands.decode", "decode a raw byte stream file and summarise it"),
    "flash": ("imusic.commands.flash", "copy the firmware and a config to a board with mpremote"),
    "demo": ("imusic.commands.demo", "emulated nodes streaming into the host decoder, with a live summary"),
    "record": ("imusic.commands.record", "record a session's raw bytes (both directions) to a .imu file"),
    "replay": ("imusic.commands.replay", "run a recording through the session pipeline"),
    "stats": ("imusic.commands.stats", "decode and align a recording; per-node statistics"),
    "export": ("imusic.commands.export", "export a recording's frames (npz, csv, hdf5) or a trained model (ONNX, TFLite)"),
    "nodes": ("imusic.commands.nodes", "list nodes answering on serial ports and announcing on UDP"),
    "placement": ("imusic.commands.placement", "face layouts: list, check, draw, and optimise IMU sites"),
    "simulate": ("imusic.commands.simulate", "simulated subjects through the real firmware: rec.imu + blendshape truth"),
    "calibrate": ("imusic.commands.calibrate", "calibration steps (gyro, accel, mag, clock, neutral) saved per node and IMU"),
    "train": ("imusic.commands.train", "train the blendshape teacher or student on paired recordings"),
    "eval": ("imusic.commands.eval", "a model's blendshape error on paired recordings, beside the ridge baseline"),
    "edge-check": ("imusic.commands.edge_check", "run a model on emulated aarch64 (Raspberry Pi, Jetson) and compare with x86"),
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imusic", description="Facial expression capture from face-worn IMUs.")
    parser.add_argument("--version", action="version", version=f"imusic {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        # Argument definitions are cheap to import; the work is done in run().
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except UserError as exc:
        print(f"imusic: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
