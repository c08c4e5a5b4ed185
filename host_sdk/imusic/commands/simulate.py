"""``imusic simulate``: paired recordings of simulated subjects, made by the real firmware.

Each subject gets a face (shape), an expression style and a rig of their own (their own stuck-on
IMUs: errors, node clocks and uids), all drawn from --seed and the subject number. Their --minutes
are split into --takes-per-subject takes, each recorded through the emulated rig:

    DIR/subject_01/take_01/{rec.imu, blendshapes.csv, truth.json, truth.npz}
    DIR/manifest.json   takes, subjects, seeds, layout, durations (and that the data are simulated)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
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
        manifest["subjects"].append(entry)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"{out}: {subjects} subject(s) x {takes} take(s) of {take_s:g} s ({layout.name} layout)")
    return 0
