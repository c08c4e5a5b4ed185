"""`imusic emulate-node`: the real firmware under MicroPython with emulated IMUs.

Prints where the stream goes (the pty path for pyserial, or the UDP/file destination) on stdout,
then runs until --seconds of device time have passed or Ctrl-C. The "imperfections" options make
the node and its link misbehave in controlled, seeded ways (docs/firmware.md, "Emulation").

With --sim the emulated chips read a simulated subject instead of the synthetic motion: the IMUs,
their sites and the rate come from --layout, the rig (IMU errors, clock drift and offset, node uid)
from --seed, and --sim-seconds of the --scenario are precomputed and then looped (docs/sim.md).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from imusic.errors import UserError

if TYPE_CHECKING:
    from imusic.emulation.launcher import Fault

RATES_HZ = (60, 100, 200)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Numbers are parsed in run() so that a bad value is one clear line, not a usage dump.
    parser.add_argument("--imus", default=None, help="number of emulated IMUs, 1..16 (default 11; not with --sim)")
    parser.add_argument("--rate", default=None, help="sample rate in Hz: 60, 100 or 200 (default 100; with --sim "
                                                     "the layout's)")
    parser.add_argument("--seconds", default=None, help="stop after this many seconds of device time")
    parser.add_argument("--link", default="pty", help="pty (default), udp:HOST:PORT or file:PATH")
    parser.add_argument("--node-id", default="1", help="node id 0..254 (default 1)")
    parser.add_argument("--clock", default="realtime", help="realtime (default) or virtual (as fast as possible)")
    parser.add_argument("--start-us", default="0", help="device tick counter at start, e.g. 1072741824 "
                                                        "for one second before the 2^30 wrap")
    parser.add_argument("--seed", default="1", help="seed of the emulated motion (default 1)")
    parser.add_argument("--fail", action="append", default=[], metavar="IMU:T1:T2",
                        help="IMU slot IMU stops answering from T1 to T2 seconds of device time (repeatable)")
    sim = parser.add_argument_group("simulated subject", "the chips read a simulated face-worn rig (imusic.sim)")
    sim.add_argument("--sim", action="store_true", help="simulate a subject wearing --layout's IMUs")
    sim.add_argument("--layout", default="imusic", help="layout name or .yaml file (default imusic)")
    sim.add_argument("--scenario", default="expressions", help="what the subject does (default expressions; "
                                                               "see docs/sim.md)")
    sim.add_argument("--sim-seconds", default="120", help="seconds simulated before the table loops (default 120)")
    knobs = parser.add_argument_group("imperfections", "a node and link that are not ideal, for testing hosts")
    knobs.add_argument("--offset-us", default="0", help="the device clock starts at this value instead of 0 "
                                                        "(0 .. 535870911)")
    knobs.add_argument("--drift-ppm", default="0", help="the device clock runs this many ppm fast (negative: "
                                                        "slow) against the host clock (realtime clock)")
    knobs.add_argument("--delay-ms", default="0", help="node-to-host bytes arrive this much later (pty, UDP)")
    knobs.add_argument("--jitter-ms", default="0", help="plus a random 0 .. this many ms each (seeded)")
    knobs.add_argument("--loss", default="0", help="fraction of SAMPLES frames the node drops, e.g. 0.1 "
                                                   "(seeded; each drop is a line on the emulator's stderr)")
    knobs.add_argument("--reboot-after", default=None, metavar="S", help="the node resets itself once, after S "
                                                                          "seconds of uptime")
    knobs.add_argument("--reopen-after", default=None, metavar="S[:DOWN_S]",
                       help="close the pty after S seconds and offer a new one DOWN_S (default 1) later")
    knobs.add_argument("--pty-link", default=None, metavar="PATH",
                       help="keep a symlink at PATH pointing at the current pty (stable across --reopen-after)")


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


def _number(name: str, text: str, lo: float, hi: float) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number, not {text!r}") from None
    if not lo <= value <= hi:  # also refuses NaN
        raise UserError(f"{name} must be {lo:g} .. {hi:g}, not {text}")
    return value


def parse_reopen(spec: str) -> tuple[float, float]:
    after, _, down = spec.partition(":")
    return _seconds("--reopen-after S", after), _seconds("--reopen-after DOWN_S", down) if down else 1.0


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
    from imusic.emulation.launcher import MAX_OFFSET_US, EmulatedNode, parse_link

    if args.sim:
        return _run_sim(args)
    for name in ("layout", "scenario", "sim_seconds"):
        if getattr(args, name) != parser_defaults()[name]:
            raise UserError(f"--{name.replace('_', '-')} needs --sim")
    n_imus = _int("--imus", args.imus if args.imus is not None else "11", 1, 16)
    rate = _int("--rate", args.rate if args.rate is not None else "100", 0, 100000)
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
    offset_us = _int("--offset-us", args.offset_us, 0, MAX_OFFSET_US)
    drift_ppm = _int("--drift-ppm", args.drift_ppm, -100_000, 100_000)
    delay_ms = _number("--delay-ms", args.delay_ms, 0, 10_000)
    jitter_ms = _number("--jitter-ms", args.jitter_ms, 0, 10_000)
    loss = _number("--loss", args.loss, 0, 1)
    reboot_after = _seconds("--reboot-after", args.reboot_after) if args.reboot_after is not None else None
    reopen = parse_reopen(args.reopen_after) if args.reopen_after is not None else None
    if (reopen is not None or args.pty_link) and kind != "pty":
        raise UserError("--reopen-after and --pty-link need --link pty")
    if (delay_ms or jitter_ms) and kind == "file":
        raise UserError("--delay-ms and --jitter-ms need --link pty or udp (a file has no arrival times)")

    node = EmulatedNode(imus=n_imus, rate_hz=rate, node_id=node_id, link=args.link, clock=args.clock,
                        start_us=start_us, seed=seed, faults=faults, max_seconds=seconds, offset_us=offset_us,
                        drift_ppm=drift_ppm, delay_ms=delay_ms, jitter_ms=jitter_ms, loss=loss,
                        reboot_after_s=reboot_after, reopen_after=reopen, pty_link=args.pty_link)
    _run(node, kind, target)
    return 0


def _run(node: Any, kind: str, target: Any) -> None:
    """Start the node, print where a host finds it (pty path, udp:HOST:PORT or the file), wait."""
    with node:
        if kind == "pty":
            print(node.port_path, flush=True)
        elif kind == "udp":
            print(f"udp:{target[0]}:{target[1]}", flush=True)
        else:
            print(target, flush=True)
        code = node.wait()
        if code not in (0, None):
            err = node.stderr_text().strip().splitlines()
            raise UserError(f"emulated node exited with status {code}" + (f": {err[-1]}" if err else ""))


def parser_defaults() -> dict[str, str]:
    return {"layout": "imusic", "scenario": "expressions", "sim_seconds": "120"}


def _run_sim(args: argparse.Namespace) -> int:
    """A simulated subject on the layout's node: the rig's IMUs, sites, uid and clock."""
    import tempfile
    from pathlib import Path

    from imusic.emulation.launcher import EmulatedNode, parse_link
    from imusic.placement import load_layout
    from imusic.sim.rig import Rig
    from imusic.sim.scenarios import scenario, simulate_take, write_table

    if args.imus is not None:
        raise UserError("--imus does not go with --sim: the layout gives the IMUs")
    if args.fail:
        raise UserError("--fail does not go with --sim")
    sc = scenario(args.scenario)
    layout = load_layout(args.layout)
    seed = _int("--seed", args.seed, 0, (1 << 31) - 1)
    sim_s = _number("--sim-seconds", args.sim_seconds, 1, 3600)
    node_id = _int("--node-id", args.node_id, 0, 254) if args.node_id != "1" else layout.node_ids[0]
    if node_id not in layout.node_ids:
        raise UserError(f"layout {layout.name!r} has no node {node_id} (nodes: {', '.join(map(str, layout.node_ids))})")
    if args.rate is not None and _int("--rate", args.rate, 0, 100000) != layout.rate_hz:
        raise UserError(f"--rate: the {layout.name} layout runs at {layout.rate_hz} Hz")
    if args.clock not in ("realtime", "virtual"):
        raise UserError(f"--clock must be realtime or virtual, not {args.clock!r}")
    seconds = _seconds("--seconds", args.seconds) if args.seconds is not None else None
    kind, target = parse_link(args.link)
    delay_ms = _number("--delay-ms", args.delay_ms, 0, 10_000)
    jitter_ms = _number("--jitter-ms", args.jitter_ms, 0, 10_000)
    loss = _number("--loss", args.loss, 0, 1)
    if (delay_ms or jitter_ms) and kind == "file":
        raise UserError("--delay-ms and --jitter-ms need --link pty or udp (a file has no arrival times)")
    reboot_after = _seconds("--reboot-after", args.reboot_after) if args.reboot_after is not None else None
    reopen = parse_reopen(args.reopen_after) if args.reopen_after is not None else None
    if (reopen is not None or args.pty_link) and kind != "pty":
        raise UserError("--reopen-after and --pty-link need --link pty")

    rig = Rig.random(layout, seed)
    clock = rig.clocks[node_id]
    drift = _int("--drift-ppm", args.drift_ppm, -100_000, 100_000) if args.drift_ppm != "0" else round(clock.drift_ppm)
    offset = _int("--offset-us", args.offset_us, 0, 535_870_911) if args.offset_us != "0" else clock.offset_us
    print(f"simulating {sim_s:g} s of {sc.name} on the {layout.name} layout (seed {seed})", file=sys.stderr, flush=True)
    take = simulate_take(rig, sc.name, duration_s=sim_s)
    nt = take.nodes[node_id]
    with tempfile.TemporaryDirectory(prefix="imusic-sim-node-") as tmp:
        table = Path(tmp) / "table.bin"
        write_table(table, take.period_us, nt.accel_mps2, nt.gyro_rads, nt.mag_uT)
        imus = layout.emulator_imus(node_id)
        for entry in imus:
            entry["temp_cdeg"] = take.temp_register_cdeg(str(entry["site"]))
        node = EmulatedNode(imus=imus, rate_hz=layout.rate_hz, node_id=node_id, link=args.link, clock=args.clock,
                            start_us=_int("--start-us", args.start_us, 0, (1 << 62)), seed=seed,
                            source={"kind": "table", "path": str(table), "loop": True, "start_us": offset,
                                    "seed": seed},
                            max_seconds=seconds, offset_us=offset, drift_ppm=drift, delay_ms=delay_ms,
                            jitter_ms=jitter_ms, loss=loss, reboot_after_s=reboot_after, reopen_after=reopen,
                            pty_link=args.pty_link, uid=clock.uid)
        _run(node, kind, target)
    return 0
