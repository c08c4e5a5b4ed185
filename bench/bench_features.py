"""Head-motion removal on the simulator (known truth): correlation with head motion, a neutral face
through head motion against rest, and the cost of the feature function (no thresholds: tables).

Takes are recorded through the real firmware by ``imusic.sim.scenarios.record_scenario`` on the
imusic layout (one rig, ``--seed``), replayed into frames with ``replay_blocks`` and turned into
features by ``features_of_block`` (the runtime code path). Definitions of the statistics:
docs/features.md, "Targets and measured figures".

(a) correlation with head motion: for every feature channel, the largest |Pearson r| with the nine
    head-motion channels of the truth (head angular rate in H, head linear acceleration in H,
    gravity direction in H); max and 95th percentile over channels. "raw": the same for the face
    IMUs' own gyro and accelerometer channels (what the removal starts from).
(b) neutral face: per feature group, RMS over channels and valid frames of ``neutral_head_motion``
    against ``neutral`` (head still) on the same rig.
(c) cost: microseconds of ``FeatureExtractor.update`` per frame for the imusic layout.
(d) error sources: (b)'s ratio with kinds of sensor error zeroed in the rig (simulator samples
    straight into frames, no firmware), to find what the residual comes from.

Rows "calibrated" use the rig's calibration from ``imusic.calibration.emulated`` (gyro, accel,
neutral steps on emulated calibration takes of the same rig); "uncalibrated" use none (the
extractor captures its own rest and gyro bias from the take's first still second).

(a2) the statistic of (a) pooled over many independent takes of each scenario on the rig, with its
    chance level (features against other takes' head motion) and perfect removal beside it: one
    60 s take cannot show |r| <= 0.1 (its chance level is 0.3-0.5), sixteen can (about 0.05).

Run: ``.venv/bin/python bench/bench_features.py [--seconds 60] [--seed 3] [--no-calibration]
[--pool-takes 16] [--pool-seconds 60] [--work-dir DIR]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from imusic.align import FrameBlock
from imusic.features import GROUPS, FeatureSettings, features_of_block
from imusic.placement import Layout, load_layout
from imusic.replay import replay_blocks

RATE_HZ = 60.0
HEAD_CHANNELS = ("head_rate_x", "head_rate_y", "head_rate_z", "head_acc_x", "head_acc_y", "head_acc_z",
                 "gravity_x", "gravity_y", "gravity_z")


def record(scenario: str, seed: int, seconds: float, root: Path, take_seed: int = 0) -> Path:
    from imusic.sim.scenarios import record_scenario

    out = root / f"{scenario}_{seed}_{take_seed}"
    if (out / "truth.npz").exists():  # recorded already in this run (deterministic for the seeds)
        return out
    return record_scenario("imusic", scenario, seed=seed, duration_s=seconds, take_seed=take_seed, out_dir=out)


def load_block(take: Path) -> FrameBlock:
    """Every frame of a take's recording as one block."""
    blocks = replay_blocks(take / "rec.imu", RATE_HZ).blocks
    first = blocks[0]
    return FrameBlock(np.concatenate([b.t_host_s for b in blocks]),
                      np.concatenate([b.accel_mps2 for b in blocks]),
                      np.concatenate([b.gyro_rads for b in blocks]),
                      np.concatenate([b.mag_uT for b in blocks]),
                      np.concatenate([b.valid for b in blocks]), first.sites, first.node_ids)


def head_motion(take: Path, t_frames_s: np.ndarray) -> np.ndarray:
    """(T, 9) head-motion channels of the truth on the frame times (see HEAD_CHANNELS)."""
    truth = np.load(take / "truth.npz")
    t = truth["t_s"]
    R = truth["R_world_head"]
    p = truth["p_world_m"]
    dt = float(np.median(np.diff(t)))
    dR = np.gradient(R, dt, axis=0)
    W = np.einsum("tji,tjk->tik", R, dR)  # R^T dR/dt = [omega]x, omega in H
    omega_H = np.stack([W[:, 2, 1] - W[:, 1, 2], W[:, 0, 2] - W[:, 2, 0], W[:, 1, 0] - W[:, 0, 1]], -1) * 0.5
    acc_H = np.einsum("tji,tj->ti", R, np.gradient(np.gradient(p, dt, axis=0), dt, axis=0))
    grav_H = R[:, 2, :]  # world up in H
    channels = np.concatenate([omega_H, acc_H, grav_H], axis=1)
    return np.stack([np.interp(t_frames_s, t, channels[:, j]) for j in range(channels.shape[1])], axis=1)


def max_abs_corr(x: np.ndarray, ok: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per column of x (T, m) over its valid rows ok (T, m): max |Pearson r| with the columns of y."""
    out = np.zeros(x.shape[1])
    for j in range(x.shape[1]):
        rows = ok[:, j] & np.isfinite(x[:, j])
        if rows.sum() < 10:
            continue
        a = x[rows, j] - x[rows, j].mean()
        b = y[rows] - y[rows].mean(axis=0)
        den = np.sqrt((a @ a) * (b * b).sum(axis=0))
        r = np.where(den > 0, (a @ b) / np.where(den > 0, den, 1.0), 0.0)
        out[j] = float(np.abs(r).max())
    return out


def chance_corr(x: np.ndarray, ok: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``max_abs_corr`` with the head channels circularly shifted by 1/4, 1/2 and 3/4 of the take
    (mean over the three): what the statistic gives for signals unrelated to this take's head
    motion but with the same spectra, i.e. its chance level at this take length."""
    n = len(y)
    return np.mean([max_abs_corr(x, ok, np.roll(y, int(n * f), axis=0)) for f in (0.25, 0.5, 0.75)], axis=0)


def pooled_corr(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """(m, 9) Pearson r of every column of x with every head channel, pooled over takes: each
    take's valid rows are centred on their own means (an offset between takes is not a correlation)
    and the sums of products are added. ``parts``: per take (x (T, m), ok (T, m), head), head
    (T, 9) shared by all columns or (T, m, 9) per column (e.g. at each site's own sample times)."""
    m = parts[0][0].shape[1]
    sxy = np.zeros((m, 9))
    sxx = np.zeros((m, 1))
    syy = np.zeros((m, 9))
    for x, ok, head in parts:
        n = min(len(x), len(head))
        for j in range(m):
            h = head[:n] if head.ndim == 2 else head[:n, j]
            rows = ok[:n, j] & np.isfinite(x[:n, j]) & np.isfinite(h).all(axis=1)
            if rows.sum() < 10:
                continue
            a = x[:n][rows, j] - x[:n][rows, j].mean()
            b = h[rows] - h[rows].mean(axis=0)
            sxy[j] += a @ b
            sxx[j] += a @ a
            syy[j] += (b * b).sum(axis=0)
    den = np.sqrt(sxx * syy)
    return np.where(den > 0, sxy / np.where(den > 0, den, 1.0), 0.0)


def pooled_chance(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """Per column, the pooled max |r| with the head motion of *other* takes of the scenario (take i's
    features against take i+s's head, s = 1, 2, 3; mean over s): independent head motion with the
    same statistics, the statistic's chance level for this amount of data. (Unlike a circular shift
    within a take it stays a null for periodic motion such as walking, where a shifted gait is still
    in step with the features.)"""
    k = len(parts)
    shifts = [s for s in (1, 2, 3) if s < k]
    return np.mean([np.abs(pooled_corr([(parts[i][0], parts[i][1], parts[(i + s) % k][2]) for i in range(k)])).max(axis=1)
                    for s in shifts], axis=0)


def variance_explained(x: np.ndarray, ok: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per column of x: R^2 of a least-squares fit on all head channels (and a constant): the
    fraction of the channel's variance that head motion explains linearly."""
    out = np.zeros(x.shape[1])
    for j in range(x.shape[1]):
        rows = ok[:, j] & np.isfinite(x[:, j]) & np.isfinite(y).all(axis=1)
        if rows.sum() < 10:
            continue
        a = np.column_stack([y[rows], np.ones(int(rows.sum()))])
        xj = x[rows, j]
        coef, *_ = np.linalg.lstsq(a, xj, rcond=None)
        var = float(np.var(xj))
        out[j] = 1.0 - float(np.var(xj - a @ coef)) / var if var > 0 else 0.0
    return out


def true_relative_motion(take: Path, layout: Layout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Perfect head-motion removal from the simulator's truth: per face site, the rotation vector
    of its orientation relative to the head reference IMU (from the take's mean) and its angular
    rate relative to it, in its own axes, at its samples (the reference's true orientation and rate
    interpolated to those times); with the head channels at the same times.
    (T, n_face * 6) values, valid mask, and (T, n_face, 9) head channels."""
    from scipy.spatial.transform import Rotation, Slerp

    truth = np.load(take / "truth.npz")
    sites = [str(s) for s in truth["sites"]]
    r = sites.index(layout.head_reference)
    t_r = truth["sample_t_s"][:, r]
    q_r = Rotation.from_quat(truth["q_world_sensor"][:, r][:, [1, 2, 3, 0]])
    slerp = Slerp(t_r, q_r)
    cols, heads = [], []
    for name in layout.face_sites:
        i = sites.index(name)
        t = truth["sample_t_s"][:, i]
        keep = (t >= max(t_r[0], truth["t_s"][0])) & (t <= min(t_r[-1], truth["t_s"][-1]))
        tk = t[keep]
        head = np.full((len(t), 9), np.nan)
        head[keep] = head_motion(take, tk)
        w_r = np.stack([np.interp(tk, t_r, truth["true_gyro_rads"][:, r, a]) for a in range(3)], axis=1)
        rel = slerp(tk).inv() * Rotation.from_quat(truth["q_world_sensor"][keep, i][:, [1, 2, 3, 0]])
        x = np.full((len(t), 6), np.nan)
        x[keep, 0:3] = (rel.mean().inv() * rel).as_rotvec()
        x[keep, 3:6] = truth["true_gyro_rads"][keep, i] - rel.inv().apply(w_r)  # the Earth's rate cancels too
        cols.append(x)
        heads.append(head)
    n = min(len(c) for c in cols)
    x = np.concatenate([c[:n] for c in cols], axis=1)
    return x, np.isfinite(x), np.stack([h[:n] for h in heads], axis=1)


def feature_matrix(feats: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, n * 9) features and their valid mask, each channel on its own frame's time: a row's
    lin_acc is that of ``lin_acc_delay_frames`` frames earlier (imusic.features), so those columns
    are moved back by as many rows (the last rows have none) before they meet the head's motion."""
    t, n, k = feats.shape
    x = feats.reshape(t, n * k).astype(np.float64)
    ok = np.repeat(valid, k, axis=1)
    d = FeatureSettings().lin_acc_delay_frames
    if d:
        cols = [s * k + i for s in range(n) for i in range(GROUPS["lin_acc"].start, GROUPS["lin_acc"].stop)]
        x[:, cols] = np.concatenate([x[d:, cols], np.full((d, len(cols)), np.nan)])
        ok[:, cols] = np.concatenate([ok[d:, cols], np.zeros((d, len(cols)), dtype=bool)])
    return x, ok


def raw_matrix(block: FrameBlock, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """Face IMUs' gyro and accelerometer channels (T, n_face * 6), before any removal."""
    idx = [block.sites.index(s) for s in layout.face_sites]
    x = np.concatenate([block.gyro_rads[:, idx], block.accel_mps2[:, idx]], axis=2)
    return x.reshape(len(block), -1), np.repeat(block.valid[:, idx], 6, axis=1)


def correlation_stats(take: Path, layout: Layout, calibration: Any = None) -> dict[str, float]:
    block = load_block(take)
    feats, valid = features_of_block(block, layout, calibration)
    head = head_motion(take, block.t_host_s)
    x, ok = feature_matrix(feats, valid)
    after = max_abs_corr(x, ok, head)
    before = max_abs_corr(*raw_matrix(block, layout), head)
    chance = chance_corr(x, ok, head)
    r2 = variance_explained(x, ok, head)
    return {"after_max": float(after.max()), "after_p95": float(np.percentile(after, 95)),
            "before_max": float(before.max()), "before_p95": float(np.percentile(before, 95)),
            "chance_max": float(chance.max()), "chance_p95": float(np.percentile(chance, 95)),
            "r2_max": float(r2.max()), "r2_p95": float(np.percentile(r2, 95)),
            "above_chance": float(np.max(after - chance))}


def truth_floor(take: Path, layout: Layout) -> dict[str, float]:
    """``correlation_stats``'s statistic for perfect removal (rel_rot and rel_rate from the truth;
    per site the head channels at that site's sample times)."""
    x, ok, heads = true_relative_motion(take, layout)
    r = np.concatenate([max_abs_corr(x[:, 6 * k:6 * k + 6], ok[:, 6 * k:6 * k + 6], heads[:, k])
                        for k in range(heads.shape[1])])
    return {"max": float(r.max()), "p95": float(np.percentile(r, 95))}


def group_rms(take: Path, layout: Layout, calibration: Any = None) -> dict[str, float]:
    block = load_block(take)
    feats, valid = features_of_block(block, layout, calibration)
    f = feats[valid].astype(np.float64)  # (frames x sites, 9)
    return {g: float(np.sqrt(np.mean(np.square(f[:, sl])))) for g, sl in GROUPS.items()}


def cost_us_per_frame(take: Path, layout: Layout, calibration: Any = None) -> float:
    block = load_block(take)
    frames = block.frames()
    from imusic.features import FeatureExtractor

    ext = FeatureExtractor(layout, calibration, RATE_HZ)
    t0 = time.perf_counter()
    for frame in frames:
        ext.update(frame)
    return (time.perf_counter() - t0) / len(frames) * 1e6


def rig_calibration(seed: int, root: Path) -> Any:
    from imusic.calibration import Calibration
    from imusic.calibration.emulated import emulated_calibration

    path = root / f"cal_{seed}.json"
    emulated_calibration(layout="imusic", seed=seed, steps=("gyro", "accel", "neutral"), out_dir=root / f"cal_{seed}",
                         save_to=path)
    return Calibration.load(path)


def pooled(seed: int, seconds: float, n_takes: int, root: Path, calibration: Any) -> None:
    """(a2): the correlation statistic pooled over ``n_takes`` independent takes per scenario (one
    rig: a leak's coefficients belong to the rig, so they add up over its takes instead of
    averaging out between rigs), beside its chance level from other takes' head motion and the
    statistic of perfect removal (truth), pooled the same way."""
    from imusic.features import FEATURE_NAMES

    layout = load_layout("imusic")
    print(f"\n(a2) pooled over {n_takes} takes x {seconds:.0f} s per scenario (take seeds 0..{n_takes - 1}), calibrated;")
    print("    chance: features against other takes' head motion; truth: perfect removal (rel_rot, rel_rate)")
    print(f"{'take':22} {'feat max':>9} {'feat p95':>9} {'chance max':>11} {'chance p95':>11} {'truth max':>10} "
          f"{'truth p95':>10}   max per group (rel_rot rel_rate lin_acc)")
    for sc in ("expressions", "expressions_walk", "neutral_head_motion"):
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        truth_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for k in range(n_takes):
            take = record(sc, seed, seconds, root, take_seed=k)
            block = load_block(take)
            feats, valid = features_of_block(block, layout, calibration)
            x, ok = feature_matrix(feats, valid)
            parts.append((x, ok, head_motion(take, block.t_host_s)))
            if sc != "neutral_head_motion":  # a neutral face has no facial motion to correlate
                tx, tok, heads = true_relative_motion(take, layout)
                truth_parts.append((tx, tok, np.repeat(heads, 6, axis=1)))
        r = pooled_corr(parts)
        after = np.abs(r).max(axis=1)
        chance = pooled_chance(parts)
        if truth_parts:
            tr = np.abs(pooled_corr(truth_parts)).max(axis=1)
            truth = f"{tr.max():10.3f} {np.percentile(tr, 95):10.3f}"
        else:
            truth = f"{'-':>10} {'-':>10}"
        groups = " ".join(f"{after[[k * 9 + i for k in range(len(layout.face_sites)) for i in range(sl.start, sl.stop)]].max():.3f}"
                          for sl in GROUPS.values())
        print(f"{sc:22} {after.max():9.3f} {np.percentile(after, 95):9.3f} {chance.max():11.3f} "
              f"{np.percentile(chance, 95):11.3f} {truth}   {groups}")
        for j in np.argsort(-after)[:3]:
            h = int(np.abs(r[j]).argmax())
            print(f"    {layout.face_sites[j // 9]:32} {FEATURE_NAMES[j % 9]:16} r {r[j, h]:+.3f} with "
                  f"{HEAD_CHANNELS[h]:12} (chance {chance[j]:.3f})")


def ablation(seed: int, seconds: float) -> None:
    """Which sensor errors the residual comes from: the rig's ImuErrors with some kinds zeroed,
    simulated without the firmware (the simulator's samples with errors, frames at the node ticks)."""
    import dataclasses

    from imusic.sim.rig import Rig
    from imusic.sim.scenarios import Subject, simulate_take

    layout = load_layout("imusic")
    base = Rig.random(layout, seed)
    kinds = {"all errors (uncalibrated)": (),
             "accel bias+matrix removed (~calibrated)": ("accel_bias_mps2", "accel_matrix"),
             "+ gyro scale/cross-axis removed": ("accel_bias_mps2", "accel_matrix", "gyro_matrix"),
             "+ gyro bias, mounting, placement removed": ("accel_bias_mps2", "accel_matrix", "gyro_matrix",
                                                         "gyro_bias_rads", "mount_R_nominal_sensor",
                                                         "placement_offset_mm")}
    print(f"\n(d) error sources (no firmware; {seconds:.0f} s takes): neutral-face RMS, head moving / head still")
    print(f"{'errors left in':44} {'rel_rot':>8} {'rel_rate':>9} {'lin_acc':>8}")
    for label, zero in kinds.items():
        errs = {}
        for site, e in base.errors.items():
            errs[site] = dataclasses.replace(e, **{k: (np.eye(3) if np.ndim(getattr(e, k)) == 2
                                                       else np.zeros_like(getattr(e, k))) for k in zero})
        rig = dataclasses.replace(base, errors=errs)
        rms = {}
        for sc in ("neutral", "neutral_head_motion"):
            st = simulate_take(rig, sc, duration_s=seconds, subject=Subject.random(seed)).stacked()
            acc = st["accel_mps2"]
            block = FrameBlock(st["sample_t_s"].mean(axis=1), acc, st["gyro_rads"], np.full_like(acc, np.nan),
                               np.ones(acc.shape[:2], bool), layout.sites, tuple(i.node_id for i in layout.imus))
            feats, valid = features_of_block(block, layout)
            f = feats[valid].astype(np.float64)
            rms[sc] = {g: float(np.sqrt(np.mean(np.square(f[:, sl])))) for g, sl in GROUPS.items()}
        ratio = {g: rms["neutral_head_motion"][g] / rms["neutral"][g] for g in GROUPS}
        print(f"{label:44} {ratio['rel_rot']:8.2f} {ratio['rel_rate']:9.2f} {ratio['lin_acc']:8.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description="head-motion removal on the simulator")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--no-calibration", action="store_true")
    ap.add_argument("--pool-takes", type=int, default=16,
                    help="takes per scenario pooled in (a2) (0: skip; needs the calibration)")
    ap.add_argument("--pool-seconds", type=float, default=60.0)
    ap.add_argument("--work-dir", type=Path, default=None,
                    help="keep the recorded takes here and reuse them on the next run (deterministic for "
                         "the seeds; default: a temporary directory)")
    args = ap.parse_args()
    layout = load_layout("imusic")
    with tempfile.TemporaryDirectory(prefix="imusic-bench-features-") as tmp:
        root = Path(tmp) if args.work_dir is None else args.work_dir
        root.mkdir(parents=True, exist_ok=True)
        takes = {sc: record(sc, args.seed, args.seconds, root)
                 for sc in ("neutral", "neutral_head_motion", "expressions_walk", "expressions")}
        cals: list[tuple[str, Any]] = [("uncalibrated", None)]
        if not args.no_calibration:
            cals.append(("calibrated", rig_calibration(args.seed, root)))
        print(f"imusic layout ({len(layout.face_sites)} face sites + {layout.head_reference}), rig seed "
              f"{args.seed}, {args.seconds:.0f} s takes through the emulated firmware, {RATE_HZ:.0f} Hz frames\n")
        print("(a) max |Pearson r| of a channel with head motion (rate, linear acceleration, gravity in H);")
        print("    chance: the same with the head channels shifted in time (unrelated, same spectra);")
        print("    R2: fraction of a channel's variance explained by all nine head channels (max, p95)")
        print(f"{'take':22} {'calibration':13} {'raw max':>8} {'raw p95':>8} {'feat max':>9} {'feat p95':>9} "
              f"{'chance max':>11} {'chance p95':>11} {'R2 max':>7} {'R2 p95':>7}")
        for sc in ("expressions_walk", "expressions", "neutral_head_motion"):
            for name, cal in cals:
                s = correlation_stats(takes[sc], layout, cal)
                print(f"{sc:22} {name:13} {s['before_max']:8.3f} {s['before_p95']:8.3f} "
                      f"{s['after_max']:9.3f} {s['after_p95']:9.3f} {s['chance_max']:11.3f} {s['chance_p95']:11.3f} "
                      f"{s['r2_max']:7.3f} {s['r2_p95']:7.3f}")
        print("\n(a') the same statistic for perfect removal: rel_rot and rel_rate from the simulator's truth")
        for sc in ("expressions_walk", "expressions"):  # a neutral face has no signal to correlate
            fl = truth_floor(takes[sc], layout)
            print(f"{sc:22} truth max {fl['max']:.3f} p95 {fl['p95']:.3f}")
        print("\n(b) neutral face: feature RMS per group, head still vs head turning and walking")
        print(f"{'group':9} {'calibration':13} {'rest':>10} {'head motion':>12} {'ratio':>6}  unit")
        units = {"rel_rot": "rad", "rel_rate": "rad/s", "lin_acc": "m/s^2"}
        for name, cal in cals:
            rest = group_rms(takes["neutral"], layout, cal)
            moving = group_rms(takes["neutral_head_motion"], layout, cal)
            for g in GROUPS:
                print(f"{g:9} {name:13} {rest[g]:10.5f} {moving[g]:12.5f} {moving[g] / rest[g]:6.2f}  {units[g]}")
        print("\n(c) cost of FeatureExtractor.update, imusic layout")
        for name, cal in cals:
            us = cost_us_per_frame(takes["expressions"], layout, cal)
            print(f"{name:13} {us:8.0f} us per frame ({len(layout.sites)} IMUs)")
        if args.pool_takes > 1 and not args.no_calibration:
            pool_root = root if args.pool_seconds == args.seconds else root / "pool"
            pooled(args.seed, args.pool_seconds, args.pool_takes, pool_root, cals[-1][1])
    ablation(args.seed, min(args.seconds, 30.0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
