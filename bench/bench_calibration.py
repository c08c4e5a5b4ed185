"""Calibration on emulated rigs against the simulator's truth (no thresholds here: tables).

For each seed, ``imusic.calibration.emulated.emulated_calibration`` records the takes every step
needs from one simulated rig (imusic.sim through the real firmware on emulated chips), runs the
steps exactly as ``imusic calibrate --from REC.imu`` does, and compares each estimate with the
rig's truth (docs/calibration.md, "Measured"). Per step: the residual over every IMU (or node) of
every seed, median and worst, next to the target; for the accelerometer also the error over all
orientations (from the truth: what six near-axis poses cannot pin down) and the vector error
against the true specific force (which includes the rotation part a magnitude fit cannot see).

Run: ``.venv/bin/python bench/bench_calibration.py [--seeds 1 2 3] [--layout imusic]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from imusic.calibration.emulated import TARGETS, emulated_calibration


def main() -> None:
    ap = argparse.ArgumentParser(description="calibration on emulated rigs against the simulator's truth")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--layout", default="imusic")
    args = ap.parse_args()
    rows: list[dict] = []
    t0 = time.perf_counter()
    for seed in args.seeds:
        rows += emulated_calibration(layout=args.layout, seed=seed)["results"]
    took = time.perf_counter() - t0
    print(f"layout {args.layout}, seeds {' '.join(map(str, args.seeds))}: {took:.1f} s "
          f"(simulation, firmware emulation, replay and fits)\n")
    print(f"| step | residual | n | median | worst | target | met |")
    print(f"|---|---|---|---|---|---|---|")
    names = {"gyro": "bias error, norm of estimate - truth", "accel": "norm(a) - 1 g on held-out still poses, rms",
             "mag": "spread of the calibrated field magnitude on a held-out take, std/mean",
             "clock": "drift error", "neutral": "rest orientation error vs truth"}
    for step, (target, unit) in TARGETS.items():
        res = np.array([r["residual"] for r in rows if r["step"] == step])
        if res.size == 0:
            continue
        met = int(sum(r["ok"] for r in rows if r["step"] == step))
        print(f"| {step} | {names[step]} | {res.size} | {np.median(res):.4g} {unit} | {res.max():.4g} {unit} | "
              f"<= {target:g} {unit} | {met}/{res.size} |")
    acc = [r for r in rows if r["step"] == "accel"]
    if acc:
        fit = np.array([r["estimate"]["fit_residual_mg"] for r in acc])
        sphere = np.array([r["all_orientations_rms_mg"] for r in acc])
        vec = np.array([r["vector_rms_mg"] for r in acc if r["vector_rms_mg"] is not None])
        rot = np.array([r["vector_rms_without_rotation_mg"] for r in acc
                        if r["vector_rms_without_rotation_mg"] is not None])
        methods = sorted({r["method"] for r in acc})
        print("\naccelerometer, more views (mg, median / worst over IMUs):")
        print(f"  fit residual on the six poses          {np.median(fit):.3f} / {fit.max():.3f}")
        print(f"  fit methods used                       {', '.join(methods)}")
        print(f"  norm(a) - 1 g over all orientations    {np.median(sphere):.3f} / {sphere.max():.3f}"
              "  (rms over the sphere, from the truth's error model)")
        if vec.size:
            print(f"  vector error vs true specific force    {np.median(vec):.3f} / {vec.max():.3f}"
                  "  (includes the rotation a magnitude fit cannot see; the neutral pose absorbs it)")
        if rot.size:
            print(f"  the same without that rotation         {np.median(rot):.3f} / {rot.max():.3f}")
        scale = np.array([r["gyro_gain_error_pct"] for r in acc])
        print(f"\ngyro gain left after the scale fitted from the six-pose turns: {np.median(scale):.3f} / "
              f"{scale.max():.3f} % (median / worst; against the chips' true matrices, less a rotation), "
              f"fitted on {sum(r['gyro_scale_fitted'] for r in acc)} of {len(acc)} IMUs")
    neutral = [r for r in rows if r["step"] == "neutral"]
    if neutral:
        arm = np.array([r["lever_arm_error_mm"] for r in neutral])
        gain = np.array([r["gyro_gain_error_pct"] for r in neutral])
        print("\nneutral step, more views (median / worst over face IMUs):")
        print(f"  lever arm error vs truth               {np.median(arm):.2f} / {arm.max():.2f} mm")
        print(f"  face gyro vs reference, gain left      {np.median(gain):.3f} / {gain.max():.3f} % of the rate"
              "  (from the chips' true matrices)")
    mag = [r for r in rows if r["step"] == "mag"]
    if mag:
        raw = np.array([r["raw_spread_pct"] for r in mag])
        hard = np.array([r["hard_iron_error_uT"] for r in mag])
        print(f"\nmagnetometer: raw |B| spread {np.median(raw):.2f} % (median), hard-iron error "
              f"{np.median(hard):.3f} / {hard.max():.3f} uT (median / worst)")


if __name__ == "__main__":
    main()
