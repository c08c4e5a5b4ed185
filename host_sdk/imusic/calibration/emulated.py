"""Every calibration step on an emulated rig, against the simulator's truth.

``emulated_calibration(layout, seed)`` records, with ``imusic.sim.scenarios.record_scenario`` (the
real firmware on register-level emulated chips), the takes each step needs from one simulated rig,
runs the steps exactly as ``imusic calibrate --from REC.imu`` does, and compares every estimate
with the rig's truth (truth.json / truth.npz of the takes):

| step    | fitted on                 | evaluated on (held out where it can be)                        |
|---------|---------------------------|----------------------------------------------------------------|
| gyro    | table_rest                | |bias - true bias at the capture's temperature|, deg/s          |
| accel   | six_pose                  | another six_pose take and the table_rest take: rms of         |
|         |                           | |calibrated still mean| - 1 g, mg (also the vector error vs the |
|         |                           | true specific force, the rms over all orientations, and the    |
|         |                           | gyro gain left after the scale fitted from the turns, %)       |
| mag     | mag_rotation              | another mag_rotation take: 100 std/mean of |calibrated field|  |
| clock   | neutral_head_motion       | |fitted drift - the node clock's drift|, ppm                   |
| neutral | neutral_head_motion       | angle between the estimated and the true rest orientation of    |
|         |                           | each face site relative to the head reference, deg; beside it, |
|         |                           | the gyro gain left between site and reference (% of the rate)  |

This module is the one place in ``imusic.calibration`` that imports the simulator (a test and
benchmark harness above both; the library steps never need it).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imusic.calibration.estimators import (
    DEG, STANDARD_GRAVITY, quat_to_matrix, static_segments,
)
from imusic.calibration.model import Calibration
from imusic.calibration.steps import STEPS, Capture, _thresholds, capture_recording, run_step

__all__ = ["TARGETS", "emulated_calibration", "format_table"]

# (target, unit): the targets; clock and neutral have none there: stated bounds (docs)
TARGETS: dict[str, tuple[float, str]] = {
    "gyro": (0.05, "deg/s"),
    "accel": (2.0, "mg"),
    "mag": (2.0, "%"),
    "clock": (10.0, "ppm"),
    "neutral": (2.0, "deg"),
}
# scenario per step, and the held-out take used to evaluate it (None: evaluated on the fit's data)
SCENARIO = {"gyro": "table_rest", "accel": "six_pose", "mag": "mag_rotation", "clock": "neutral_head_motion",
            "neutral": "neutral_head_motion"}
DURATION_S = {"table_rest": 12.0, "six_pose": 30.0, "mag_rotation": 30.0, "neutral_head_motion": 40.0}


class _Take:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.truth: dict[str, Any] = json.loads((path / "truth.json").read_text())
        self._npz: dict[str, np.ndarray] | None = None
        self._capture: Capture | None = None

    @property
    def npz(self) -> dict[str, np.ndarray]:
        if self._npz is None:
            with np.load(self.path / "truth.npz") as z:
                self._npz = {k: z[k] for k in z.files}
        return self._npz

    @property
    def capture(self) -> Capture:
        if self._capture is None:
            self._capture = capture_recording(self.path / "rec.imu")
        return self._capture

    def errors(self, site: str) -> dict[str, Any]:
        return self.truth["imus"][site]["errors"]

    def temp_c(self, site: str) -> float:
        return float(self.truth["imus"][site]["temp_c"]["mean"])

    def true_bias(self, site: str, sensor: str) -> np.ndarray:
        """The simulator's bias of ``sensor`` ("gyro" rad/s or "accel" m/s^2) at the take's mean
        temperature."""
        e = self.errors(site)
        unit = "rads" if sensor == "gyro" else "mps2"
        return np.asarray(e[f"{sensor}_bias_{unit}"]) + (self.temp_c(site) - float(e["reference_temp_c"])) * np.asarray(
            e[f"{sensor}_bias_tc_{unit}_per_c"])

    def column(self, site: str) -> int:
        return list(str(s) for s in self.npz["sites"]).index(site)


def _record(layout: Any, scenario: str, seed: int, take_seed: int, root: Path) -> _Take:
    from imusic.sim.scenarios import record_scenario

    out = root / f"{scenario}_take{take_seed}"
    if not (out / "truth.json").exists() or not (out / "rec.imu").exists():
        record_scenario(layout, scenario, seed=seed, duration_s=DURATION_S.get(scenario), out_dir=out,
                        take_seed=take_seed)
    return _Take(out)


def _row(step: str, who: str, site: str | None, estimate: Any, truth: Any, residual: float,
         **extra: Any) -> dict[str, Any]:
    target, unit = TARGETS[step]
    ok = bool(math.isfinite(residual) and residual <= target)
    row: dict[str, Any] = {"step": step, "imu": who, "site": site, "estimate": estimate, "truth": truth,
                           "residual": residual, "unit": unit, "target": target, "ok": ok}
    row.update(extra)
    return row


def _r(x: Any, nd: int = 5) -> Any:
    return np.round(np.asarray(x, dtype=np.float64), nd).tolist()


# ---- per-step truth comparisons


def _gyro(take: _Take, cal: Calibration, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        site = row["site"]
        temp = take.temp_c(site)
        truth = take.true_bias(site, "gyro")
        est = np.asarray(row["estimate"]["bias_dps"]) * DEG
        out.append(_row("gyro", row["imu"], site, {"bias_dps": _r(est / DEG), "temp_c": row["estimate"]["temp_c"]},
                        {"bias_dps": _r(truth / DEG), "temp_c": round(temp, 3)},
                        float(np.linalg.norm(est - truth) / DEG)))
    return out


def _still_means(take: _Take, cal: Calibration) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Per site: (calibrated still mean, true specific force mean) of every still segment of a take."""
    cap = take.capture
    block = cal.apply_block(cap.block)
    out: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    t = cap.block.t_host_s
    for i, ident, hello, slot in cap.imus():
        th = _thresholds(hello, slot)
        raw_a, raw_g = cap.block.accel_mps2[:, i], cap.block.gyro_rads[:, i]
        col = take.column(ident.site)
        st = take.npz["sample_t_s"][:, col]
        true_a = take.npz["true_accel_mps2"][:, col]
        for seg in static_segments(raw_a, raw_g, cap.rate_hz, th):
            lo, hi = t[seg.start], t[seg.stop - 1]
            sel = (st >= lo) & (st <= hi)
            if not sel.any():
                continue
            out.setdefault(ident.site, []).append((block.accel_mps2[seg.start:seg.stop, i].mean(axis=0),
                                                   true_a[sel].mean(axis=0)))
    return out


def _accel(fit_take: _Take, held_out: Sequence[_Take], cal: Calibration,
           rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    means: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for take in held_out:
        for site, pairs in _still_means(take, cal).items():
            means.setdefault(site, []).extend(pairs)
    rng = np.random.default_rng(0)
    sphere = rng.normal(size=(2000, 3))
    sphere /= np.linalg.norm(sphere, axis=1, keepdims=True)
    out = []
    for row in rows:
        site = row["site"]
        e = fit_take.errors(site)
        bias = fit_take.true_bias(site, "accel")
        m_true = np.asarray(e["accel_matrix"])
        key = f"{cal_uid(cal, row)}/{row['slot']}"
        entry = cal.imus[key]["accel"]
        b_est, c_est = np.asarray(entry["offset_mps2"]), np.asarray(entry["matrix"])
        pairs = means.get(site, [])
        mag_err = np.array([np.linalg.norm(c) - STANDARD_GRAVITY for c, _ in pairs])
        vec_err = np.array([np.linalg.norm(c - tr) for c, tr in pairs])
        residual = float(np.sqrt(np.mean(mag_err ** 2)) / STANDARD_GRAVITY * 1e3) if pairs else math.nan
        rotated_rms = None
        if len(pairs) >= 3:
            # without the rotation a magnitude fit cannot see (it joins the mounting misalignment)
            cm, tm = np.array([c for c, _ in pairs]), np.array([tr for _, tr in pairs])
            u, _, vt = np.linalg.svd(tm.T @ cm)
            rot = u @ np.diag([1.0, 1.0, float(np.sign(np.linalg.det(u @ vt)))]) @ vt
            left = np.linalg.norm(cm @ rot.T - tm, axis=1)
            rotated_rms = round(float(np.sqrt(np.mean(left ** 2)) / STANDARD_GRAVITY * 1e3), 3)
        # every orientation, from the truth: |C (M g u + b - b_est)| - g over the sphere
        cal_sphere = (sphere * STANDARD_GRAVITY @ m_true.T + bias - b_est) @ c_est.T
        sphere_rms = float(np.sqrt(np.mean((np.linalg.norm(cal_sphere, axis=1) - STANDARD_GRAVITY) ** 2))
                           / STANDARD_GRAVITY * 1e3)
        out.append(_row("accel", row["imu"], site,
                        {"offset_mg": _r(b_est / STANDARD_GRAVITY * 1e3, 3), "matrix": _r(c_est),
                         "fit_residual_mg": round(row["estimate"]["residual_mg"], 4), "poses": row["estimate"]["poses"]},
                        {"bias_mg": _r(bias / STANDARD_GRAVITY * 1e3, 3), "matrix_inverse": _r(np.linalg.inv(m_true))},
                        residual, held_out_poses=len(pairs),
                        vector_rms_mg=(round(float(np.sqrt(np.mean(vec_err ** 2)) / STANDARD_GRAVITY * 1e3), 3)
                                       if pairs else None),
                        vector_rms_without_rotation_mg=rotated_rms, all_orientations_rms_mg=round(sphere_rms, 3),
                        method=row["estimate"]["method"],
                        gyro_scale_fitted=row["estimate"].get("gyro_scale") is not None,
                        gyro_gain_error_pct=round(100.0 * _gyro_scale_error(cal, fit_take, site), 3)))
    return out


def cal_uid(cal: Calibration, row: dict[str, Any]) -> str:
    for uid, node in cal.nodes.items():
        if node.get("node_id") == row["node_id"]:
            return uid
    raise KeyError(row["node_id"])


def _mag(fit_take: _Take, held_out: _Take, cal: Calibration, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cap = held_out.capture
    block = cal.apply_block(cap.block)
    raw = cap.block
    out = []
    for row in rows:
        site = row["site"]
        i = cap.block.sites.index(site)
        m = block.mag_uT[:, i]
        m = m[np.isfinite(m).all(axis=1)]
        norms = np.linalg.norm(m, axis=1)
        spread = float(100 * norms.std() / norms.mean())
        r = raw.mag_uT[:, i]
        r = r[np.isfinite(r).all(axis=1)]
        rn = np.linalg.norm(r, axis=1)
        e = fit_take.errors(site)
        est = row["estimate"]
        out.append(_row("mag", row["imu"], site,
                        {"hard_iron_uT": _r(est["offset_uT"], 3), "field_uT": round(est["field_uT"], 3),
                         "coverage": est["coverage"]},
                        {"hard_iron_uT": _r(e["mag_hard_iron_uT"], 3), "soft_iron": _r(e["mag_soft_iron"])},
                        spread, raw_spread_pct=round(float(100 * rn.std() / rn.mean()), 3),
                        hard_iron_error_uT=round(float(np.linalg.norm(np.asarray(est["offset_uT"])
                                                                      - np.asarray(e["mag_hard_iron_uT"]))), 4)))
    return out


def _clock(take: _Take, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        truth = float(take.truth["nodes"][str(row["node_id"])]["drift_ppm"])
        est = float(row["estimate"]["drift_ppm"])
        out.append(_row("clock", f"node {row['node_id']}", None, {"drift_ppm": round(est, 4)},
                        {"drift_ppm": truth}, abs(est - truth)))
    return out


def _relative_gyro_error(take: _Take, cal: Calibration, site: str, head_reference: str, R_true: np.ndarray,
                         R_est: np.ndarray) -> float:
    """What the corrected site gyro still gets wrong of the head's rate, as a fraction: the largest
    singular value of M G_site R_true^T G_ref^-1 R_est - I (M the stored gain correction, G the
    chips' true scale and cross-axis matrices, R the true and the stored rest orientations). Zero
    when the site reads exactly the reference's rates turned by the stored rest pose."""
    m = _gyro_correction(cal, site)
    g_site = np.asarray(take.errors(site)["gyro_matrix"], dtype=np.float64)
    g_ref = _gyro_correction(cal, head_reference) @ np.asarray(take.errors(head_reference)["gyro_matrix"])
    left = m @ g_site @ R_true.T @ np.linalg.inv(g_ref) @ R_est - np.eye(3)
    return float(np.linalg.norm(left, ord=2))


def _gyro_correction(cal: Calibration, site: str) -> np.ndarray:
    """The file's whole gyro matrix for ``site`` (``Calibration.gyro_matrix``)."""
    return cal.gyro_matrix(next(key for key, e in cal.imus.items() if e["identity"]["site"] == site))


def _gyro_scale_error(cal: Calibration, take: _Take, site: str) -> float:
    """Gain left in the scale-corrected gyro against the chip's true matrix, after taking out a
    rotation (the correction also turns the gyro onto the accelerometer's axes), as a fraction."""
    from scipy.linalg import polar

    _, sym = polar(_gyro_correction(cal, site) @ np.asarray(take.errors(site)["gyro_matrix"], dtype=np.float64))
    return float(np.linalg.norm(sym - np.eye(3), ord=2))


def _neutral(take: _Take, rows: list[dict[str, Any]], head_reference: str,
             cal: Calibration) -> list[dict[str, Any]]:
    from scipy.spatial.transform import Rotation

    from imusic.placement import load_layout
    from imusic.sim.face import FaceModel, FaceShape, nominal_mount_frame

    q = take.npz["q_world_sensor"]  # (N, n, 4) w x y z
    ref = take.column(head_reference)
    # true lever arms: each IMU's rest position on this subject's face (catalogue position plus its
    # placement error, scaled by the face) from the reference's, in the reference's true axes
    layout = load_layout(str(take.truth["layout"]))
    face = FaceModel(FaceShape(**take.truth["subject"]["face_shape"]))

    def rest_mm(site: str) -> np.ndarray:
        canonical = np.asarray(layout.site(site).position_mm, dtype=np.float64)
        return face.rest_position_mm(canonical + np.asarray(take.errors(site)["placement_offset_mm"]))

    ref_site = layout.site(head_reference)  # on bone: its mounting is its whole orientation in H
    R_H_ref_nominal = nominal_mount_frame(np.asarray(ref_site.normal, dtype=np.float64)[None])[0]
    R_H_ref = R_H_ref_nominal @ np.asarray(take.errors(head_reference)["mount_R_nominal_sensor"], dtype=np.float64)
    out = []
    for row in rows:
        col = take.column(row["site"])
        # the true rest pose relative to the reference: a neutral face keeps it; take the median
        # over the capture's first second (the face does not move, the head may)
        k = slice(0, max(1, int(take.truth["rate_hz"])))
        r_ref = quat_to_matrix_batch(q[k, ref])
        r_site = quat_to_matrix_batch(q[k, col])
        rel = np.einsum("kji,kjl->kil", r_ref, r_site)  # R_ref^T R_site
        truth = Rotation.from_matrix(rel).mean().as_matrix()
        est = quat_to_matrix(np.asarray(row["estimate"]["q_ref_sensor"]))
        err = float(np.degrees(np.linalg.norm(Rotation.from_matrix(truth.T @ est).as_rotvec())))
        tq = Rotation.from_matrix(truth).as_quat()
        arm_mm = R_H_ref.T @ (rest_mm(row["site"]) - rest_mm(head_reference))
        arm_est = np.asarray(row["estimate"]["lever_arm_mm"])
        # what the features assume without the step: catalogue positions, nominal mounting
        nominal_mm = R_H_ref_nominal.T @ (np.asarray(layout.site(row["site"]).position_mm, dtype=np.float64)
                                          - np.asarray(ref_site.position_mm, dtype=np.float64))
        out.append(_row("neutral", row["imu"], row["site"],
                        {"q_ref_sensor": _r(row["estimate"]["q_ref_sensor"]), "lever_arm_mm": _r(arm_est, 2)},
                        {"q_ref_sensor": _r([tq[3], tq[0], tq[1], tq[2]] if tq[3] >= 0 else
                                            [-tq[3], -tq[0], -tq[1], -tq[2]]), "lever_arm_mm": _r(arm_mm, 2)}, err,
                        head_reference=head_reference,
                        lever_arm_error_mm=round(float(np.linalg.norm(arm_est - arm_mm)), 3),
                        catalogue_lever_arm_error_mm=round(float(np.linalg.norm(nominal_mm - arm_mm)), 3),
                        gyro_gain_error_pct=round(100.0 * _relative_gyro_error(
                            take, cal, row["site"], head_reference, truth, est), 3)))
    return out


def quat_to_matrix_batch(q: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_quat(q[:, [1, 2, 3, 0]]).as_matrix()


def emulated_calibration(*, layout: str = "imusic", seed: int = 1, steps: Sequence[str] | None = None,
                         out_dir: str | Path | None = None, scenario: str | None = None,
                         save_to: str | Path | None = None) -> dict[str, Any]:
    """Run ``steps`` (default: all, in order) on an emulated rig; see the module docstring. Returns
    {"layout", "seed", "results": [rows]}; a refused step raises its ``CalibrationError``.
    ``scenario`` replaces the recording of a single step (a moving subject for the gyro step...)."""
    from imusic.placement import load_layout

    lay = load_layout(layout)
    todo = list(STEPS) if steps is None else [s for s in STEPS if s in steps]
    tmp = tempfile.TemporaryDirectory(prefix="imusic-cal-") if out_dir is None else None
    root = Path(tmp.name if tmp is not None else str(out_dir))
    root.mkdir(parents=True, exist_ok=True)
    cal = Calibration()
    results: list[dict[str, Any]] = []
    try:
        for step in todo:
            sc = scenario if scenario is not None else SCENARIO[step]
            take = _record(lay, sc, seed, 0, root)
            rows = run_step(step, take.capture, cal, head_reference=lay.head_reference)
            if step == "gyro":
                results += _gyro(take, cal, rows)
            elif step == "accel":
                held = [_record(lay, "six_pose", seed, 1, root), _record(lay, "table_rest", seed, 0, root)]
                results += _accel(take, held, cal, rows)
            elif step == "mag":
                results += _mag(take, _record(lay, "mag_rotation", seed, 1, root), cal, rows)
            elif step == "clock":
                results += _clock(take, rows)
            else:
                results += _neutral(take, rows, lay.head_reference, cal)
        if save_to is not None:
            cal.save(save_to)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return {"layout": lay.name, "seed": seed, "steps": todo, "results": results}


def _headline(values: dict[str, Any]) -> str:
    """The first figure of an estimate or truth dict, short: ``bias_dps [-0.369 0.969 0.595]``."""
    if not values:
        return "-"
    key, value = next(iter(values.items()))
    if isinstance(value, (list, tuple)) and value and not isinstance(value[0], (list, tuple)):
        text = "[" + " ".join(f"{float(v):.3f}" for v in value) + "]"
    elif isinstance(value, (int, float)):
        text = f"{float(value):.3f}"
    else:
        text = "(matrix)"
    return f"{key} {text}"


def format_table(report: dict[str, Any]) -> list[str]:
    """The report as text: per step and IMU the estimate beside the simulator's truth and the residual."""
    lines = [f"emulated calibration: layout {report['layout']}, seed {report['seed']}",
             f"{'step':8} {'imu':38} {'residual':>9} {'target':>7} {'unit':6} {'ok':3}  estimate | truth"]
    for r in report["results"]:
        lines.append(f"{r['step']:8} {str(r['imu'])[:38]:38} {r['residual']:9.4f} {r['target']:7g} {r['unit']:6} "
                     f"{'yes' if r['ok'] else 'NO':3}  {_headline(r.get('estimate') or {})} | "
                     f"{_headline(r.get('truth') or {})}")
    return lines
