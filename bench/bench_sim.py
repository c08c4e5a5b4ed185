"""Simulator cost (no thresholds: a table): simulating takes of the imusic layout (12 IMUs, 60 Hz)
and recording them through the real firmware on the emulated chips (virtual clock, file link).

Per scenario: seconds of wall time per simulated minute for the simulation itself
(``simulate_take``: kinematics, IMU physics, errors) and for ``run_take`` (table, MicroPython
firmware, recording, truth files), plus the replay check (``replay_blocks``) of the result.

Also: how well the replay's arrival-time clock fit puts the recorded frames on the truth's time base
(the time shift that best explains the replayed gyro against the truth, and the fitted drift
against the true one), and the rest noise of the simulated chips next to the real MEMS IMU of
``../shared/data/real-imu/xio-fusion-sensor-data.csv`` (its first 12 s are at rest).

Run: ``.venv/bin/python bench/bench_sim.py [--seconds 60] [--scenarios expressions,six_pose]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from imusic.placement import load_layout
from imusic.replay import replay_blocks
from imusic.sim.imu import STANDARD_GRAVITY_MPS2, ImuErrors
from imusic.sim.rig import Rig
from imusic.sim.scenarios import run_take, simulate_take

REAL_IMU = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-imu" / "xio-fusion-sensor-data.csv"


def time_shift_ms(out: Path, blocks: list) -> float:
    """The shift (ms) of the replayed frames against the truth's time base that best explains the
    replayed gyro (positive: frames are stamped early)."""
    arrays = np.load(out / "truth.npz")
    t = np.concatenate([b.t_host_s for b in blocks])
    gyro = np.concatenate([b.gyro_rads for b in blocks])
    st, truth = arrays["sample_t_s"], arrays["gyro_rads"]
    expected = np.stack([np.stack([np.interp(t, st[:, j], truth[:, j, k]) for k in range(3)], axis=-1)
                         for j in range(truth.shape[1])], axis=1)
    slope = np.gradient(expected, t, axis=0)
    return float(np.sum((gyro - expected) * slope) / np.sum(slope * slope)) * 1e3


def rest_noise() -> None:
    print("\nRest noise per sample (std over the three axes, 12 s at rest):\n")
    print("| source | rate Hz | gyro deg/s | accel mg |")
    print("|---|---|---|---|")
    layout = load_layout("minimal")
    base = Rig.random(layout, 4)
    for chip in ("qmi8658", "icm42688"):
        # the same rig with every IMU of this chip
        errors = {site: ImuErrors.from_json(dict(e.to_json(), chip=chip)) for site, e in base.errors.items()}
        rig = dataclasses.replace(base, errors=errors)
        node = simulate_take(rig, "table_rest", duration_s=12.0).nodes[layout.node_ids[0]]
        g = np.degrees((node.gyro_rads - node.true_gyro_rads)[:, 0]).std(axis=0)
        a = ((node.accel_mps2 - node.true_accel_mps2)[:, 0] / STANDARD_GRAVITY_MPS2 * 1e3).std(axis=0)
        print(f"| simulated {chip} | {layout.rate_hz} | {', '.join(f'{v:.3f}' for v in g)} "
              f"| {', '.join(f'{v:.2f}' for v in a)} |")
    if REAL_IMU.exists():
        data = np.genfromtxt(REAL_IMU, delimiter=",", skip_header=1)
        rest = data[data[:, 0] < 12.0]
        rate = 1.0 / float(np.diff(rest[:, 0]).mean())
        print(f"| x-io sample (real) | {rate:.0f} | {', '.join(f'{v:.3f}' for v in rest[:, 1:4].std(axis=0))} "
              f"| {', '.join(f'{v:.2f}' for v in rest[:, 4:7].std(axis=0) * 1e3)} |")
    else:
        print(f"| x-io sample (real) | absent: {REAL_IMU} | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="simulated seconds per take (default 60)")
    parser.add_argument("--scenarios", default="expressions,expressions_walk,six_pose,table_rest")
    parser.add_argument("--layout", default="imusic")
    args = parser.parse_args()
    layout = load_layout(args.layout)
    rig = Rig.random(layout, 1)
    per_min = 60.0 / args.seconds
    print(f"layout {layout.name}: {len(layout.imus)} IMUs at {layout.rate_hz} Hz, {args.seconds:g} s per take\n")
    print("| scenario | simulate s/min | firmware + files s/min | total s/min | replay s/min | frames "
          "| frame time shift ms | drift fit - truth ppm |")
    print("|---|---|---|---|---|---|---|---|")
    tmp = Path(tempfile.mkdtemp(prefix="bench-sim-"))
    try:
        for name in args.scenarios.split(","):
            t0 = time.perf_counter()
            take = simulate_take(rig, name, duration_s=args.seconds)
            t1 = time.perf_counter()
            out = run_take(take, tmp / name)
            t2 = time.perf_counter()
            result = replay_blocks(out / "rec.imu", layout.rate_hz)
            t3 = time.perf_counter()
            shift_ms = time_shift_ms(out, result.blocks)
            true_drift = json.loads((out / "truth.json").read_text())["nodes"]["1"]["drift_ppm"]
            drift_err = (result.nodes["1"]["clock_drift_ppm"] or 0.0) - true_drift
            print(f"| {name} | {(t1 - t0) * per_min:.2f} | {(t2 - t1) * per_min:.2f} | {(t2 - t0) * per_min:.2f} "
                  f"| {(t3 - t2) * per_min:.2f} | {result.frames_aligned} | {shift_ms:+.3f} | {drift_err:+.2f} |",
                  flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rest_noise()


if __name__ == "__main__":
    main()
