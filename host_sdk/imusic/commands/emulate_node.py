"""`imusic emulate-node`: the real firmware under MicroPython with emulated IMUs.

Prints where the stream goes (the pty path for pyserial, or the UDP/file destination) on stdout,
then runs until --seconds of device time have passed or Ctrl-C.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from imusic.errors import UserError

if TYPE_CHECKING:
    from imusic.emulation.launcher import Fault

RATES_HZ = (60, 100, 200)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Numbers are parsed in run() so that a bad value is one clear line, not a usage dump.
    parser.add_argument("--imus", default="11", help="number of emulated IMUs, 1..16 (default 11)")
    parser.add_argument("--rate", default="100", help="sample rate in Hz: 60, 100 or 200 (default 100)")
    parser.add_argument("--seconds", default=None, help="stop after this many seconds of device time")
    parser.add_argument("--link", default="pty", help="pty (default), udp:HOST:PORT or file:PATH")
    parser.add_argument("--node-id", default="1", help="node id 0..254 (default 1)")
    parser.add_argument("--clock", default="realtime", help="realtime (default) or virtual (as fast as possible)")
    parser.add_argument("--start-us", default="0", help="device tick counter at start, e.g. 1072741824 "
                                                        "for one second before the 2^30 wrap")
    parser.add_argument("--seed", default="1", help="seed of the emulated motion (default 1)")
    parser.add_argument("--fail", action="append", default=[], metavar="IMU:T1:T2",
                        help="IMU slot IMU stops answering from T1 to T2 seconds of device time (repeatable)")


def _int(name: str, text: str, lo: int, hi: int) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be an integer, not {text!r}") from None
    if not lo <= value <= hi:
        raise UserError(f"{name} must be {lo} .. {hi}, not {value}")
    return value


def _seconds(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{name} must be a number of seconds, not {text!r}") from None
    if not value >= 0:
        raise UserError(f"{name} must not be negative")
    return value


def parse_fault(spec: str, n_imus: int) -> Fault:
    from imusic.emulation.launcher import Fault

    parts = spec.split(":")
    if len(parts) != 3:
        raise UserError(f"bad --fail {spec!r}: use IMU:T1:T2 (slot, then seconds)")
    imu = _int("--fail IMU", parts[0], 0, n_imus - 1)
    t1 = _seconds("--fail T1", parts[1])
    t2 = _seconds("--fail T2", parts[2])
    if t2 <= t1:
        raise UserError(f"bad --fail {spec!r}: T2 must be after T1")
    return Fault(imu, int(t1 * 1e6), int(t2 * 1e6))


def run(args: argparse.Namespace) -> int:
    from imusic.emulation.launcher import EmulatedNode, parse_link

    n_imus = _int("--imus", args.imus, 1, 16)
    rate = _int("--rate", args.rate, 0, 100000)
    if rate not in RATES_HZ:
        raise UserError(f"--rate must be one of 60, 100, 200, not {rate}")
    node_id = _int("--node-id", args.node_id, 0, 254)
    start_us = _int("--start-us", args.start_us, 0, (1 << 62))
    seed = _int("--seed", args.seed, 0, (1 << 31) - 1)
    if args.clock not in ("realtime", "virtual"):
        raise UserError(f"--clock must be realtime or virtual, not {args.clock!r}")
    seconds = _seconds("--seconds", args.seconds) if args.seconds is not None else None
    kind, target = parse_link(args.link)
    faults = [parse_fault(f, n_imus) for f in args.fail]

    node = EmulatedNode(imus=n_imus, rate_hz=rate, node_id=node_id, link=args.link, clock=args.clock,
                        start_us=start_us, seed=seed, faults=faults, max_seconds=seconds)
    with node:
        if kind == "pty":
            print(node.pty_path, flush=True)
        elif kind == "udp":
            print(f"udp:{target[0]}:{target[1]}", flush=True)
        else:
            print(target, flush=True)
        code = node.wait()
        if code not in (0, None):
            err = node.stderr_text().strip().splitlines()
            raise UserError(f"emulated node exited with status {code}" + (f": {err[-1]}" if err else ""))
    return 0
