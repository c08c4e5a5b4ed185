"""``imusic calibrate STEP [URL ...]``: guided calibration steps, saved to a calibration file.

    imusic calibrate gyro /dev/ttyACM0            # keep the rig still for 10 s
    imusic calibrate accel --from sixpose.imu     # a recording of the six poses
    imusic calibrate show --file rig.json
    imusic calibrate --emulate --sim --json       # every step on an emulated rig, against its truth
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from imusic.errors import UserError

DEFAULT_FILE = "imusic-calibration.json"
CHOICES = ("gyro", "accel", "mag", "clock", "neutral", "show", "all")

GUIDE = {
    "gyro": ("Gyroscope bias: lay the sensors down (or sit perfectly still wearing them) and keep them still "
             "for the whole capture.", 10.0),
    "accel": ("Accelerometer: turn the sensors (in a tray, or one at a time) through six poses, each face up once: "
              "+z up (flat), -z up (upside down), +x up, -x up, +y up, -y up. Hold each pose still for 3 s; "
              "a few tilted poses in between make the fit better.", 60.0),
    "mag": ("Magnetometer: away from iron, magnets and electronics, turn the sensors slowly through every "
            "orientation (figure eights, tumbling) for the whole capture.", 45.0),
    "clock": ("Clock: stream normally; the node's clock rate against this computer is fitted over the capture "
              "(longer is more precise).", 60.0),
    "neutral": ("Neutral face: wear the rig, relax the face (neutral, mouth closed) and keep it so; turn the head "
                "slowly left and right and nod a few times.", 30.0),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("step", nargs="?", default=None, choices=CHOICES,
                   help="gyro | accel | mag | clock | neutral | show (| all with --emulate)")
    p.add_argument("urls", nargs="*", metavar="URL", help="the nodes' link URLs (as for imusic record)")
    p.add_argument("--file", default=DEFAULT_FILE, help=f"calibration file to update (default ./{DEFAULT_FILE})")
    p.add_argument("--from", dest="recording", metavar="REC.imu", help="use a recording instead of live nodes")
    p.add_argument("--start", type=float, default=0.0, metavar="S", help="seconds into the recording to start at")
    p.add_argument("--seconds", type=float, default=None, metavar="S", help="capture length (default per step)")
    p.add_argument("--rate-hz", type=float, default=60.0, help="frame rate of the capture (default 60)")
    p.add_argument("--head-reference", metavar="SITE", help="neutral: the head reference site (default: the "
                   "layout's, or the file's)")
    p.add_argument("--layout", default=None, help="layout name or .yaml (head reference; with --emulate the "
                   "simulated rig's layout, default imusic)")
    p.add_argument("--field-uT", type=float, default=None, help="mag: scale to this local field magnitude")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--emulate", action="store_true", help="run on an emulated rig (with --sim)")
    p.add_argument("--sim", action="store_true", help="the emulated rig is imusic.sim's (with its truth)")
    p.add_argument("--seed", type=int, default=1, help="--emulate: the simulated rig's seed")
    p.add_argument("--scenario", metavar="NAME", help="--emulate with one STEP: record this simulator scenario "
                   "for it instead of the step's own (e.g. expressions: a subject who moves)")
    p.add_argument("--out", metavar="DIR", help="--emulate: keep the simulated recordings here")


def run(args: argparse.Namespace) -> int:
    if args.emulate or args.sim:
        return _run_emulated(args)
    step = args.step
    if step is None or step == "all":
        raise UserError("name a step: gyro, accel, mag, clock, neutral or show (all steps: --emulate --sim)")
    from imusic.calibration import Calibration

    path = Path(args.file)
    if step == "show":
        cal = Calibration.load(path)
        if args.json:
            print(json.dumps(cal.to_json(), indent=1))
        else:
            print("\n".join([f"{path}:"] + cal.summary()))
        return 0
    return _run_step(args, step, path)


def _run_step(args: argparse.Namespace, step: str, path: Path) -> int:
    from imusic.calibration import Calibration, capture_recording, capture_session, run_step

    if not args.urls and not args.recording:
        raise UserError(f"calibrate {step}: give the nodes' URLs or --from REC.imu")
    if args.urls and args.recording:
        raise UserError(f"calibrate {step}: give URLs or --from, not both")
    cal = Calibration.load_or_new(path)  # a bad existing file stops here, before any capture
    guide, default_s = GUIDE[step]
    seconds = args.seconds if args.seconds is not None else default_s
    if seconds <= 0:
        raise UserError(f"--seconds must be positive, not {seconds}")
    if args.recording:
        capture = capture_recording(args.recording, rate_hz=args.rate_hz, start_s=args.start,
                                    seconds=args.seconds)
    else:
        if not args.json:
            print(f"{guide}\nCapturing {seconds:g} s ...", flush=True)
        capture = capture_session(args.urls, seconds, rate_hz=args.rate_hz)
    head_ref = _head_reference(args, cal) if step == "neutral" else None
    rows = run_step(step, capture, cal, head_reference=head_ref, field_uT=args.field_uT)
    cal.save(path)
    if args.json:
        print(json.dumps({"file": str(path), "step": step, "source": capture.source,
                          "seconds": round(capture.seconds, 3), "results": rows}, indent=1))
    else:
        print(f"{step}: {len(rows)} result(s) from {capture.seconds:.1f} s of {capture.source}; saved to {path}")
        for row in rows:
            print("  " + _describe(row))
    return 0


def _head_reference(args: argparse.Namespace, cal: Any) -> str | None:
    if args.head_reference:
        return str(args.head_reference)
    if args.layout:
        from imusic.placement import load_layout

        return load_layout(args.layout).head_reference
    return cal.head_reference


def _describe(row: dict[str, Any]) -> str:
    est = row.get("estimate", {})
    who = row.get("imu") or f"node {row.get('node_id')}"
    step = row["step"]
    if step == "gyro":
        b = est["bias_dps"]
        t = est.get("temp_c")
        return (f"{who}: bias [{b[0]:+.3f} {b[1]:+.3f} {b[2]:+.3f}] deg/s (+-{max(est['stderr_dps']):.4f})"
                + (f" at {t:.1f} C" if t is not None else ""))
    if step == "accel":
        o = est["offset_mg"]
        return (f"{who}: offset [{o[0]:+.1f} {o[1]:+.1f} {o[2]:+.1f}] mg, fit residual {est['residual_mg']:.2f} mg "
                f"over {est['poses']} poses")
    if step == "mag":
        o = est["offset_uT"]
        return (f"{who}: hard iron [{o[0]:+.1f} {o[1]:+.1f} {o[2]:+.1f}] uT, field {est['field_uT']:.1f} uT, "
                f"spread {est['spread_pct']:.2f} % (raw {est['raw_spread_pct']:.1f} %), coverage {est['coverage']:.0%}")
    if step == "clock":
        return f"{who} (uid {row.get('node_uid')}): clock {est['drift_ppm']:+.2f} ppm against this computer"
    if step == "neutral":
        q = est["q_ref_sensor"]
        return f"{who}: rest orientation q = [{q[0]:+.4f} {q[1]:+.4f} {q[2]:+.4f} {q[3]:+.4f}] (w x y z)"
    return f"{who}: {est}"


def _run_emulated(args: argparse.Namespace) -> int:
    if not (args.emulate and args.sim):
        raise UserError("--emulate and --sim go together (the emulated rig is the simulator's)")
    if args.urls or args.recording:
        raise UserError("--emulate makes its own rig: no URLs or --from")
    from imusic.calibration.emulated import emulated_calibration, format_table

    steps = None if args.step in (None, "all") else [args.step]
    if args.step == "show":
        raise UserError("show reads a file: imusic calibrate show --file CAL.json")
    if args.scenario and steps is None:
        raise UserError("--scenario replaces the recording of one step: name the step")
    report = emulated_calibration(layout=args.layout or "imusic", seed=args.seed, steps=steps, out_dir=args.out,
                                  scenario=args.scenario, save_to=Path(args.out) / "calibration.json" if args.out else None)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print("\n".join(format_table(report)))
    return 0 if all(r["ok"] for r in report["results"]) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(2)
