"""``imusic simulate``: paired recordings of simulated subjects, made by the real firmware.

Each subject gets a face (shape), an expression style and a rig of their own (their own stuck-on
IMUs: errors, node clocks and uids), all drawn from --seed and the subject number. Their --minutes
are split into --takes-per-subject takes, each recorded through the emulated rig:

    DIR/subject_01/take_01/{rec.imu, blendshapes.csv, truth.json, truth.npz}
    DIR/subject_01/calibration.json   the subject's rig calibrated on emulated calibration takes
    DIR/manifest.json   takes, subjects, seeds, layout, durations (and that the data are simulated)

Calibration (default; ``--no-calibrate`` skips it): after a subject's takes, the rig is put
through the calibration steps the features use (gyro, accel, neutral; mag where the layout has a
magnetometer) on its own emulated calibration takes (`imusic.calibration.emulated`), and the file
is saved beside the takes, where `imusic.data` finds it. `add_calibrations(DIR)` does the same
for a simulated dataset made without.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from imusic.errors import UserError

WORN_DEFAULT = "expressions,expressions_walk"


def add_arguments(p: argparse.ArgumentParser) -> None:
    # numbers are parsed in run(): a bad value is one clear line, not a usage dump
    p.add_argument("--layout", default="imusic", help="layout name or .yaml file (default imusic)")
    p.add_argument("--subjects", default="1", help="number of simulated subjects (default 1)")
    p.add_argument("--minutes", default="1", help="minutes of recording per subject (default 1)")
    p.add_argument("--takes-per-subject", default="1", help="takes the minutes are split into (default 1)")
    p.add_argument("--seed", default="0", help="seed of everything simulated (default 0)")
    p.add_argument("--scenario", default=WORN_DEFAULT,
                   help=f"scenario of the takes, or a comma-separated list used in turn (default {WORN_DEFAULT})")
    p.add_argument("--out", required=True, help="output directory (created; must be empty or new)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty output directory")
    p.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                   help="skip the per-subject rig calibration (features are then uncalibrated)")


def _number(name: str, text: str, *, integer: bool, lo: float) -> Any:
    try:
        value = int(text) if integer else float(text)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be {'an integer' if integer else 'a number'}, not {text!r}") from None
    if not (value >= lo and math.isfinite(value)):
        raise UserError(f"{name} must be {'at least ' + str(lo) if integer else 'positive'}, not {text}")
    return value


def _prepare_out(path: Path, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UserError(f"--out {path} is not empty (use --overwrite to write into it)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --out {path}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"--out {path} is not writable")


def run(args: argparse.Namespace) -> int:
    from imusic.placement import load_layout
    from imusic.sim.rig import Rig
    from imusic.sim.scenarios import Subject, run_take, scenario, simulate_take

    subjects = _number("--subjects", args.subjects, integer=True, lo=1)
    takes = _number("--takes-per-subject", args.takes_per_subject, integer=True, lo=1)
    seed = _number("--seed", args.seed, integer=True, lo=0)
    minutes = _number("--minutes", args.minutes, integer=False, lo=0)
    if minutes <= 0:
        raise UserError(f"--minutes must be positive, not {args.minutes}")
    names = [s.strip() for s in str(args.scenario).split(",") if s.strip()]
    if not names:
        raise UserError("--scenario names no scenario")
    for name in names:
        scenario(name)  # unknown names: one line listing the scenarios
    layout = load_layout(args.layout)
    take_s = minutes * 60.0 / takes
    if take_s < 1.0:
        raise UserError(f"takes of {take_s:.2f} s are too short: at least 1 s each")
    out = Path(args.out)
    _prepare_out(out, args.overwrite)

    manifest: dict[str, Any] = {
        "format": "imusic-sim-dataset", "version": 1, "simulated": True,
        "note": "Simulated data (imusic.sim): synthetic subjects, faces and IMU errors; the bytes come from the "
                "real node firmware driving register-level emulated chips. Not recordings of people.",
        "layout": layout.name, "sites": list(layout.sites), "rate_hz": layout.rate_hz, "seed": seed,
        "minutes_per_subject": minutes, "takes_per_subject": takes, "scenarios": names, "subjects": [],
    }
    for i in range(1, subjects + 1):
        subject_seed = seed * 1000 + i
        rig = Rig.random(layout, subject_seed)
        subject = Subject.random(subject_seed)
        entry: dict[str, Any] = {"id": f"subject_{i:02d}", "subject_seed": subject_seed, "rig_seed": subject_seed,
                                 **{k: v for k, v in subject.to_json().items() if k != "seed"},
                                 "node_uids": {str(n): c.uid.hex() for n, c in rig.clocks.items()}, "takes": []}
        for j in range(1, takes + 1):
            name = names[(j - 1) % len(names)]
            take_dir = out / entry["id"] / f"take_{j:02d}"
            take = simulate_take(rig, name, take_seed=j, duration_s=take_s, subject=subject)
            run_take(take, take_dir)
            entry["takes"].append({"path": str(take_dir.relative_to(out)), "scenario": name, "take_seed": j,
                                   "duration_s": take_s})
            print(f"{take_dir}: {name}, {take_s:g} s", file=sys.stderr, flush=True)
        if args.calibrate:
            entry["calibration"] = calibrate_subject(out, entry["id"], args.layout, subject_seed)
            print(f"{out / entry['id'] / CALIBRATION_FILE}: {_calibration_line(entry['calibration'])}",
                  file=sys.stderr, flush=True)
        manifest["subjects"].append(entry)
    manifest["calibrated"] = bool(args.calibrate)
    _write_manifest(out, manifest)
    print(f"{out}: {subjects} subject(s) x {takes} take(s) of {take_s:g} s ({layout.name} layout"
          f"{', calibrated' if args.calibrate else ''})")
    return 0


CALIBRATION_FILE = "calibration.json"


def calibration_steps(layout: Any) -> list[str]:
    """The steps whose results the features use: gyro, accel, neutral; mag only with a magnetometer."""
    steps = ["gyro", "accel"]
    if any(imu.mag for imu in layout.imus):
        steps.append("mag")
    return steps + ["neutral"]


def calibrate_subject(out: Path, subject_id: str, layout: str, subject_seed: int,
                      steps: Sequence[str] | None = None) -> dict[str, Any]:
    """Calibrate subject ``subject_id``'s rig (seed ``subject_seed``) on emulated calibration
    takes and save DIR/subject/calibration.json; returns the manifest's record of it."""
    from imusic.calibration.emulated import emulated_calibration
    from imusic.placement import load_layout

    todo = list(steps) if steps is not None else calibration_steps(load_layout(layout))
    path = out / subject_id / CALIBRATION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    report = emulated_calibration(layout=layout, seed=subject_seed, steps=todo, save_to=path)
    worst: dict[str, dict[str, Any]] = {}
    for row in report["results"]:
        w = worst.setdefault(row["step"], {"max_residual": 0.0, "unit": row["unit"], "target": row["target"],
                                           "ok": True})
        if row["residual"] == row["residual"]:  # not NaN
            w["max_residual"] = round(max(w["max_residual"], float(row["residual"])), 5)
        w["ok"] = bool(w["ok"] and row["ok"])
    return {"path": str(path.relative_to(out)), "seed": subject_seed, "steps": report["steps"],
            "source": "imusic.calibration.emulated on simulated calibration takes of the subject's rig",
            "results": worst}


def _calibration_line(record: dict[str, Any]) -> str:
    return ", ".join(f"{step} {r['max_residual']:g} {r['unit']}" for step, r in record["results"].items())


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(out / "manifest.json")


def add_calibrations(path: str | Path, *, layout: str | None = None, overwrite: bool = False,
                     log: Callable[[str], None] | None = None) -> list[str]:
    """Calibrate every subject of the simulated dataset at ``path`` that has no calibration yet
    (all with ``overwrite``), saving DIR/subject/calibration.json and recording it in the
    manifest (rewritten after each subject, so an interrupted run keeps what it finished).
    layout: the layout name or .yaml the dataset was made with (default: the manifest's).
    Returns the subjects calibrated."""
    out = Path(path)
    mpath = out / "manifest.json"
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise UserError(f"{out}: no manifest.json (not an imusic simulate directory)") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{mpath}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "imusic-sim-dataset":
        raise UserError(f"{mpath}: not a simulated dataset's manifest")
    lay = layout if layout is not None else str(manifest.get("layout", "imusic"))
    done: list[str] = []
    for entry in manifest.get("subjects", []):
        have = entry.get("calibration") and (out / entry["calibration"]["path"]).is_file()
        if have and not overwrite:
            continue
        entry["calibration"] = calibrate_subject(out, entry["id"], lay, int(entry["subject_seed"]))
        done.append(entry["id"])
        manifest["calibrated"] = all(e.get("calibration") for e in manifest["subjects"])
        _write_manifest(out, manifest)
        if log is not None:
            log(f"{out / entry['id'] / CALIBRATION_FILE}: {_calibration_line(entry['calibration'])}")
    return done
