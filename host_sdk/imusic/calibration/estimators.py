"""The calibration estimators on plain arrays (SI units, one IMU at a time unless stated).

Nothing here knows about nodes, files or sessions: each function takes samples of one IMU and
returns a result dataclass or raises ``CalibrationError`` naming the step and the IMU (``who``).

Stillness is judged against the chip's own noise: the per-axis standard deviation of a still
sensor, sampled at ``rate_hz`` with the noise band up to the Nyquist frequency, is
``density * sqrt(rate_hz / 2)``. A window counts as still when every axis stays below
``STILL_NOISE_FACTOR`` times that (plus a few quantisation steps, and a floor for the physiological
tremor of a hand-held or worn sensor) and the gravity direction does not turn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from imusic.errors import UserError

__all__ = [
    "AccelFit", "CalibrationError", "GyroBias", "MagFit", "NoiseModel", "NOISE_MODELS", "STANDARD_GRAVITY",
    "GyroScaleFit", "StillThresholds", "accel_fit", "gyro_bias", "gyro_scale_from_turns", "mag_coverage", "mag_fit",
    "neutral_rotation", "relative_accel_alignment", "relative_gyro_gain", "saturation_check", "static_segments",
    "still_thresholds",
]

STANDARD_GRAVITY = 9.80665  # m/s^2
DEG = math.pi / 180.0
STILL_NOISE_FACTOR = 6.0  # times the chip's noise std: rare false "moving" (6 sigma), motion still caught
GYRO_FLOOR_DPS = 0.25  # std floor: a sensor on a table or a still face trembles a little more than the chip
ACCEL_FLOOR_MG = 10.0  # table knocks and footsteps shake a resting sensor by a few mg (the x-io rest data: up to 6 mg)
TILT_LIMIT_DEG = 1.0  # gravity may turn this much over a rest capture (a slow drift is motion too)


class CalibrationError(UserError):
    """A calibration step refused its data: names the step and the IMU; the file is left as it was."""

    def __init__(self, step: str, who: str, problem: str) -> None:
        self.step = step
        self.who = who
        super().__init__(f"calibrate {step}: {who}: {problem}" if who else f"calibrate {step}: {problem}")


@dataclass(frozen=True)
class NoiseModel:
    """A chip's datasheet noise densities (white noise; the stillness thresholds derive from them)."""

    gyro_mdps_rthz: float
    accel_ug_rthz: float
    mag_uT_rms: float  # a magnetometer's own rms noise at its output rate


# QMI8658 and ICM-42688-P figures from their datasheets (docs/calibration.md); QMC5883P ~2 mG rms.
NOISE_MODELS: dict[str, NoiseModel] = {
    "qmi8658": NoiseModel(15.0, 150.0, 0.2),
    "icm42688": NoiseModel(2.8, 70.0, 0.2),
    "lsm6dsox": NoiseModel(3.8, 70.0, 0.2),
}
DEFAULT_CHIP = "qmi8658"


@dataclass(frozen=True)
class StillThresholds:
    """Largest per-axis standard deviation of a still window."""

    gyro_std_rads: float
    accel_std_mps2: float

    def describe(self) -> str:
        return (f"gyro std <= {self.gyro_std_rads / DEG:.3f} deg/s, "
                f"accel std <= {self.accel_std_mps2 / STANDARD_GRAVITY * 1e3:.2f} mg per axis")


def still_thresholds(chip: str, rate_hz: float, *, gyro_lsb_rads: float = 0.0,
                     accel_lsb_mps2: float = 0.0, factor: float = STILL_NOISE_FACTOR) -> StillThresholds:
    """Stillness thresholds from the chip's noise density at the node's sample rate (see the module
    docstring); ``*_lsb_*`` add two quantisation steps (a still value flips between counts)."""
    noise = NOISE_MODELS.get(chip, NOISE_MODELS[DEFAULT_CHIP])
    band = math.sqrt(max(rate_hz, 1.0) / 2.0)
    gyro = max(factor * noise.gyro_mdps_rthz * 1e-3 * band * DEG, GYRO_FLOOR_DPS * DEG) + 2 * gyro_lsb_rads
    accel = (max(factor * noise.accel_ug_rthz * 1e-6 * band, ACCEL_FLOOR_MG * 1e-3) * STANDARD_GRAVITY
             + 2 * accel_lsb_mps2)
    return StillThresholds(gyro, accel)


# ---- helpers


def _finite_rows(*arrays: np.ndarray) -> np.ndarray:
    ok = np.ones(arrays[0].shape[0], dtype=bool)
    for a in arrays:
        ok &= np.isfinite(a).all(axis=1)
    return ok


def _window_bounds(n: int, window: int) -> list[tuple[int, int]]:
    window = max(2, min(window, n))
    return [(i, min(i + window, n)) for i in range(0, n - window + 1, window)]


def _angle_deg(u: np.ndarray, v: np.ndarray) -> float:
    c = float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


def saturation_check(step: str, who: str, values: np.ndarray, limit: float, what: str, unit_scale: float,
                     unit: str) -> None:
    """Refuse samples at the configured range limit (a saturated axis reads the limit, not the truth)."""
    finite = values[np.isfinite(values)]
    if finite.size and float(np.abs(finite).max()) >= 0.995 * limit:
        raise CalibrationError(step, who, f"{what} saturated (at its +-{limit * unit_scale:g} {unit} range)")


# ---- gyro bias at rest


@dataclass(frozen=True)
class GyroBias:
    bias_rads: np.ndarray  # (3,)
    stderr_rads: np.ndarray  # (3,) standard error of the mean, from the scatter of 1 s window means
    samples: int
    std_rads: np.ndarray  # (3,) sample scatter (noise)


def gyro_bias(gyro_rads: np.ndarray, accel_mps2: np.ndarray, rate_hz: float, thresholds: StillThresholds,
              *, who: str = "", step: str = "gyro", window_s: float = 1.0, min_s: float = 2.0) -> GyroBias:
    """Mean gyro over a still capture = the bias. Refuses a capture with any moving 1 s window
    (variance above the thresholds, or gravity turning by more than ``TILT_LIMIT_DEG``)."""
    ok = _finite_rows(gyro_rads, accel_mps2)
    if ok.mean() < 0.5 or ok.sum() < min_s * rate_hz:
        raise CalibrationError(step, who, f"missing: only {int(ok.sum())} valid samples of {len(ok)}")
    g, a = gyro_rads[ok], accel_mps2[ok]
    window = max(2, int(round(window_s * rate_hz)))
    means = []
    for lo, hi in _window_bounds(len(g), window):
        gs, as_ = g[lo:hi].std(axis=0), a[lo:hi].std(axis=0)
        if (gs > thresholds.gyro_std_rads).any() or (as_ > thresholds.accel_std_mps2).any():
            t_s = lo / rate_hz
            raise CalibrationError(step, who, (
                f"moving at {t_s:.1f} s (gyro std {gs.max() / DEG:.3f} deg/s, accel std "
                f"{as_.max() / STANDARD_GRAVITY * 1e3:.1f} mg; still means {thresholds.describe()}): keep still"))
        means.append(np.concatenate([g[lo:hi].mean(axis=0), a[lo:hi].mean(axis=0)]))
    m = np.array(means)
    tilt = max(_angle_deg(m[0, 3:], row[3:]) for row in m)
    if tilt > TILT_LIMIT_DEG:
        raise CalibrationError(step, who, f"moving: gravity turned {tilt:.1f} deg during the capture: keep still")
    bias = g.mean(axis=0)
    # window means are nearly independent: their scatter gives an honest standard error
    stderr = (m[:, :3].std(axis=0, ddof=1) / math.sqrt(len(m)) if len(m) > 1
              else g.std(axis=0) / math.sqrt(len(g)))
    return GyroBias(bias, stderr, int(len(g)), g.std(axis=0))


# ---- static segments and the accelerometer fit


@dataclass(frozen=True)
class StaticSegment:
    start: int  # sample indices into the capture [start, stop)
    stop: int
    accel_mean_mps2: np.ndarray
    gyro_mean_rads: np.ndarray
    mag_mean_uT: np.ndarray  # NaN without a magnetometer


def static_segments(accel_mps2: np.ndarray, gyro_rads: np.ndarray, rate_hz: float, thresholds: StillThresholds,
                    *, mag_uT: np.ndarray | None = None, window_s: float = 0.5, min_s: float = 1.5,
                    trim_s: float = 0.25) -> list[StaticSegment]:
    """Stretches where the sensor is still: every sliding window of ``window_s`` around a sample below
    the thresholds, at least ``min_s`` long; ``trim_s`` comes off each end (the settling)."""
    n = accel_mps2.shape[0]
    ok = _finite_rows(accel_mps2, gyro_rads)
    w = max(3, int(round(window_s * rate_hz)))
    if n < w:
        return []
    a = np.where(ok[:, None], accel_mps2, 0.0)
    g = np.where(ok[:, None], gyro_rads, 0.0)

    def rolling_std(x: np.ndarray) -> np.ndarray:
        c1 = np.cumsum(np.vstack([np.zeros((1, 3)), x]), axis=0)
        c2 = np.cumsum(np.vstack([np.zeros((1, 3)), x * x]), axis=0)
        s1, s2 = c1[w:] - c1[:-w], c2[w:] - c2[:-w]
        return np.sqrt(np.maximum(s2 / w - (s1 / w) ** 2, 0.0))

    bad = np.cumsum(np.concatenate([[0], (~ok).astype(np.int64)]))
    win_ok = (bad[w:] - bad[:-w]) == 0
    still_win = (win_ok & (rolling_std(a) <= thresholds.accel_std_mps2).all(axis=1)
                 & (rolling_std(g) <= thresholds.gyro_std_rads).all(axis=1))
    # a sample is still when the window starting at it is (the windows tile the stretch)
    still = np.zeros(n, dtype=bool)
    for i in np.flatnonzero(still_win):
        still[i:i + w] = True
    segments = []
    trim = int(round(trim_s * rate_hz))
    edges = np.flatnonzero(np.diff(np.concatenate([[0], still.astype(np.int8), [0]])))
    for lo, hi in zip(edges[::2], edges[1::2]):
        lo, hi = int(lo) + trim, int(hi) - trim
        if hi - lo < min_s * rate_hz:
            continue
        mm = mag_uT[lo:hi] if mag_uT is not None else np.full((hi - lo, 3), np.nan)
        mag_mean = np.nanmean(mm, axis=0) if np.isfinite(mm).any() else np.full(3, np.nan)
        segments.append(StaticSegment(lo, hi, accel_mps2[lo:hi].mean(axis=0), gyro_rads[lo:hi].mean(axis=0),
                                      mag_mean))
    return segments


def _distinct_poses(means: list[np.ndarray], max_deg: float = 20.0) -> list[np.ndarray]:
    """One representative per group of static means pointing within ``max_deg`` of each other (a
    pose held twice, or split by a twitch, counts once)."""
    groups: list[list[np.ndarray]] = []
    for m in means:
        for grp in groups:
            if _angle_deg(grp[0], m) < max_deg:
                grp.append(m)
                break
        else:
            groups.append([m])
    return [grp[0] for grp in groups]


AXIS_NAMES = ("+x", "-x", "+y", "-y", "+z", "-z")
_AXES = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float64)


def missing_directions(means: list[np.ndarray], max_deg: float = 50.0) -> list[str]:
    """Sensor axes that never pointed up (within ``max_deg``) in any pose."""
    if not means:
        return list(AXIS_NAMES)
    u = np.array([m / np.linalg.norm(m) for m in means])
    cos = u @ _AXES.T
    return [name for name, c in zip(AXIS_NAMES, cos.max(axis=0)) if c < math.cos(math.radians(max_deg))]


@dataclass(frozen=True)
class AccelFit:
    offset_mps2: np.ndarray  # b: corrected = matrix @ (raw - b)
    matrix: np.ndarray  # (3, 3) symmetric
    residual_mg: float  # rms of |corrected static mean| - g over the poses used
    poses: int  # distinct orientations
    pose_means_mps2: np.ndarray  # (k, 3) raw static means used (k >= poses)


def _sym(p: np.ndarray) -> np.ndarray:
    return np.array([[p[0], p[3], p[4]], [p[3], p[1], p[5]], [p[4], p[5], p[2]]])


def _fit_sphere_map(points: np.ndarray, radius: float, *, off_diag_prior: float, scale_guess: float = 1.0
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Offset b and symmetric C with |C (p - b)| = radius for every point; the off-diagonal terms of C
    are pulled towards 0 with weight ``off_diag_prior`` (decides them when the points cannot: six
    axis-aligned poses fix scale and offset per axis but not the cross terms)."""
    center0 = points.mean(axis=0) if points.shape[0] > 20 else np.zeros(3)

    def resid(x: np.ndarray) -> np.ndarray:
        b, c = x[:3], _sym(x[3:])
        r = np.linalg.norm((points - b) @ c, axis=1) / radius - 1.0
        return np.concatenate([r, off_diag_prior * x[6:9]])

    x0 = np.concatenate([center0 * 0.0 if points.shape[0] <= 20 else center0, [scale_guess] * 3, [0.0] * 3])
    sol = least_squares(resid, x0, method="lm" if points.shape[0] + 3 >= 9 else "trf", x_scale="jac")
    b, c = sol.x[:3], _sym(sol.x[3:])
    corrected = (points - b) @ c
    return b, c, np.linalg.norm(corrected, axis=1)


def accel_fit(pose_means_mps2: list[np.ndarray] | np.ndarray, *, who: str = "", step: str = "accel",
              min_poses: int = 6, gravity_mps2: float = STANDARD_GRAVITY) -> AccelFit:
    """Fit offset + symmetric correction to the static means of at least ``min_poses`` well-spread
    orientations (every axis once up and once down, within 50 deg); names the missing directions."""
    means = [np.asarray(m, dtype=np.float64) for m in pose_means_mps2]
    poses = _distinct_poses(means)
    missing = missing_directions(poses)
    if len(poses) < min_poses or missing:
        raise CalibrationError(step, who, (
            f"{len(poses)} distinct still poses, need {min_poses} with every axis once up and once down"
            + (f"; missing: {', '.join(m + ' up' for m in missing)}" if missing else "")
            + " (hold each pose still for 3 s)"))
    pts = np.array(means)  # every still segment is a point of the fit (a repeated pose only weighs more)
    # with 9+ poses the cross terms are data-determined; below that the prior fixes them near 0
    prior = 1e-4 if len(poses) >= 9 else 1.0
    b, c, norms = _fit_sphere_map(pts, gravity_mps2, off_diag_prior=prior)
    residual_mg = float(np.sqrt(np.mean((norms - gravity_mps2) ** 2)) / STANDARD_GRAVITY * 1e3)
    return AccelFit(b, c, residual_mg, len(poses), pts)


@dataclass(frozen=True)
class RotatingRefinement:
    offset_mps2: np.ndarray
    matrix: np.ndarray
    lever_arm_m: np.ndarray  # the sensor's position from the centre of rotation, in its own axes
    rms_mg: float  # rms of |corrected - rigid-body terms| - g over the turning samples
    samples: int


MAX_REFINE_RMS_MG = 3.0  # above this the turns were not about a fixed point: the static fit stays


def accel_refine_rotating(static_means: np.ndarray, accel_mps2: np.ndarray, gyro_rads: np.ndarray, rate_hz: float,
                          offset0: np.ndarray, matrix0: np.ndarray, *, moving: np.ndarray,
                          max_samples: int = 3000) -> RotatingRefinement | None:
    """Refine the six-pose fit with the turns between the poses: while a tray turns about a fixed
    point, each sensor feels gravity plus the rigid-body terms w x (w x r) + dw/dt x r of its
    lever arm r, so |A (a - b) - w x (w x r) - dw/dt x r| = g holds at every turning sample too.
    The tilted orientations passed through pin down the cross-axis terms six near-axis poses leave
    open. ``gyro_rads`` bias-free; ``moving``: samples outside the still segments. None when too few
    turning samples or when the model does not hold (turns not about a fixed point)."""
    w = np.asarray(gyro_rads, dtype=np.float64)
    k = 5  # a short moving average before differentiating: dw/dt of raw rates is mostly noise
    ok = _finite_rows(accel_mps2, w)
    w_f = np.where(ok[:, None], w, 0.0)
    kernel = np.ones(k) / k
    w_s = np.stack([np.convolve(w_f[:, j], kernel, mode="same") for j in range(3)], axis=1)
    dw = np.gradient(w_s, 1.0 / rate_hz, axis=0)
    ok_win = np.convolve(ok.astype(np.float64), np.ones(k + 2), mode="same") >= k + 2 - 1e-9
    rate = np.linalg.norm(w_s, axis=1)
    sel = np.flatnonzero(moving & ok_win & (rate > 0.1) & (rate < 2.5))
    if sel.size < 100:
        return None
    if sel.size > max_samples:
        sel = sel[np.linspace(0, sel.size - 1, max_samples).astype(np.int64)]
    a, om, al = accel_mps2[sel], w_s[sel], dw[sel]
    static_weight = math.sqrt(sel.size / max(len(static_means), 1))  # the poses weigh as much as the turns

    def rigid(r: np.ndarray) -> np.ndarray:
        return np.cross(om, np.cross(om, r)) + np.cross(al, r)

    def resid(x: np.ndarray) -> np.ndarray:
        b, c, r = x[:3], _sym(x[3:9]), x[9:12]
        dyn = np.linalg.norm((a - b) @ c - rigid(r), axis=1) / STANDARD_GRAVITY - 1.0
        sta = (np.linalg.norm((static_means - b) @ c, axis=1) / STANDARD_GRAVITY - 1.0) * static_weight
        return np.concatenate([dyn, sta])

    x0 = np.concatenate([offset0, matrix0[[0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]], np.zeros(3)])
    sol = least_squares(resid, x0, x_scale="jac")
    b, c, r = sol.x[:3], _sym(sol.x[3:9]), sol.x[9:12]
    dyn = np.linalg.norm((a - b) @ c - rigid(r), axis=1) - STANDARD_GRAVITY
    rms_mg = float(np.sqrt(np.mean(dyn ** 2)) / STANDARD_GRAVITY * 1e3)
    if rms_mg > MAX_REFINE_RMS_MG or float(np.linalg.norm(r)) > 1.0:
        return None
    return RotatingRefinement(b, c, r, rms_mg, int(sel.size))


def _skew(v: np.ndarray) -> np.ndarray:
    """Cross-product matrices: (..., 3) -> (..., 3, 3), ``_skew(a) @ b == a x b``."""
    z = np.zeros(v.shape[:-1])
    return np.stack([np.stack([z, -v[..., 2], v[..., 1]], -1), np.stack([v[..., 2], z, -v[..., 0]], -1),
                     np.stack([-v[..., 1], v[..., 0], z], -1)], axis=-2)


@dataclass(frozen=True)
class GyroScaleFit:
    matrix: np.ndarray  # (3, 3): gyro_corrected = matrix @ (gyro - bias), in the accelerometer's axes
    turns: int  # turns between still poses used
    rms_rad: float  # rms of the gravity-direction misfit after the turns, rad
    angle_deg: float  # the rotation part of the matrix (gyro axes onto the accelerometer's)
    gain_pct: float  # the rest (polar factor P of the matrix): scale and cross-axis, largest singular value of P - I, %


def gyro_scale_from_turns(accel_mps2: np.ndarray, gyro_rads: np.ndarray, segments: list[StaticSegment],
                          rate_hz: float, *, min_turns: int = 4, max_rms_rad: float = 0.005,
                          max_correction: float = 0.1, prior_weight: float = 1e-3) -> GyroScaleFit | None:
    """The gyro's scale and cross-axis correction from the turns between still poses.

    Between two still poses the gyro, integrated, must turn the gravity direction the accelerometer
    saw in the first pose into the one it sees in the second. Over four or more turns about
    different axes that fixes the terms of the matrix M in ``M @ (gyro - bias)``, and so the
    absolute gain the other steps cannot see: the neutral step matches each face gyro to the head
    reference's, whose own 1-2 % gain error stays (it scales the head's rates, and with them the
    rigid-body acceleration the features take out). M also carries the small rotation from the
    gyro's axes onto the accelerometer's (their cross-axis errors differ). Terms the turns leave
    open (a turn says nothing about gains that only turn gravity about itself) stay at identity:
    a weak pull, ``prior_weight`` rad of misfit per unit of M - I, far below what any turn sees.
    Gauss-Newton on the first-order effect of M on each turn's integrated rotation.
    ``accel_mps2`` calibrated, ``gyro_rads`` bias-free, both at ``rate_hz``. None when the capture
    has too few turns or they do not fit (the IMU moved during a pose, or the turns were too fast
    for the samples): the gyro then keeps its identity gain."""
    from scipy.linalg import polar
    from scipy.spatial.transform import Rotation

    if len(segments) < min_turns + 1:
        return None
    dt = 1.0 / rate_hz
    turns = []
    for a, b in zip(segments[:-1], segments[1:]):
        w = gyro_rads[a.stop:b.start]
        if len(w) < 2 or not np.isfinite(w).all():
            continue
        u0 = accel_mps2[a.start:a.stop].mean(axis=0)
        u1 = accel_mps2[b.start:b.stop].mean(axis=0)
        turns.append((w, u0 / np.linalg.norm(u0), u1 / np.linalg.norm(u1)))
    if len(turns) < min_turns:
        return None

    matrix = np.eye(3)
    resid = np.zeros(0)
    for _ in range(6):
        rows, rhs = [], []
        for w, u0, u1 in turns:
            steps = Rotation.from_rotvec(w @ matrix.T * dt).as_matrix()  # (n, 3, 3) body increments
            after = np.empty_like(steps)  # after[k] = steps[k+1] @ ... @ steps[-1]
            acc = np.eye(3)
            for k in range(len(steps) - 1, -1, -1):
                after[k] = acc
                acc = steps[k] @ acc
            v = acc.T @ u0  # the first pose's gravity carried to the end of the turn
            # a change dE of M turns the end by phi = sum_k after_k^T dE w_k dt; v moves by v x phi
            dphi = np.einsum("kai,kb->iab", after, w).reshape(3, 9) * dt
            rows.append(_skew(v) @ dphi)
            rhs.append(u1 - v)
        resid = np.concatenate(rhs)
        jac = np.vstack(rows + [prior_weight * np.eye(9)])
        target = np.concatenate(rhs + [-prior_weight * (matrix - np.eye(3)).ravel()])
        step = np.linalg.lstsq(jac, target, rcond=None)[0].reshape(3, 3)
        matrix = matrix + step
        if float(np.abs(step).max()) < 1e-7:
            break
    rms = float(np.sqrt(np.mean(resid ** 2)))
    if rms > max_rms_rad or float(np.linalg.norm(matrix - np.eye(3), ord=2)) > max_correction:
        return None
    rot, sym = polar(matrix)
    angle = float(np.degrees(np.arccos(np.clip((np.trace(rot) - 1.0) / 2.0, -1.0, 1.0))))
    return GyroScaleFit(matrix, len(turns), rms, angle, 100.0 * float(np.linalg.norm(sym - np.eye(3), ord=2)))


# ---- magnetometer


# 100 nearly equal-area cells on the sphere (a Fibonacci lattice): coverage = cells visited
_N_CELLS = 100
_gold = math.pi * (3.0 - math.sqrt(5.0))
_k = np.arange(_N_CELLS) + 0.5
_z = 1.0 - 2.0 * _k / _N_CELLS
_CELLS = np.stack([np.sqrt(1 - _z * _z) * np.cos(_gold * _k), np.sqrt(1 - _z * _z) * np.sin(_gold * _k), _z], axis=1)
MIN_MAG_COVERAGE = 0.3  # of the cells; a slow turn through every orientation visits most of them


def mag_coverage(mag_uT: np.ndarray, center_uT: np.ndarray | None = None) -> float:
    """Fraction of the sphere's cells the field directions visited (about ``center_uT``)."""
    m = mag_uT[np.isfinite(mag_uT).all(axis=1)]
    if m.shape[0] == 0:
        return 0.0
    c = m.mean(axis=0) if center_uT is None else center_uT
    u = m - c
    u = u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
    cell = np.argmax(u @ _CELLS.T, axis=1)
    return float(np.unique(cell).size / _N_CELLS)


@dataclass(frozen=True)
class MagFit:
    offset_uT: np.ndarray  # hard iron: corrected = matrix @ (raw - offset)
    matrix: np.ndarray  # (3, 3) symmetric soft-iron correction, scaled to field_uT
    field_uT: float  # magnitude of the corrected field
    spread_pct: float  # 100 * std / mean of the corrected magnitude (the samples used)
    raw_spread_pct: float  # the same before calibration
    coverage: float
    samples: int


MAX_AXIS_RATIO = 1.5  # soft iron beyond this (or a fit that far off) is a disturbed field, not a sensor


def _sphere_center(m: np.ndarray) -> np.ndarray:
    """Linear least-squares sphere |p - c|^2 = r^2 -> c."""
    design = np.hstack([2 * m, np.ones((m.shape[0], 1))])
    sol, *_ = np.linalg.lstsq(design, (m * m).sum(axis=1), rcond=None)
    return sol[:3]


def _algebraic_ellipsoid(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares quadric a x^2 + b y^2 + c z^2 + 2d xy + 2e xz + 2f yz + 2g x + 2h y + 2i z = 1
    -> (center, A) with (p - center)^T A (p - center) = 1 (A symmetric; not forced definite)."""
    x, y, z = m[:, 0], m[:, 1], m[:, 2]
    design = np.stack([x * x, y * y, z * z, 2 * x * y, 2 * x * z, 2 * y * z, 2 * x, 2 * y, 2 * z], axis=1)
    v, *_ = np.linalg.lstsq(design, np.ones(len(m)), rcond=None)
    q = np.array([[v[0], v[3], v[4]], [v[3], v[1], v[5]], [v[4], v[5], v[2]]])
    center = -np.linalg.solve(q, v[6:9])
    k = 1.0 + center @ q @ center
    return center, q / k


def mag_fit(mag_uT: np.ndarray, *, who: str = "", step: str = "mag", field_uT: float | None = None,
            min_coverage: float = MIN_MAG_COVERAGE, max_samples: int = 4000) -> MagFit:
    """Hard/soft-iron fit: an algebraic ellipsoid fit starts a least-squares refinement of offset and
    symmetric correction with constant corrected magnitude. The magnitude is ``field_uT`` (the local
    field) or, without it, the fitted mean magnitude (the correction keeps the ellipsoid's volume)."""
    m = mag_uT[np.isfinite(mag_uT).all(axis=1)]
    if m.shape[0] < 50:
        raise CalibrationError(step, who, f"missing: {m.shape[0]} magnetometer samples (need a turning sensor with a magnetometer)")
    if m.shape[0] > max_samples:
        m = m[np.linspace(0, m.shape[0] - 1, max_samples).astype(np.int64)]
    # coverage about a sphere's centre (well posed even for a partial cloud, unlike the ellipsoid)
    coverage = mag_coverage(m, _sphere_center(m))
    if coverage < min_coverage:
        raise CalibrationError(step, who, (
            f"poor coverage: the field directions visit {coverage:.0%} of the sphere, need {min_coverage:.0%}: "
            "turn the sensor slowly through every orientation"))
    center, a = _algebraic_ellipsoid(m)
    w, v = np.linalg.eigh(a)
    if not (w > 0).all() or w.max() / w.min() > MAX_AXIS_RATIO ** 2:
        raise CalibrationError(step, who, (
            f"the field does not lie on an ellipsoid (coverage {coverage:.0%}): turn the sensor slowly through "
            "every orientation, away from iron and magnets"))
    c0 = v @ np.diag(np.sqrt(w)) @ v.T  # maps the ellipsoid onto the unit sphere
    radius0 = float(np.cbrt(1.0 / np.sqrt(w).prod()))
    c0 = c0 * radius0
    x0 = np.concatenate([center, c0[[0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]]])

    def resid(x: np.ndarray) -> np.ndarray:
        c = _sym(x[3:])
        return np.linalg.norm((m - x[:3]) @ c, axis=1) / radius0 - 1.0

    sol = least_squares(resid, x0, x_scale="jac")
    offset, c = sol.x[:3], _sym(sol.x[3:])
    # the fit fixes |C (m - h)| = radius0; keep the ellipsoid's volume (det C = 1) unless told the field
    det = float(np.linalg.det(c))
    c = c / np.cbrt(det) if det > 0 else c
    norms = np.linalg.norm((m - offset) @ c, axis=1)
    if field_uT is not None:
        c = c * (field_uT / float(norms.mean()))
        norms = np.linalg.norm((m - offset) @ c, axis=1)
    raw = np.linalg.norm(m, axis=1)
    return MagFit(offset, c, float(norms.mean()), float(100 * norms.std() / norms.mean()),
                  float(100 * raw.std() / raw.mean()), mag_coverage(m, offset), int(m.shape[0]))


# ---- neutral orientation


def rotation_from_vectors(a: np.ndarray, b: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """R minimising sum w |a_i - R b_i|^2 (Wahba's problem, solved by SVD): maps b's frame into a's."""
    h = (weights[:, None] * a).T @ b
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def matrix_to_quat(r: np.ndarray) -> np.ndarray:
    """Rotation matrix -> unit quaternion (w, x, y, z), w >= 0."""
    from scipy.spatial.transform import Rotation
    x, y, z, w = Rotation.from_matrix(r).as_quat()
    q = np.array([w, x, y, z])
    return q if w >= 0 else -q


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation
    return Rotation.from_quat([q[1], q[2], q[3], q[0]]).as_matrix()


@dataclass(frozen=True)
class NeutralFit:
    R_ref_sensor: np.ndarray  # (3, 3): this sensor's axes in the head reference sensor's axes
    gravity_weight_frames: int  # still frames whose gravity directions were matched
    rate_frames: int  # turning frames whose angular rates were matched
    horizontal_rate_dps: float  # rms rate about horizontal axes (what fixes the heading; small: poorly fixed)


def neutral_rotation(ref_accel: np.ndarray, ref_gyro: np.ndarray, accel: np.ndarray, gyro: np.ndarray,
                     *, who: str = "", step: str = "neutral", min_rate_rads: float = 10 * DEG) -> NeutralFit:
    """A face site's rest orientation relative to the head reference from a neutral-face capture
    with head turns: both sensors sit on one rigid body (a neutral face), so they see the same angular
    velocity and the same gravity, each in its own axes; the rotation that best maps one set onto the
    other (Wahba) is the relative orientation. Gravity alone fixes only the tilt; the head's turns fix
    the heading. Calibrated (bias-free) inputs expected."""
    ok = _finite_rows(ref_accel, ref_gyro, accel, gyro)
    if ok.mean() < 0.5:
        raise CalibrationError(step, who, f"missing: only {int(ok.sum())} valid frames of {len(ok)}")
    ra, rg, sa, sg = ref_accel[ok], ref_gyro[ok], accel[ok], gyro[ok]
    turning = (np.linalg.norm(rg, axis=1) > min_rate_rads) & (np.linalg.norm(sg, axis=1) > min_rate_rads)
    if turning.sum() < 10:
        raise CalibrationError(step, who, "the head never turned: turn the head slowly left and right (and nod) "
                                          "with a neutral face, so the heading of each site can be found")
    # gravity from the frames where the head turns slowly: during turns each sensor also feels its own
    # centripetal acceleration (0.1 m/s^2 at 1 rad/s and 10 cm, half a degree of tilt)
    slow = (np.linalg.norm(rg, axis=1) < min_rate_rads / 2) & (np.linalg.norm(sg, axis=1) < min_rate_rads / 2)
    pick = slow if int(slow.sum()) >= 30 else np.ones(len(rg), dtype=bool)
    g_ref, g_site = ra[pick].mean(axis=0), sa[pick].mean(axis=0)
    up = g_ref / np.linalg.norm(g_ref)
    # turns about the vertical only repeat gravity's direction: the heading needs rates off it
    horizontal = np.linalg.norm(np.cross(rg, up), axis=1)
    if int((turning & (horizontal > min_rate_rads / 2)).sum()) < 10:
        raise CalibrationError(step, who, "the head only turned about the vertical: nod or tilt the head too "
                                          "(with a neutral face), so the heading of each site can be found")
    wr = np.linalg.norm(rg[turning], axis=1)
    a_vec = np.vstack([g_site / np.linalg.norm(g_site), sg[turning] / wr[:, None]])
    b_vec = np.vstack([up, rg[turning] / wr[:, None]])
    weights = np.concatenate([[float(turning.sum())], wr / wr.mean()])
    r_site_ref = rotation_from_vectors(a_vec, b_vec, weights)
    horizontal_rms = float(np.sqrt(np.mean(horizontal[turning] ** 2)))
    return NeutralFit(r_site_ref.T, int(ok.sum()), int(turning.sum()), horizontal_rms / DEG)


@dataclass(frozen=True)
class GyroGainFit:
    matrix: np.ndarray  # (3, 3): gyro_corrected = matrix @ (gyro - offset_rads): the site agrees with the reference
    offset_rads: np.ndarray  # (3,): the site's bias left over relative to the reference's (at wearing temperature)
    frames: int  # frames used
    rms_before_dps: float  # rms of |gyro - R_site_ref @ ref_gyro| over those frames
    rms_after_dps: float
    gain_mismatch: float  # largest singular value of (matrix - I): the size of the gain and cross-axis error


def relative_gyro_gain(ref_gyro: np.ndarray, gyro: np.ndarray, R_site_ref: np.ndarray, *, who: str = "",
                       step: str = "neutral", min_rate_rads: float = 10 * DEG,
                       max_mismatch: float = 0.1, prior_below_snr: float = 5.0) -> GyroGainFit:
    """The site gyro's scale and cross-axis error relative to the head reference's gyro.

    On a neutral face both gyros see one angular velocity, so ``gyro ~ A @ ref_gyro`` with
    A = G_site R_site_ref G_ref^-1. A is fitted by least squares with a constant term (the bias
    left between the two at wearing temperature: a bias difference turns the two filters' headings
    apart, 0.3 deg a minute at 0.005 deg/s), pulled towards the pure rotation R_site_ref (ridge)
    only where the data cannot decide: the ridge equals the energy of a turn whose rms is
    ``prior_below_snr`` times the fit's noise, so an axis the head never turned about (its
    reference rate is noise alone) keeps the rest rotation, and one turned about even a little is
    fitted from the data. (A ridge of 1 % of the capture's energy, used before, kept a fifth of the
    error on the axis the head turned least about, the roll, in the simulator's capture: the chin
    was left 0.9 % off, and head roll leaked into its features.)
    The correction ``R_site_ref @ A^-1`` makes the site read as the reference would: head motion then
    cancels in relative rates to the noise level, where a 1 % gain mismatch on a 3 rad/s head turn
    leaves about ten times the gyro noise. Bias-free inputs expected.
    """
    ok = _finite_rows(ref_gyro, gyro)
    rg, sg = ref_gyro[ok], gyro[ok]
    turning = np.linalg.norm(rg, axis=1) > min_rate_rads
    if int(turning.sum()) < 10:
        raise CalibrationError(step, who, "the head never turned: turn the head slowly left and right (and nod) "
                                          "with a neutral face")
    # gyro ~ A @ ref_gyro + c over every frame: the still ones pin the offset c, the turns the matrix A
    x = np.hstack([rg, np.ones((len(rg), 1))])
    prior = np.vstack([R_site_ref.T, np.zeros((1, 3))])  # (4, 3): A^T on top, c below
    free = np.linalg.lstsq(x, sg, rcond=None)[0]
    noise_var = float(np.mean((sg - x @ free) ** 2))  # per axis: both gyros' noise
    lam = len(rg) * prior_below_snr ** 2 * max(noise_var, 1e-12)
    ridge = np.diag([lam, lam, lam, 0.0])
    coef = np.linalg.solve(x.T @ x + ridge, x.T @ sg + ridge @ prior)
    a, offset = coef[:3].T, coef[3]
    matrix = R_site_ref @ np.linalg.inv(a)
    mismatch = float(np.linalg.norm(matrix - np.eye(3), ord=2))  # near I: a correction in the site's own axes
    if mismatch > max_mismatch:
        raise CalibrationError(step, who, f"its gyro disagrees with the head reference's by {100 * mismatch:.0f} % "
                                          "(more than any gain error): was the face neutral and the IMU firmly stuck?")
    before = sg - rg @ R_site_ref.T
    after = (sg - offset) @ matrix.T - rg @ R_site_ref.T
    rms = lambda v: float(np.sqrt(np.mean(np.sum(v * v, axis=1)))) / DEG  # noqa: E731
    return GyroGainFit(matrix, offset, int(len(rg)), rms(before), rms(after), mismatch)


@dataclass(frozen=True)
class AccelAlignFit:
    rotation: np.ndarray  # (3, 3): accel_aligned = rotation @ accel, in the sensor's own axes
    lever_arm_m: np.ndarray  # (3,): from the reference to this sensor, in the reference's axes (fitted alongside)
    frames: int  # frames used
    angle_deg: float  # size of the rotation
    rms_before_mps2: float  # rms of |R_ref_sensor f - f_ref - K l| over those frames, before and after
    rms_after_mps2: float


def relative_accel_alignment(ref_accel: np.ndarray, ref_gyro: np.ndarray, accel: np.ndarray,
                             R_ref_sensor: np.ndarray, rate_hz: float, *, who: str = "", step: str = "neutral",
                             max_deg: float = 5.0) -> AccelAlignFit:
    """The rotation that makes a face site's accelerometer agree with the head reference's under the
    rest pose ``R_ref_sensor`` (which its gyro already agrees with, see ``relative_gyro_gain``).

    A chip's accelerometer and gyroscope axes differ by a small rotation (the antisymmetric part of
    their independent cross-axis errors, about a degree for 1 % parts) that the six-pose fit cannot
    see. Two orientation filters then disagree: each takes its tilt from its accelerometer and its
    turning from its gyro, so their relative orientation wanders by that degree as the head tilts
    and turns, and the head's rate leaks into relative rates. On a neutral face both sensors are on
    one rigid body: ``R_ref_sensor C f = f_ref + K l`` with ``K = [alpha]x + [omega]x^2`` of the
    reference's gyro and ``l`` the lever arm. ``C = exp([delta]x)`` and ``l`` by linearised least
    squares (two Gauss-Newton passes), ridge-pulled towards zero in directions the capture did not
    excite (a head that never tilts leaves the rotation about gravity open; it then does not
    matter either). Calibrated inputs expected, frames on a uniform ``rate_hz`` grid."""
    from scipy.spatial.transform import Rotation

    ok = _finite_rows(ref_accel, ref_gyro, accel)
    if ok.mean() < 0.5:
        raise CalibrationError(step, who, f"missing: only {int(ok.sum())} valid frames of {len(ok)}")
    # angular acceleration by central differences; a frame next to a gap has none
    alpha = np.full_like(ref_gyro, np.nan)
    alpha[1:-1] = (ref_gyro[2:] - ref_gyro[:-2]) * (0.5 * rate_hz)
    use = ok & np.isfinite(alpha).all(axis=1)
    fr, fs, w, al = ref_accel[use], accel[use], ref_gyro[use], alpha[use]
    n = len(fr)
    if n < 30:
        raise CalibrationError(step, who, f"missing: only {n} usable frames")

    wx = _skew(w)
    K = _skew(al) + wx @ wx
    C = np.eye(3)
    lever = np.zeros(3)
    before = after = 0.0
    for step_i in range(2):
        fc = fs @ C.T
        y = fc @ R_ref_sensor.T - fr  # (n, 3): what the rigid-body model leaves
        # R exp([d]x) fc - f_ref - K l ~ y - R [fc]x d - K l: residual y + J x with x = (d, l)
        J = -np.concatenate([np.einsum("ij,njk->nik", R_ref_sensor, _skew(fc)), K], axis=2)
        A = np.einsum("nji,njk->ik", J, J)
        b = -np.einsum("nji,nj->i", J, y)
        ridge = 1e-3 * float(np.trace(A)) / 6.0
        x = np.linalg.solve(A + ridge * np.eye(6), b)
        if step_i == 0:  # the lever arm's fit alone, for the record
            before = float(np.sqrt(np.mean(np.sum((y - K @ x[3:]) ** 2, axis=1))))
        C = Rotation.from_rotvec(x[:3]).as_matrix() @ C
        lever = x[3:]
        resid = y + np.einsum("nij,j->ni", J, x)
        after = float(np.sqrt(np.mean(np.sum(resid ** 2, axis=1))))
    angle = float(np.degrees(np.linalg.norm(Rotation.from_matrix(C).as_rotvec())))
    if angle > max_deg:
        raise CalibrationError(step, who, f"its accelerometer disagrees with the head reference's by {angle:.1f} deg "
                                          "beyond the rest pose: was the face neutral and the IMU firmly stuck?")
    return AccelAlignFit(C, lever, n, angle, before, after)
