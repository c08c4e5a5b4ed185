"""Facial features with head motion taken out: THE one feature function (training, evaluation and
runtime all call ``FeatureExtractor.update``; ``features_of_block`` loops it).

Per face site s and head reference r (definitions and frames: docs/features.md):

- ``rel_rot_{x,y,z}_rad``: rotation vector of ``R_rest^T R_rel`` with ``R_rel = R_world_r^T
  R_world_s`` (each IMU's orientation from its own ``OrientationFilter``) and ``R_rest`` the value
  of ``R_rel`` with the face neutral (the calibration's neutral capture, else captured from the
  take's first still second). Axes: the site's rest frame.
- ``rel_rate_{x,y,z}_rads``: ``omega_s - R_rel^T omega_r``, the site's angular rate relative to the
  head, in the site's own (current) frame.
- ``lin_acc_{x,y,z}_mps2``: ``R_rel f_s - f_r - (alpha x l + omega x (omega x l))`` in the head
  reference's frame (gravity and the head's own acceleration cancel; the bracket is the rigid-body
  acceleration of the lever arm ``l`` from the reference to the site, omega/alpha from the head
  reference gyro), then rotated into the site's rest frame with ``R_rest^T``. A frame's lin_acc is
  that of ``FeatureSettings.lin_acc_delay_frames`` (2) frames earlier, so that alpha can be a
  central difference.

Any change to these definitions (or to the defaults of ``FeatureSettings``) bumps
``FEATURE_VERSION``; models record the version and the spec they were trained with.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from imusic.align import Frame, FrameBlock
from imusic.errors import UserError
from imusic.orientation import GRAVITY_MPS2, OrientationFilter, OrientationSettings, quat_multiply, quat_to_matrix

__all__ = [
    "FEATURE_NAMES",
    "FEATURE_UNITS",
    "FEATURE_VERSION",
    "FEATURES_PER_SITE",
    "FeatureError",
    "FeatureExtractor",
    "FeatureSettings",
    "feature_spec",
    "features_of_block",
    "nominal_R_head_sensor",
]

FEATURE_VERSION = 10
FEATURE_NAMES: tuple[str, ...] = (
    "rel_rot_x_rad", "rel_rot_y_rad", "rel_rot_z_rad",
    "rel_rate_x_rads", "rel_rate_y_rads", "rel_rate_z_rads",
    "lin_acc_x_mps2", "lin_acc_y_mps2", "lin_acc_z_mps2",
)
FEATURES_PER_SITE = len(FEATURE_NAMES)
FEATURE_UNITS: tuple[str, ...] = ("rad",) * 3 + ("rad/s",) * 3 + ("m/s^2",) * 3
GROUPS: dict[str, slice] = {"rel_rot": slice(0, 3), "rel_rate": slice(3, 6), "lin_acc": slice(6, 9)}


class FeatureError(UserError):
    """Frames that cannot give features for this layout (e.g. no head reference IMU)."""


class _SiteGeometry(Protocol):
    @property
    def position_mm(self) -> np.ndarray: ...
    @property
    def normal(self) -> np.ndarray: ...


class LayoutLike(Protocol):
    """What the extractor needs of an ``imusic.placement.Layout``."""

    @property
    def name(self) -> str: ...
    @property
    def head_reference(self) -> str: ...
    @property
    def face_sites(self) -> tuple[str, ...]: ...
    def site(self, name: str) -> Any: ...


class CalibrationLike(Protocol):
    """What the extractor needs of an ``imusic.calibration.Calibration`` (neutral poses and lever arms
    optional)."""

    def apply_frame(self, frame: Frame) -> Frame: ...


@dataclass(frozen=True)
class FeatureSettings:
    """Knobs of the feature function. Part of the feature definition: recorded in the spec.

    orientation: one settings object for every IMU's filter (same gain everywhere, so tilt errors
        common to the whole head cancel in relative rotations).
    max_gap_s: after a missing sample, filters restart rather than integrate across the gap: the
        head reference from its accelerometer, each face site at the head reference's orientation
        times its last relative orientation (gaps up to ``max_gap_s``) or its rest orientation
        (longer gaps: the face may have moved meanwhile). Relative orientation so survives gaps.
    rest_window_s, rest_search_s, still_rads: without a calibrated neutral, ``R_rest`` is the mean
        relative orientation over the first ``rest_window_s`` in which the head reference turns
        slower than ``still_rads``; if none is found within ``rest_search_s`` the next window is
        used as it is. Features are invalid until the rest is known.
    gyro_bias_at_rest: a rest window in which the head reference's gyro stays below
        ``bias_still_rads`` on every axis also gives every gyro's residual bias (mean reading),
        subtracted from then on.
    lever_arm_adapt: refine each lever arm by regularised least squares on the rigid-body equation
        while the head turns (the catalogue position is the prior; faces differ in size). A site
        whose lever arm the calibration's neutral step fitted (``neutral_lever_arms_m``) uses that
        arm as it is: the step fits it on a rigid face, to about a millimetre on the simulator,
        while facial acceleration during a take (speech at the chin) pulled the online fit
        centimetres off (version 6).
    lever_arm_prior_weight: weight of the prior, in units of (rad/s)^4 s of excitation.
    lever_arm_to_filter: feed each face site's filter its specific force moved to the reference
        point (docs/features.md).
    align_relative: (off by default: it takes genuine facial rotation for heading error, 0.2 rad
        on a sustained 0.15 rad oscillation in tests/test_features.py) correct each site's relative orientation from how its gyro correlates with
        the head reference's (``omega_r ~ R_rel omega_s`` while the head turns; orthogonal
        Procrustes over the last ``align_tau_s``, the filter's estimate as a prior of weight
        ``align_prior`` (rad/s)^2 s). Accelerometers cannot see the relative heading; this can.
        While less than ``align_settle`` (rad/s)^2 s of head rotation has been seen, a captured
        rest follows the correction (its heading came from the nominal mounting).

    track_bias: follow each face gyro's bias relative to the head reference's while the session
        runs: whenever a site's relative rate is below ``track_quiet_rads`` (the face quiet there;
        0.01 rad/s, a few times the two gyros' noise: at 0.03 slow facial turning was taken for
        bias and the error leaked the head's rate, docs/features.md),
        its mean drifts the site's bias estimate with time constant ``track_tau_s`` (of quiet
        time). Without it a bias difference of 0.005 deg/s (a few degrees C of warming at a
        typical temperature coefficient) turns the site's heading 3 deg in ten minutes, and the
        accelerometers cannot see heading. Likewise the accelerometer: on quiet frames (relative
        rate as above and lin_acc below ``track_quiet_mps2``) lin_acc's mean is the accelerometer's
        bias against the reference's (warming moves it 1-2 mg over ten minutes, a milliradian of
        tilt between the two filters), tracked with the same time constant.
    track_accel_along_gravity: track only the accelerometer bias's component along gravity (the
        site's current up axis). Across gravity a bias and a relative tilt of bias / g look the
        same while the head stays upright (the filter takes the bias as tilt), so tracking that
        part walks the pair: the tilt error times the head's rate leaked into rel_rate, growing
        over a ten-minute take. Along gravity a tilt error shows only in second order. As the head
        nods and turns, other axes come under gravity and get their share. The part across gravity
        is found from the gyros instead (``tilt_tau_s``).
    facial_accel_gate_mps2: while a site's lin_acc (the face's own acceleration there, last frame,
        less its mean over ``facial_accel_mean_s``) is above this, its filter is fed the head
        reference's specific force in the site's axes instead of its own: speech accelerates the
        chin by metres per second squared (with a non-zero mean: the centripetal part of the jaw's
        turning), which a filter cannot tell from gravity, and the tilt error times the head's rate
        leaked into rel_rate. ``None`` feeds every filter its own accelerometer always.
    facial_accel_hold_s: the gate stays shut this long after the face's acceleration was last above
        it. The gate looks at the last frame's acceleration, which an oscillating jaw takes through
        zero twice a cycle: without the hold, the frames at the chin the gate let through during
        speech still carried 0.37 m/s^2 rms of facial acceleration along its x axis (0.075 with
        0.25 s, six expressions takes), which tilted the filter, and the tilt error times the
        head's yaw rate leaked into rel_rate (docs/features.md, version 8). 0 turns the hold off.
    facial_accel_mean_s: the time constant of the mean taken off lin_acc for the gate. Short (0.25 s:
        speech is 3-7 Hz) so that slow lin_acc from a relative orientation error (which changes with
        the head's tilt) does not hold the gate open: with a 2 s mean an uncalibrated site's drift
        showed as lin_acc, held the gate, and so drifted further (docs/features.md, item 5).

    heading_gain: hold each site's relative heading (its rotation about gravity, which no
        accelerometer sees) with the gyros, per second; 0 turns it off. A relative orientation off
        by delta shows in rel_rate as delta x u, with u the head's rate in the site's axes. On
        frames where the site's rel_rate is below ``heading_quiet_rads`` (no fast facial motion
        there), the part of that about gravity is taken out with gain ``heading_gain`` / s,
        normalised by |u|^2 + ``heading_u0_rads``^2 (a steady correction rate for turns faster
        than u0, none while the head is still). Why: a face that is not neutral when a take
        starts (an idle smile) starts each filter at the calibrated neutral, and the accelerometers
        correct only the tilt; the heading difference stayed for the whole take and leaked the
        head's pitch rate into rel_rate (docs/features.md, version 5). Heading errors larger than
        the quiet threshold over the head's rate are left alone (no correction from those frames).
    tilt_tau_s: hold each site's tilt relative to the reference with the gyros, by moving the
        accelerometer bias across gravity that the filter took as tilt into the site's tracked
        bias (time constant ``tilt_tau_s`` of quiet head turning; 0 turns it off). The same
        delta x u as for the heading, on frames where rel_rate is below ``track_quiet_rads``,
        normalised by |u|^2 + ``heading_u0_rads``^2; its tilt part delta_t says the filter's up
        axis is off by an accelerometer bias g (up x delta_t). Why: as the chips warm on the face
        their accelerometer biases move by about a milligram, a milliradian of relative tilt that
        the accelerometers cannot tell from a bias (``track_accel_along_gravity``); times the
        head's rate it leaked into rel_rate and grew over a ten-minute take (docs/features.md,
        version 9).
    level_window_s: after a face site's filter restarts from the rest pose (a take's start, a gap
        longer than ``max_gap_s``), its tilt is levelled once to its own accelerometer: the smallest
        turn that makes the site's specific force (moved to the reference point) agree with the
        reference's, summed in world axes over the window's frames the gate calls quiet; meanwhile
        the filter is held at its starting tilt (fed as when gated), so the sums see that tilt
        alone. The heading stays the rest pose's. Why: the face is seldom exactly neutral when a
        take starts, and the filter alone took some four seconds to take up the difference, which
        showed in lin_acc meanwhile (6 mg at the brows, the same in every take: docs/features.md,
        version 7). 0 turns it off. The site's features are not valid while it levels: until then
        its lin_acc carried the starting tilt error times gravity, the same in every take, so in a
        walking take it lined up with the start of walking (version 9).
    level_quiet_fraction: a site quiet on fewer than this fraction of the window's frames is not
        levelled (its filter converges as before): while the face moves there (speech at the chin)
        its accelerometer says little about its tilt, and levelling the mentalis on half-quiet
        windows raised its rel_rate leak (0.11 -> 0.15 pooled).
    lin_acc_delay_frames: a frame's lin_acc is the one of this many frames earlier (0, 1 or 2), with
        the head's angular acceleration there from a central difference of the reference's rate
        over the frames either side (1: three points, error second order in omega dt; 2: five
        points, fourth order) instead of the backward difference, which over-reads a head nodding
        at omega by (omega dt)^2 / 3 and so leaks the head's pitch into the cheeks' lin_acc on a
        walk (docs/features.md, version 10). rel_rot and rel_rate stay the frame's own and nothing
        waits: the blendshapes of a frame come as soon as it does, from lin_acc up to two frames
        (33 ms) older. The filters, the gate and the bias tracking inside use the frame's own,
        backward-difference lin_acc. 0 gives version 9's lin_acc.

    The gyro's gain and cross-axis error relative to the head reference's, and the accelerometer's
    rotation relative to its gyro, are the calibration's neutral step (docs/calibration.md): with
    them, a neutral face gives features at the sensor noise through head motion. (An online gain
    estimate that used to be here, ``gyro_gain_adapt``, is gone: facial rotation corrupted it.)
    """

    orientation: OrientationSettings = field(default_factory=lambda: OrientationSettings(startup=False))
    max_gap_s: float = 0.25
    rest_window_s: float = 1.0
    rest_search_s: float = 3.0
    still_rads: float = 0.3
    gyro_bias_at_rest: bool = True
    bias_still_rads: float = 0.05
    lever_arm_adapt: bool = True
    lever_arm_prior_weight: float = 20.0
    lever_arm_to_filter: bool = True
    align_relative: bool = False
    align_tau_s: float = 10.0
    align_prior: float = 1.0
    align_settle: float = 30.0
    track_bias: bool = True
    track_tau_s: float = 8.0
    track_quiet_rads: float = 0.01
    track_quiet_mps2: float = 0.3
    track_accel_along_gravity: bool = True
    facial_accel_gate_mps2: float | None = 0.2
    facial_accel_mean_s: float = 0.25
    facial_accel_hold_s: float = 0.25
    heading_gain: float = 1.5
    heading_quiet_rads: float = 0.02
    heading_u0_rads: float = 0.3
    tilt_tau_s: float = 20.0
    level_window_s: float = 1.0
    level_quiet_fraction: float = 0.95
    lin_acc_delay_frames: int = 2

    def __post_init__(self) -> None:
        if self.lin_acc_delay_frames not in (0, 1, 2):
            raise FeatureError(f"lin_acc_delay_frames must be 0, 1 or 2, not {self.lin_acc_delay_frames!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"orientation": self.orientation.to_dict(), "max_gap_s": self.max_gap_s,
                "rest_window_s": self.rest_window_s, "rest_search_s": self.rest_search_s,
                "still_rads": self.still_rads, "gyro_bias_at_rest": self.gyro_bias_at_rest,
                "bias_still_rads": self.bias_still_rads,
                "lever_arm_adapt": self.lever_arm_adapt,
                "lever_arm_prior_weight": self.lever_arm_prior_weight,
                "lever_arm_to_filter": self.lever_arm_to_filter, "align_relative": self.align_relative,
                "align_tau_s": self.align_tau_s, "align_prior": self.align_prior,
                "align_settle": self.align_settle, "track_bias": self.track_bias,
                "track_tau_s": self.track_tau_s, "track_quiet_rads": self.track_quiet_rads,
                "track_quiet_mps2": self.track_quiet_mps2,
                "track_accel_along_gravity": self.track_accel_along_gravity,
                "facial_accel_gate_mps2": self.facial_accel_gate_mps2,
                "facial_accel_mean_s": self.facial_accel_mean_s,
                "facial_accel_hold_s": self.facial_accel_hold_s, "heading_gain": self.heading_gain,
                "heading_quiet_rads": self.heading_quiet_rads, "heading_u0_rads": self.heading_u0_rads,
                "tilt_tau_s": self.tilt_tau_s,
                "level_window_s": self.level_window_s, "level_quiet_fraction": self.level_quiet_fraction,
                "lin_acc_delay_frames": self.lin_acc_delay_frames}


def nominal_R_head_sensor(normal: np.ndarray) -> np.ndarray:
    """Nominal mounting (docs/sim.md): z_S = outward normal, x_S = +z_H projected on the skin
    plane (+x_H where the normal is near vertical), y_S = z_S x x_S. Columns are the S axes in H."""
    z = np.asarray(normal, dtype=np.float64)
    z = z / np.linalg.norm(z)
    up = np.array([0.0, 0.0, 1.0])
    if abs(float(z @ up)) > 0.9:
        up = np.array([1.0, 0.0, 0.0])
    x = up - (up @ z) * z
    x /= np.linalg.norm(x)
    return np.column_stack([x, np.cross(z, x), z])


def _quat_of_matrix(r: np.ndarray) -> np.ndarray:
    from imusic.orientation import matrix_to_quat

    return matrix_to_quat(r)


def _tilt_quat(accel_mps2: np.ndarray) -> np.ndarray:
    """R_world_sensor with heading 0 whose world z matches the measured specific force."""
    up_s = accel_mps2 / np.linalg.norm(accel_mps2)
    return _align_quat(up_s, np.array([0.0, 0.0, 1.0]))


def _align_quat(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit vector a onto unit vector b, as (w, x, y, z)."""
    c = float(a @ b)
    if c < -0.999999:
        axis = np.cross(a, [1.0, 0.0, 0.0])
        if np.linalg.norm(axis) < 1e-6:
            axis = np.cross(a, [0.0, 1.0, 0.0])
        axis /= np.linalg.norm(axis)
        return np.array([0.0, *axis])
    q = np.array([1.0 + c, *np.cross(a, b)])
    return q / np.linalg.norm(q)


def _mean_quat(qs: Sequence[np.ndarray]) -> np.ndarray:
    ref = qs[0]
    acc = np.zeros(4)
    for q in qs:
        acc += q if float(q @ ref) >= 0 else -q
    return acc / np.linalg.norm(acc)


def _quats_of_matrices(r: np.ndarray) -> np.ndarray:
    """(n, 3, 3) rotation matrices -> (n, 4) quaternions (w, x, y, z), w >= 0."""
    from scipy.spatial.transform import Rotation

    xyzw = Rotation.from_matrix(r).as_quat()
    q = xyzw[:, [3, 0, 1, 2]]
    return q * np.where(q[:, :1] < 0, -1.0, 1.0)


def _quats_of_rotvecs(v: np.ndarray) -> np.ndarray:
    """(n, 3) rotation vectors -> (n, 4) quaternions (w, x, y, z)."""
    angle = np.linalg.norm(v, axis=1)
    half = 0.5 * angle
    scale = np.where(angle > 1e-12, np.sin(half) / np.maximum(angle, 1e-300), 0.5)
    return np.concatenate([np.cos(half)[:, None], v * scale[:, None]], axis=1)


def _rotvecs(r: np.ndarray) -> np.ndarray:
    """(n, 3, 3) rotation matrices -> (n, 3) rotation vectors (angles below ~170 degrees)."""
    axis2s = np.stack([r[:, 2, 1] - r[:, 1, 2], r[:, 0, 2] - r[:, 2, 0], r[:, 1, 0] - r[:, 0, 1]], axis=1)
    cos_a = np.clip((np.trace(r, axis1=1, axis2=2) - 1.0) * 0.5, -1.0, 1.0)
    sin_a = 0.5 * np.linalg.norm(axis2s, axis=1)
    angle = np.arctan2(sin_a, cos_a)
    scale = np.where(sin_a < 1e-9, 0.5, angle / np.maximum(2.0 * sin_a, 1e-300))
    return axis2s * scale[:, None]


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


@dataclass
class _ImuState:
    filt: OrientationFilter
    q: np.ndarray | None = None  # current R_world_sensor, None until initialised
    last_t_s: float = -math.inf
    q_rel_last: np.ndarray | None = None  # a face site's last R_rel (w, x, y, z)
    bias_rads: np.ndarray = field(default_factory=lambda: np.zeros(3))
    accel_bias_mps2: np.ndarray = field(default_factory=lambda: np.zeros(3))  # tracked, relative to the reference
    face_accel_mps2: float = 0.0  # |lin_acc - its short mean| of the last frame: the face's own acceleration
    lin_acc_mean_mps2: np.ndarray = field(default_factory=lambda: np.zeros(3))  # slow mean: biases, not the face
    gated_frames: int = 0  # frames whose filter took the reference's tilt (introspection)
    gate_hold_frames: int = 0  # frames the gate stays shut after the face's acceleration was last above it
    level_frames_left: int = 0  # frames left in the levelling window after a restart from the rest pose
    level_site: np.ndarray = field(default_factory=lambda: np.zeros(3))  # sums over that window's
    level_ref: np.ndarray = field(default_factory=lambda: np.zeros(3))  # quiet frames, world axes
    level_count: int = 0


class FeatureExtractor:
    """Streaming features of every face site of ``layout`` relative to its head reference.

    ``update(frame)`` -> ``(features (n_face, 9) float32, valid (n_face,) bool)``; invalid rows are
    NaN. Frames must arrive in time order (the session's or a replay's frames)."""

    def __init__(self, layout: LayoutLike, calibration: CalibrationLike | None = None,
                 rate_hz: float = 60.0, settings: FeatureSettings | None = None) -> None:
        self.layout = layout
        self.calibration = calibration
        self.rate_hz = float(rate_hz)
        self.settings = settings if settings is not None else FeatureSettings()
        self.head_reference = layout.head_reference
        self.face_sites = tuple(layout.face_sites)
        n = len(self.face_sites)
        ref = layout.site(self.head_reference)
        self._R_H_ref = nominal_R_head_sensor(np.asarray(ref.normal))
        # lever arms (m) from the reference to each site, in the reference sensor's frame
        p_ref = np.asarray(ref.position_mm, dtype=np.float64)
        arms = []
        rel_guess = []
        for name in self.face_sites:
            s = layout.site(name)
            arms.append(self._R_H_ref.T @ ((np.asarray(s.position_mm, dtype=np.float64) - p_ref) * 1e-3))
            rel_guess.append(_quat_of_matrix(self._R_H_ref.T @ nominal_R_head_sensor(np.asarray(s.normal))))
        self._arm_prior_m = np.array(arms).reshape(n, 3)
        self._q_rel_guess = np.array(rel_guess).reshape(n, 4)
        self._neutral = self._calibrated_neutral()
        # lever arms the calibration's neutral step fitted on a rigid face replace the catalogue's
        # and are not refined: speech at a site corrupts an online fit (docs/features.md, version 6)
        fitted = self._calibrated_arms()
        self._arm_calibrated = np.array([name in fitted for name in self.face_sites], dtype=bool)
        for k in np.flatnonzero(self._arm_calibrated):
            self._arm_prior_m[k] = fitted[self.face_sites[k]]
        self._index_cache: tuple[tuple[str, ...], int, np.ndarray] | None = None
        self.reset()

    def _calibrated_arms(self) -> dict[str, np.ndarray]:
        """Lever arms (m, reference axes) the calibration's neutral step fitted, per face site; they
        belong to its neutral poses, so none without them."""
        getter = getattr(self.calibration, "neutral_lever_arms_m", None) if self._neutral is not None else None
        got = getter() if callable(getter) else None
        return {str(k): np.asarray(v, dtype=np.float64) for k, v in got.items()} if isinstance(got, dict) else {}

    def _calibrated_neutral(self) -> np.ndarray | None:
        """R_rel at rest per face site from the calibration's neutral capture, if it has one."""
        cal = self.calibration
        getter = getattr(cal, "neutral_quaternions", None) if cal is not None else None
        got = getter() if callable(getter) else None
        neutral: dict[str, Any] = dict(got) if isinstance(got, dict) else {}
        if not neutral:
            return None
        cal_ref = getattr(cal, "head_reference", None)
        if cal_ref is not None and cal_ref != self.head_reference:
            raise FeatureError(f"the calibration's neutral pose is relative to {cal_ref!r}, the layout's head "
                               f"reference is {self.head_reference!r}; run `imusic calibrate neutral` again")
        missing = [name for name in self.face_sites if name not in neutral]
        if missing:
            raise FeatureError(f"calibration has no neutral pose for face site {missing[0]!r}; "
                               "run `imusic calibrate neutral` again")
        qs = [np.asarray(neutral[name], dtype=np.float64) for name in self.face_sites]
        return np.array([q / np.linalg.norm(q) for q in qs])

    def reset(self) -> None:
        """Forget every filter, the captured rest and the lever-arm refinement."""
        n = len(self.face_sites)
        self._ref = _ImuState(OrientationFilter(self.rate_hz, self.settings.orientation))
        self._sites = [_ImuState(OrientationFilter(self.rate_hz, self.settings.orientation)) for _ in range(n)]
        self._omega_hist: list[np.ndarray] = []  # head reference rates of the last contiguous frames
        self._omega_hist_t: float = -math.inf
        # (t_s, lin_acc (n, 3) NaN where invalid, backward-difference alpha) of the last frames, for
        # lin_acc_delay_frames
        self._lin_hist: list[tuple[float, np.ndarray, np.ndarray]] = []
        self._q_rest: np.ndarray | None = None if self._neutral is None else self._neutral.copy()
        self._rest_R: np.ndarray | None = None if self._q_rest is None else quat_to_matrix(self._q_rest)
        self._rest_frames: list[np.ndarray] = []
        self._rest_gyro: list[np.ndarray] = []
        self._rest_still = True
        self._t_first_s: float | None = None
        self._arm_m = self._arm_prior_m.copy()
        w = self.settings.lever_arm_prior_weight
        self._arm_ktk = np.repeat(np.eye(3)[None] * w, n, axis=0)
        self._arm_ktd = self._arm_prior_m[:, :, None] * w
        self._align_H = np.zeros((n, 3, 3))
        self._align_seen = np.zeros(n)
        self._rest_follows = self._neutral is None
        self.frames_seen = 0

    # -- frame plumbing ------------------------------------------------------------------------

    def _indices(self, sites: tuple[str, ...]) -> tuple[int, np.ndarray]:
        cache = self._index_cache
        if cache is not None and cache[0] is sites:
            return cache[1], cache[2]
        if self.head_reference not in sites:
            raise FeatureError(f"the frames have no IMU at head reference site {self.head_reference!r} "
                               f"of layout {self.layout.name!r}; head-motion removal needs it")
        ref = sites.index(self.head_reference)
        idx = np.array([sites.index(s) if s in sites else -1 for s in self.face_sites], dtype=np.int64)
        self._index_cache = (sites, ref, idx)
        return ref, idx

    def _usable(self, frame: Frame, i: int) -> bool:
        if i < 0 or not bool(frame.valid[i]):
            return False
        return bool(np.isfinite(frame.gyro_rads[i]).all() and np.isfinite(frame.accel_mps2[i]).all())

    def _step(self, st: _ImuState, t_s: float, gyro: np.ndarray, accel: np.ndarray,
              mag: np.ndarray | None, q_ref: np.ndarray | None = None, k: int = -1) -> bool:
        """Update one IMU's filter (the reference when ``q_ref`` is None, else face site ``k``);
        restart it instead after a missing sample (see ``FeatureSettings.max_gap_s``). True when
        it restarted."""
        gap = t_s - st.last_t_s
        restart = st.q is None or gap > 1.5 / self.rate_hz
        if restart:
            st.filt.reset()
            if q_ref is None:  # the reference: tilt from its accelerometer, heading 0
                q0 = _tilt_quat(accel)
            elif st.q_rel_last is not None and gap <= self.settings.max_gap_s:
                q0 = quat_multiply(q_ref, st.q_rel_last)
            elif self._q_rest is not None:
                q0 = quat_multiply(q_ref, self._q_rest[k])
                st.level_frames_left = round(self.settings.level_window_s * self.rate_hz)
                st.level_site, st.level_ref, st.level_count = np.zeros(3), np.zeros(3), 0
            else:
                # start of a take (head still, rest not captured yet): the catalogue's nominal
                # mounting gives the heading relative to the head, the site's accelerometer its tilt
                q0 = quat_multiply(q_ref, self._q_rel_guess[k])
                up_world = quat_to_matrix(q0) @ (accel / np.linalg.norm(accel))
                q0 = quat_multiply(_align_quat(up_world, np.array([0.0, 0.0, 1.0])), q0)
            # q0 is already the orientation at t_s (the reference was updated for this frame):
            # an update now would rotate it by one more sample of gyro
            st.filt.set_quaternion(q0)
            st.q = st.filt.quaternion()
        else:
            st.q = st.filt.update(gyro - st.bias_rads, accel, mag)
        st.last_t_s = t_s
        return restart

    def update(self, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        if self.calibration is not None:
            frame = self.calibration.apply_frame(frame)
        ref_i, idx = self._indices(frame.sites)
        n = len(self.face_sites)
        t = float(frame.t_host_s)
        out = np.full((n, FEATURES_PER_SITE), np.nan, dtype=np.float32)
        valid = np.zeros(n, dtype=bool)
        self.frames_seen += 1
        mag = frame.mag_uT

        # head reference first: a restart of it invalidates every site's heading
        if not self._usable(frame, ref_i):
            return out, valid
        ref_restart = self._step(self._ref, t, frame.gyro_rads[ref_i], frame.accel_mps2[ref_i], mag[ref_i])
        if ref_restart:  # every site re-anchors to the new reference orientation
            for st in self._sites:
                st.q = None
        assert self._ref.q is not None
        q_ref = self._ref.q
        if self._t_first_s is None:
            self._t_first_s = t

        # head angular rate and its causal derivative (second-order backward difference)
        omega_r = frame.gyro_rads[ref_i] - self._ref.bias_rads
        if ref_restart or t - self._omega_hist_t > 1.5 / self.rate_hz:
            self._omega_hist = []
        self._omega_hist = (self._omega_hist + [omega_r])[-max(3, 2 * self.settings.lin_acc_delay_frames + 1):]
        self._omega_hist_t = t
        h = self._omega_hist[-3:]
        if len(h) == 3:
            alpha_r = (3.0 * h[2] - 4.0 * h[1] + h[0]) * (0.5 * self.rate_hz)
        elif len(h) == 2:
            alpha_r = (h[1] - h[0]) * self.rate_hz
        else:
            alpha_r = np.zeros(3)
        wx = _skew(omega_r)
        K = _skew(alpha_r) + wx @ wx  # rigid-body acceleration at lever arm l (ref frame) = K @ l
        rigid_r = self._arm_m @ K.T  # (n, 3)
        R_ref = quat_to_matrix(q_ref)

        site_ok = np.zeros(n, dtype=bool)
        have = [k for k in range(n) if self._sites[k].q is not None
                and t - self._sites[k].last_t_s <= 1.5 / self.rate_hz]
        shift = np.zeros((n, 3))
        gated: dict[int, np.ndarray] = {}  # site -> the tilt its filter is held at this frame
        accelerating: set[int] = set()  # sites whose face accelerates (the gate is open)
        f_ref = frame.accel_mps2[ref_i]
        gate = self.settings.facial_accel_gate_mps2
        hold_frames = int(self.settings.facial_accel_hold_s * self.rate_hz)
        if have:
            R_prev = quat_to_matrix(np.array([self._sites[k].q for k in have]))
            R_rel_prev = np.einsum("ji,njk->nik", R_ref, R_prev)
            if self.settings.lever_arm_to_filter:
                # the site's filter corrects its tilt from its specific force moved to the reference
                # point (rigid lever-arm term out): both filters then see the same vector, so their
                # tilt errors stay common to the head and cancel in R_rel
                shift[have] = np.einsum("nji,nj->ni", R_rel_prev, rigid_r[have])
            for j, k in enumerate(have):
                # while the face itself accelerates there (speech at the chin: m/s^2), the site's
                # accelerometer says nothing about its tilt: its filter gets the reference's
                # specific force in its own axes, i.e. the tilt R_rel already carries; held the
                # same way while levelling (see _level)
                st = self._sites[k]
                if gate is not None and st.face_accel_mps2 > gate:
                    st.gate_hold_frames = hold_frames
                    accelerating.add(k)
                elif st.gate_hold_frames > 0:
                    st.gate_hold_frames -= 1
                    accelerating.add(k)
                if k in accelerating:
                    st.gated_frames += 1
                if k in accelerating or st.level_frames_left > 0:
                    gated[k] = R_rel_prev[j].T @ f_ref
        for k in range(n):
            i = int(idx[k])
            if not self._usable(frame, i):
                continue
            st = self._sites[k]
            f_own = frame.accel_mps2[i] - st.accel_bias_mps2 - shift[k]
            f_in = gated[k] if k in gated else f_own
            if not self._step(st, t, frame.gyro_rads[i], f_in, mag[i], q_ref, k) and st.level_frames_left > 0:
                self._level(st, f_own, f_ref, q_ref, quiet=k not in accelerating)
            site_ok[k] = True
        if not site_ok.any():
            return out, valid

        ks = np.flatnonzero(site_ok)
        R_s = quat_to_matrix(np.array([self._sites[k].q for k in ks]))
        R_rel = np.einsum("ji,njk->nik", R_ref, R_s)  # R_ref^T R_s
        q_ref_conj = q_ref * np.array([1.0, -1.0, -1.0, -1.0])
        for k in ks:
            st = self._sites[k]
            assert st.q is not None
            st.q_rel_last = quat_multiply(q_ref_conj, st.q)
        if self._rest_R is None:
            self._capture_rest(frame, t, ref_i, idx, omega_r, R_rel, ks, site_ok)
            if self._rest_R is None:
                return out, valid
        g_s = frame.gyro_rads[idx[ks]] - np.array([self._sites[k].bias_rads for k in ks])
        if self.settings.align_relative:
            R_rel = self._align(ks, omega_r, g_s, R_rel, q_ref)
        assert self._rest_R is not None
        rest_R = self._rest_R[ks]
        f_s = frame.accel_mps2[idx[ks]] - np.array([self._sites[k].accel_bias_mps2 for k in ks])
        f_r = frame.accel_mps2[ref_i]
        rel_rot = _rotvecs(np.einsum("nji,njk->nik", rest_R, R_rel))
        rel_rate = g_s - np.einsum("nji,j->ni", R_rel, omega_r)
        diff = np.einsum("nij,nj->ni", R_rel, f_s) - f_r
        if self.settings.lever_arm_adapt:
            self._adapt_arms(ks, K, diff)
        lin_acc = np.einsum("nji,nj->ni", rest_R, diff - self._arm_m[ks] @ K.T)
        if self.settings.track_bias:
            self._track_bias(ks, rel_rate, lin_acc, R_rel, rest_R)
        if self.settings.tilt_tau_s > 0:
            self._hold_tilt(ks, rel_rate, R_rel, omega_r, R_ref)
        if self.settings.heading_gain > 0:
            self._hold_heading(ks, rel_rate, R_rel, omega_r, R_ref, q_ref_conj)
        smooth = min(1.0, 1.0 / (self.settings.facial_accel_mean_s * self.rate_hz))  # what is left after it is the face
        for j, k in enumerate(ks):
            st = self._sites[int(k)]
            st.lin_acc_mean_mps2 = st.lin_acc_mean_mps2 + smooth * (lin_acc[j] - st.lin_acc_mean_mps2)
            st.face_accel_mps2 = float(np.linalg.norm(lin_acc[j] - st.lin_acc_mean_mps2))
        out[ks, 0:3] = rel_rot
        out[ks, 3:6] = rel_rate
        out[ks, 6:9] = lin_acc
        # a site still levelling has the tilt it started with, not its own (see level_window_s)
        valid[ks] = [self._sites[int(k)].level_frames_left <= 0 for k in ks]
        out[~valid] = np.nan
        if self.settings.lin_acc_delay_frames:
            self._delay_lin_acc(t, out, valid, alpha_r)
        return out, valid

    def _delay_lin_acc(self, t: float, out: np.ndarray, valid: np.ndarray, alpha_r: np.ndarray) -> None:
        """Put in ``out`` (in place) the lin_acc of ``lin_acc_delay_frames`` frames ago, its
        angular-acceleration term redone with a central difference around that frame (see
        ``FeatureSettings.lin_acc_delay_frames``); a site without one is not valid this frame."""
        d = self.settings.lin_acc_delay_frames
        self._lin_hist = (self._lin_hist + [(t, out[:, 6:9].astype(np.float64), alpha_r)])[-(d + 1):]
        t_old, lin_old, alpha_old = self._lin_hist[0]
        if len(self._lin_hist) <= d or abs((t - t_old) * self.rate_hz - d) > 0.5:
            lin = np.full_like(lin_old, np.nan)  # a frame missed in between: nothing from then
        else:
            h = self._omega_hist  # contiguous frames, the last one this frame's
            if len(h) >= 2 * d + 1 and d == 2:
                alpha = (h[-5] - 8.0 * h[-4] + 8.0 * h[-2] - h[-1]) * (self.rate_hz / 12.0)
            elif len(h) >= d + 2:  # three points about frame t - d
                alpha = (h[-d] - h[-d - 2]) * (0.5 * self.rate_hz)
            else:  # the reference restarted since: keep that frame's own estimate
                alpha = alpha_old
            assert self._rest_R is not None
            # lin_acc carries -R_rest^T (alpha x l): swap the old alpha for the central one
            lin = lin_old - np.einsum("nji,nj->ni", self._rest_R, np.cross(alpha - alpha_old, self._arm_m))
        out[:, 6:9] = lin
        valid &= np.isfinite(lin).all(axis=1)
        out[~valid] = np.nan

    def _align(self, ks: np.ndarray, omega_r: np.ndarray, g_s: np.ndarray, R_rel: np.ndarray,
               q_ref: np.ndarray) -> np.ndarray:
        """Relative orientation from gyro correlation (see ``FeatureSettings.align_relative``)."""
        s = self.settings
        dt = 1.0 / self.rate_hz
        self._align_H[ks] = self._align_H[ks] * math.exp(-dt / s.align_tau_s) + np.einsum(
            "i,nj->nij", omega_r, g_s) * dt
        self._align_seen[ks] += float(omega_r @ omega_r) * dt
        if self.frames_seen % 6:  # every 0.1 s at 60 Hz is plenty for a slow correction
            return R_rel
        M = self._align_H[ks] + s.align_prior * R_rel
        U, _, Vt = np.linalg.svd(M)
        d = np.sign(np.linalg.det(U @ Vt))
        U[:, :, 2] *= d[:, None]
        R_fit = U @ Vt
        # keep only the part about the vertical: the accelerometers already fix the tilt (the
        # two would otherwise fight over any accelerometer error), the heading is what they miss
        up_ref = quat_to_matrix(q_ref)[2]  # world up in the reference frame
        phi = _rotvecs(np.einsum("nij,nkj->nik", R_fit, R_rel))  # R_fit R_rel^T
        phi_v = (phi @ up_ref)[:, None] * up_ref[None, :]
        R_new = np.einsum("nij,njk->nik", quat_to_matrix(_quats_of_rotvecs(phi_v)), R_rel)
        q_new = _quats_of_matrices(R_new)
        for j, k in enumerate(ks):
            st = self._sites[k]
            st.q = quat_multiply(q_ref, q_new[j])
            st.filt.set_quaternion(st.q)
            st.q_rel_last = q_new[j]
        if self._rest_follows and self._rest_R is not None:
            follow = ks[self._align_seen[ks] < s.align_settle]
            if len(follow):
                pos = np.searchsorted(ks, follow)
                D = np.einsum("nij,nkj->nik", R_new[pos], R_rel[pos])  # R_new R_old^T
                self._rest_R[follow] = D @ self._rest_R[follow]
                assert self._q_rest is not None
                self._q_rest[follow] = _quats_of_matrices(self._rest_R[follow])
        return R_new

    def _level(self, st: _ImuState, f_site: np.ndarray, f_ref: np.ndarray, q_ref: np.ndarray,
               quiet: bool) -> None:
        """Levelling after a restart from the rest pose (see ``FeatureSettings.level_window_s``).
        Meanwhile the site's filter is held at the tilt it started with (fed the reference's
        specific force, as when gated), so R_rel moves by the gyros alone and the disagreement
        between the two specific forces, summed in world axes over the window's quiet frames, is
        the starting tilt error; at the window's end one turn, the smallest that makes the sums
        agree (none about the vertical: the heading stays the rest pose's), takes it out."""
        assert st.q is not None
        if quiet:
            st.level_site = st.level_site + quat_to_matrix(st.q) @ f_site
            st.level_ref = st.level_ref + quat_to_matrix(q_ref) @ f_ref
            st.level_count += 1
        st.level_frames_left -= 1
        if st.level_frames_left > 0:
            return
        s = self.settings
        if st.level_count >= s.level_quiet_fraction * s.level_window_s * self.rate_hz:
            turn = _align_quat(st.level_site / np.linalg.norm(st.level_site),
                               st.level_ref / np.linalg.norm(st.level_ref))
            st.filt.set_quaternion(quat_multiply(turn, st.q))
            st.q = st.filt.quaternion()

    def _orientation_error_terms(self, quiet: np.ndarray, rel_rate: np.ndarray, R_rel: np.ndarray,
                                 omega_r: np.ndarray, R_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For the sites ``quiet``: u x rel_rate, |u|^2 + u0^2 (u_sq), and world up in the site's axes. A
        relative orientation off by delta gives rel_rate = true + delta x u (u: the head's rate in
        the site's axes), so the first over the second is one frame's least-squares delta, damped
        while the head is still (u0 = ``heading_u0_rads``)."""
        u = np.einsum("nji,j->ni", R_rel[quiet], omega_r)
        up = np.einsum("nji,j->ni", R_rel[quiet], R_ref[2])
        return np.cross(u, rel_rate[quiet]), np.einsum("ni,ni->n", u, u) + self.settings.heading_u0_rads ** 2, up

    def _hold_heading(self, ks: np.ndarray, rel_rate: np.ndarray, R_rel: np.ndarray, omega_r: np.ndarray,
                      R_ref: np.ndarray, q_ref_conj: np.ndarray) -> None:
        """Turn each quiet site's filter about gravity against the heading error its rel_rate
        shows (see ``FeatureSettings.heading_gain``); takes effect from the next frame."""
        s = self.settings
        quiet = np.flatnonzero(np.linalg.norm(rel_rate, axis=1) < s.heading_quiet_rads)
        if not len(quiet):
            return
        u_x_rate, u_sq, up = self._orientation_error_terms(quiet, rel_rate, R_rel, omega_r, R_ref)
        # (u x rel_rate) . up ~ (delta . up) |u|^2 for a head turning about a horizontal axis (a
        # turn about gravity says nothing of the heading)
        err = np.einsum("ni,ni->n", u_x_rate, up) / u_sq
        dq = _quats_of_rotvecs(-(s.heading_gain / self.rate_hz) * err[:, None] * up)
        for j, k in enumerate(ks[quiet]):
            st = self._sites[int(k)]
            assert st.q is not None
            st.filt.set_quaternion(quat_multiply(st.q, dq[j]))
            st.q = st.filt.quaternion()
            st.q_rel_last = quat_multiply(q_ref_conj, st.q)

    def _hold_tilt(self, ks: np.ndarray, rel_rate: np.ndarray, R_rel: np.ndarray, omega_r: np.ndarray,
                   R_ref: np.ndarray) -> None:
        """Move the accelerometer bias across gravity that each quiet site's filter took as tilt
        into its tracked bias (see ``FeatureSettings.tilt_tau_s``); takes effect from the next frame."""
        s = self.settings
        quiet = np.flatnonzero(np.linalg.norm(rel_rate, axis=1) < s.track_quiet_rads)
        if not len(quiet):
            return
        u_x_rate, u_sq, up = self._orientation_error_terms(quiet, rel_rate, R_rel, omega_r, R_ref)
        delta = u_x_rate / u_sq[:, None]
        delta_tilt = delta - np.sum(delta * up, axis=1)[:, None] * up
        # a filter levelled on f + b tilts its up axis by delta_t = (b x up) / g, so b = g (up x delta_t)
        bias_mps2 = GRAVITY_MPS2 * np.cross(up, delta_tilt)
        step = min(1.0, 1.0 / (s.tilt_tau_s * self.rate_hz))
        for j, k in enumerate(ks[quiet]):
            st = self._sites[int(k)]
            st.accel_bias_mps2 = st.accel_bias_mps2 + step * bias_mps2[j]

    def _track_bias(self, ks: np.ndarray, rel_rate: np.ndarray, lin_acc: np.ndarray, R_rel: np.ndarray,
                    rest_R: np.ndarray) -> None:
        """Quiet frames pull each site's gyro and accelerometer biases (relative to the head
        reference) towards the means of rel_rate and lin_acc (see ``FeatureSettings.track_bias``)."""
        s = self.settings
        quiet = np.linalg.norm(rel_rate, axis=1) < s.track_quiet_rads
        if not quiet.any():
            return
        step = min(1.0, 1.0 / (s.track_tau_s * self.rate_hz))
        still = quiet & (np.linalg.norm(lin_acc, axis=1) < s.track_quiet_mps2)
        # lin_acc is in the rest frame: an accelerometer error e shows there as rest_R^T R_rel e
        accel_err = np.einsum("nji,njk,nk->ni", R_rel, rest_R, lin_acc)
        if s.track_accel_along_gravity:  # across gravity a bias is indistinguishable from tilt
            assert self._ref.q is not None
            up_s = np.einsum("nji,j->ni", R_rel, quat_to_matrix(self._ref.q)[2])  # world up, site axes
            accel_err = np.sum(accel_err * up_s, axis=1)[:, None] * up_s
        for j in np.flatnonzero(quiet):
            st = self._sites[int(ks[j])]
            st.bias_rads = st.bias_rads + step * rel_rate[j]
            if still[j]:
                st.accel_bias_mps2 = st.accel_bias_mps2 + step * accel_err[j]

    def _adapt_arms(self, ks: np.ndarray, K: np.ndarray, diff: np.ndarray) -> None:
        """Accumulate the normal equations of diff = K @ arm (+ facial acceleration, zero mean) of
        the sites whose arm the calibration did not fit."""
        refine = ~self._arm_calibrated[ks]
        if not refine.all():
            ks, diff = ks[refine], diff[refine]
            if not len(ks):
                return
        ktk = K.T @ K
        if float(np.trace(ktk)) < 1.0:  # too little rotation to say anything about the arm
            return
        dt = 1.0 / self.rate_hz
        self._arm_ktk[ks] += ktk * dt
        self._arm_ktd[ks] += (K.T @ diff.T).T[:, :, None] * dt
        self._arm_m[ks] = np.linalg.solve(self._arm_ktk[ks], self._arm_ktd[ks])[:, :, 0]

    def _capture_rest(self, frame: Frame, t: float, ref_i: int, idx: np.ndarray, omega_r: np.ndarray,
                      R_rel: np.ndarray, ks: np.ndarray, site_ok: np.ndarray) -> None:
        """Collect the neutral rest from the first still window (see FeatureSettings)."""
        s = self.settings
        assert self._t_first_s is not None
        searching = t - self._t_first_s < s.rest_search_s
        still = float(np.linalg.norm(omega_r)) < s.still_rads
        if not site_ok.all() or (searching and not still):
            self._rest_frames, self._rest_gyro, self._rest_still = [], [], True
            return
        # the bias estimate needs a truly still window (a slow head turn is not a bias)
        self._rest_still &= bool(np.abs(omega_r).max() < s.bias_still_rads)
        self._rest_frames.append(R_rel.copy())
        gyros = np.concatenate([frame.gyro_rads[ref_i][None], frame.gyro_rads[idx[ks]]])
        self._rest_gyro.append(gyros)
        if len(self._rest_frames) < max(1, round(s.rest_window_s * self.rate_hz)):
            return
        q_rest = np.array([_mean_quat([_quat_of_matrix(Rn[j]) for Rn in self._rest_frames])
                           for j in range(len(self.face_sites))])
        if s.gyro_bias_at_rest and self._rest_still:
            bias = np.mean(self._rest_gyro, axis=0)
            self._ref.bias_rads = self._ref.bias_rads + bias[0]
            for j, st in enumerate(self._sites):
                st.bias_rads = st.bias_rads + bias[1 + j]
        self._q_rest = q_rest
        self._rest_R = quat_to_matrix(q_rest)
        self._rest_frames, self._rest_gyro = [], []

    # -- introspection -------------------------------------------------------------------------

    @property
    def rest_quaternions(self) -> np.ndarray | None:
        """(n_face, 4) R_rel at rest (w, x, y, z), None until known."""
        return None if self._q_rest is None else self._q_rest.copy()

    @property
    def lever_arms_m(self) -> np.ndarray:
        """(n_face, 3) current lever arms from the head reference, in its sensor frame."""
        return self._arm_m.copy()

    def spec(self) -> dict[str, Any]:
        return feature_spec(self.layout, self.rate_hz, self.settings)


def feature_spec(layout: LayoutLike, rate_hz: float = 60.0,
                 settings: FeatureSettings | None = None) -> dict[str, Any]:
    """The metadata a model records with its weights: enough to refuse features of another
    definition, layout, site order or rate."""
    s = settings if settings is not None else FeatureSettings()
    sites = list(layout.face_sites)
    return {
        "feature_version": FEATURE_VERSION,
        "layout": layout.name,
        "head_reference": layout.head_reference,
        "sites": sites,
        "features_per_site": FEATURES_PER_SITE,
        "names": list(FEATURE_NAMES),
        "units": list(FEATURE_UNITS),
        "columns": [f"{site}.{name}" for site in sites for name in FEATURE_NAMES],
        "rate_hz": float(rate_hz),
        "frames": {"rel_rot": "site rest frame", "rel_rate": "site frame",
                   "lin_acc": "site rest frame"},
        "settings": s.to_dict(),
    }


def features_of_block(block: FrameBlock | Iterable[Frame], layout: LayoutLike,
                      calibration: CalibrationLike | None = None, rate_hz: float = 60.0,
                      settings: FeatureSettings | None = None,
                      extractor: FeatureExtractor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(T, n_face, 9) float32 features and (T, n_face) valid of consecutive frames: a loop over
    ``FeatureExtractor.update`` (the same code path as runtime). Pass ``extractor`` to continue a
    stream across blocks."""
    ext = extractor if extractor is not None else FeatureExtractor(layout, calibration, rate_hz, settings)
    frames = block.frames() if isinstance(block, FrameBlock) else block
    feats: list[np.ndarray] = []
    valid: list[np.ndarray] = []
    for frame in frames:
        f, v = ext.update(frame)
        feats.append(f)
        valid.append(v)
    n = len(ext.face_sites)
    if not feats:
        return np.zeros((0, n, FEATURES_PER_SITE), dtype=np.float32), np.zeros((0, n), dtype=bool)
    return np.stack(feats), np.stack(valid)
