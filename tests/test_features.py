"""Orientation wrapper and the head-motion-removed features (imusic.orientation, imusic.features).

Synthetic rigid-body data (exact specific force and angular rate of IMUs on a moving head, made
here), the real recordings of ../shared/data/real-imu for the orientation filter, and an emulated
end-to-end check through the real firmware (imusic.sim.rig.record_scenario) for the issue's targets.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from testenv import REAL_IMU

from imusic.align import Frame, FrameBlock
from imusic.errors import UserError
from imusic.features import (
    FEATURE_NAMES,
    FEATURE_VERSION,
    FEATURES_PER_SITE,
    FeatureExtractor,
    FeatureSettings,
    feature_spec,
    features_of_block,
    nominal_R_head_sensor,
)
from imusic.orientation import OrientationFilter, OrientationSettings, orientation_of_arrays, quat_to_matrix
from imusic.placement import load_layout

RATE_HZ = 60.0
G_WORLD = np.array([0.0, 0.0, 9.80665])  # specific force of a body at rest, world frame (z up)


# --- a rigid head with IMUs, exact signals -------------------------------------------------------

def _smoothstep(t: np.ndarray, t0: float, ramp_s: float = 2.0) -> np.ndarray:
    x = np.clip((t - t0) / ramp_s, 0.0, 1.0)
    return x * x * x * (10 - 15 * x + 6 * x * x)  # C2: the derivatives stay continuous


def head_pose(t: np.ndarray, amp_rad=(0.3, 0.4, 0.8), freq_hz=(0.7, 1.1, 0.45), trans_m: float = 0.05,
              still_s: float = 2.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """R_world_head (T, 3, 3), p_world_m (T, 3): still for ``still_s``, then sums of sines."""
    rng = np.random.default_rng(seed)
    ph = rng.uniform(0, 2 * np.pi, (3, 3))
    env = _smoothstep(t, still_s)[:, None]
    rv = np.stack([amp_rad[i] * (np.sin(2 * np.pi * freq_hz[i] * t + ph[0, i])
                                 + 0.3 * np.sin(2 * np.pi * 2.3 * freq_hz[i] * t + ph[1, i])) for i in range(3)], -1)
    p = np.stack([trans_m * np.sin(2 * np.pi * 0.5 * t + ph[2, i]) for i in range(3)], -1)
    return Rotation.from_rotvec(rv * env).as_matrix(), p * env


def site_signals(t, pos_H_m, R_H_S, site_rot=None, **pose_kw) -> tuple[np.ndarray, np.ndarray]:
    """Specific force and angular rate in the sensor frame by central differences (h = 0.1 ms).
    ``site_rot(t)`` -> (T, 3, 3): an extra rotation of the sensor relative to the head (in H)."""
    h = 1e-4

    def pose(tt):
        R_wh, p = head_pose(tt, **pose_kw)
        R_hs = R_H_S if site_rot is None else site_rot(tt) @ R_H_S
        return R_wh @ R_hs, p + R_wh @ pos_H_m

    R0, p0 = pose(t)
    Rp, pp = pose(t + h)
    Rm, pm = pose(t - h)
    acc_w = (pp - 2 * p0 + pm) / h ** 2
    f = np.einsum("tji,tj->ti", R0, acc_w + G_WORLD)
    W = np.einsum("tji,tjk->tik", R0, (Rp - Rm) / (2 * h))  # R^T dR/dt = [omega]x
    return f, np.stack([W[:, 2, 1], W[:, 0, 2], W[:, 1, 0]], -1)


def rigid_block(layout, duration_s: float = 14.0, site_rot=None, noise: bool = False, scale: float = 1.0,
                **pose_kw) -> FrameBlock:
    """Every IMU of ``layout`` on a rigid head (a face ``scale`` times the catalogue's size)."""
    t = np.arange(int(duration_s * RATE_HZ)) / RATE_HZ
    n = len(layout.sites)
    acc = np.zeros((len(t), n, 3))
    gyr = np.zeros((len(t), n, 3))
    rng = np.random.default_rng(1)
    for i, name in enumerate(layout.sites):
        site = layout.site(name)
        rot = None if site_rot is None else site_rot.get(name)
        f, w = site_signals(t, np.asarray(site.position_mm) * 1e-3 * scale, nominal_R_head_sensor(site.normal), rot,
                            **pose_kw)
        acc[:, i] = f + (0.009 * rng.standard_normal(f.shape) if noise else 0.0)  # ~QMI8658 white noise
        gyr[:, i] = w + (0.0016 * rng.standard_normal(w.shape) if noise else 0.0)
    return FrameBlock(t, acc, gyr, np.full_like(acc, np.nan), np.ones((len(t), n), bool),
                      tuple(layout.sites), tuple(layout.imu(s).node_id for s in layout.sites))


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


@pytest.fixture(scope="module")
def layout():
    return load_layout("imusic")


@pytest.fixture(scope="module")
def moving(layout):
    block = rigid_block(layout)
    return block, *features_of_block(block, layout)


# --- orientation on real data ---------------------------------------------------------------------

def _inclination_diff_deg(qa: np.ndarray, qb: np.ndarray) -> np.ndarray:
    za, zb = quat_to_matrix(qa)[:, 2, :], quat_to_matrix(qb)[:, 2, :]  # world up in sensor axes
    return np.degrees(np.arccos(np.clip(np.einsum("ti,ti->t", za, zb), -1.0, 1.0)))


def test_orientation_agrees_with_vqf_on_real_recordings():
    vqf = pytest.importorskip("vqf", reason="vqf (dev-only cross-check) not installed")
    npz, csv = REAL_IMU / "vqf-imu-data.npz", REAL_IMU / "xio-fusion-sensor-data.csv"
    if not npz.exists() or not csv.exists():
        pytest.skip(f"real IMU recordings absent from {REAL_IMU}")
    d = np.load(npz)
    runs = [(d["gyr"].astype(np.float64), d["acc"].astype(np.float64), float(d["sampling_rate"]))]
    rows = np.loadtxt(csv, delimiter=",", skiprows=1)
    runs.append((np.radians(rows[:, 1:4]), rows[:, 4:7] * 9.80665, 1.0 / float(np.median(np.diff(rows[:, 0])))))
    for gyr, acc, rate in runs:
        ours = orientation_of_arrays(gyr, acc, rate)
        ref = vqf.offlineVQF(np.ascontiguousarray(gyr), np.ascontiguousarray(acc), None, 1.0 / rate, None)["quat6D"]
        diff = _inclination_diff_deg(ours, ref)[int(3 * rate):]  # both past their start-up
        assert np.percentile(diff, 95) < 2.5, np.percentile(diff, 95)
        assert diff.max() < 8.0, diff.max()
        # and the filter really moved: the recording's inclination changes by far more than that
        tilt = _inclination_diff_deg(ref, np.repeat(ref[:1], len(ref), axis=0))
        assert tilt.max() > 30.0


def test_orientation_filter_units_and_convention():
    filt = OrientationFilter(100.0, OrientationSettings(startup=False))  # start-up holds the heading
    for _ in range(100):  # +z at 90 deg/s for 1 s, resting flat: yaw +90 deg about world z
        q = filt.update(np.array([0.0, 0.0, math.pi / 2]), np.array([0.0, 0.0, 9.80665]))
    R = quat_to_matrix(q)
    assert np.allclose(R @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=0.02)
    filt.reset()
    assert np.allclose(filt.quaternion(), [1.0, 0.0, 0.0, 0.0])


# --- synthetic rigid-body features ----------------------------------------------------------------

def test_rigid_head_gives_features_near_zero(layout, moving):
    block, feats, valid = moving
    assert feats.shape == (len(block), len(layout.face_sites), FEATURES_PER_SITE)
    assert feats.dtype == np.float32
    assert valid[int(2 * RATE_HZ):].all()  # rest captured in the still first second(s)
    f = feats[valid]
    assert _rms(f[:, 0:3]) < 0.003  # rad
    assert _rms(f[:, 3:6]) < 0.01  # rad/s
    assert _rms(f[:, 6:9]) < 0.05  # m/s^2
    # what was removed is large: the raw gyros and accelerometers vary by far more
    assert _rms(block.gyro_rads[:, 1:] - block.gyro_rads[:1, 1:]) > 0.5
    assert _rms(block.accel_mps2[:, 1:] - block.accel_mps2[:1, 1:]) > 2.0


def test_known_relative_rotation_is_recovered(layout):
    site = layout.face_sites[3]
    R_H_S = nominal_R_head_sensor(layout.site(site).normal)
    axis_H = R_H_S @ np.array([0.6, 0.0, 0.8])  # a tilted axis in the sensor's rest frame

    def angle(t):
        return 0.15 * _smoothstep(t, 3.0, 1.0) * np.sin(2 * np.pi * 0.4 * t)

    def rot(t):
        return Rotation.from_rotvec(angle(t)[:, None] * axis_H).as_matrix()

    block = rigid_block(layout, 12.0, site_rot={site: rot})
    feats, valid = features_of_block(block, layout)
    k = layout.face_sites.index(site)
    expect = angle(block.t_host_s)[:, None] * np.array([0.6, 0.0, 0.8])
    got = feats[:, k, 0:3]
    ok = valid[:, k]
    assert ok[int(3 * RATE_HZ):].all()
    assert np.abs(expect[ok]).max() > 0.1
    assert np.abs(got[ok] - expect[ok]).max() < 0.01
    others = np.delete(feats, k, axis=1)[valid.all(axis=1)]
    assert np.abs(others[:, :, 0:3]).max() < 0.02  # the rest of the face stays put


def test_lever_arm_removal_during_fast_turns(layout):
    # fast yaw/pitch turns: the far site (largest lever arm) sees large rigid-body accelerations
    block = rigid_block(layout, 10.0, amp_rad=(0.3, 0.6, 1.2), freq_hz=(0.8, 1.2, 0.6), trans_m=0.0)
    feats, valid = features_of_block(block, layout)
    ref = layout.site(layout.head_reference)
    far = max(layout.face_sites, key=lambda s: np.linalg.norm(layout.site(s).position_mm - ref.position_mm))
    k, i, r = layout.face_sites.index(far), layout.sites.index(far), layout.sites.index(layout.head_reference)
    # the uncorrected difference with the true relative rotation: gravity cancels, the arm does not
    R_rel = nominal_R_head_sensor(ref.normal).T @ nominal_R_head_sensor(layout.site(far).normal)
    raw = block.accel_mps2[:, i] @ R_rel.T - block.accel_mps2[:, r]
    ok = valid[:, k]
    assert _rms(raw[ok]) > 1.0
    assert _rms(feats[ok, k, 6:9]) < 0.1 * _rms(raw[ok])


def test_noisy_rigid_head_stays_within_noise(layout):
    block = rigid_block(layout, 10.0, noise=True)
    feats, valid = features_of_block(block, layout)
    f = feats[valid]
    assert _rms(f[:, 3:6]) < 4 * 0.0016  # a few times the gyro noise
    assert _rms(f[:, 6:9]) < 6 * 0.009


def test_invalid_imus_and_gaps(layout):
    block = rigid_block(layout, 12.0)
    valid_in = block.valid.copy()
    acc = block.accel_mps2.copy()
    gyr = block.gyro_rads.copy()
    site = layout.face_sites[0]
    i = layout.sites.index(site)
    r = layout.sites.index(layout.head_reference)
    short = slice(300, 305)  # 83 ms: bridged
    long = slice(420, 480)  # 1 s: the site's filter restarts from the head's orientation
    head_gap = slice(560, 565)
    for sl, col in ((short, i), (long, i), (head_gap, r)):
        valid_in[sl, col] = False
        acc[sl, col] = np.nan
        gyr[sl, col] = np.nan
    gappy = FrameBlock(block.t_host_s, acc, gyr, block.mag_uT, valid_in, block.sites, block.node_ids)
    feats, valid = features_of_block(gappy, layout)
    k = layout.face_sites.index(site)
    assert not valid[short, k].any() and not valid[long, k].any()
    assert np.isnan(feats[short, k]).all()
    assert not valid[head_gap].any()  # no head reference: no site has features
    # nor the next lin_acc_delay_frames frames, whose lin_acc would be the gap's
    d = FeatureSettings().lin_acc_delay_frames
    assert d == 2 and not valid[head_gap.stop:head_gap.stop + d].any()
    assert valid[head_gap.stop + d:, :].all()
    assert valid[200:300].all()
    after = feats[long.stop:, k][valid[long.stop:, k]]
    assert _rms(after[:, 0:3]) < 0.01 and _rms(after[:, 6:9]) < 0.1


def test_features_of_block_is_the_update_loop(layout, moving):
    block, feats, valid = moving
    ext = FeatureExtractor(layout)
    looped = [ext.update(frame) for frame in block.frames()]
    assert np.array_equal(np.stack([f for f, _ in looped]), feats, equal_nan=True)
    assert np.array_equal(np.stack([v for _, v in looped]), valid)
    # reset really forgets: a second pass over the same frames gives the same arrays
    ext.reset()
    again = np.stack([ext.update(frame)[0] for frame in block.frames()])
    assert np.array_equal(again, feats, equal_nan=True)


def test_version_and_spec(layout):
    assert FEATURE_VERSION == 10 and FEATURES_PER_SITE == 9 == len(FEATURE_NAMES)
    spec = feature_spec(layout, RATE_HZ)
    assert spec["feature_version"] == FEATURE_VERSION
    assert spec["layout"] == layout.name and spec["head_reference"] == layout.head_reference
    assert spec["sites"] == list(layout.face_sites)
    assert len(spec["columns"]) == 9 * len(layout.face_sites)
    assert spec["columns"][0] == f"{layout.face_sites[0]}.rel_rot_x_rad"
    assert spec["rate_hz"] == RATE_HZ and "orientation" in spec["settings"]
    assert FeatureExtractor(layout).spec() == spec
    assert feature_spec(layout, 100.0) != spec
    assert spec["settings"]["lin_acc_delay_frames"] == 2
    with pytest.raises(UserError, match="lin_acc_delay_frames"):
        FeatureSettings(lin_acc_delay_frames=3)


def test_frames_without_head_reference_are_refused(layout):
    sites = tuple(s for s in layout.sites if s != layout.head_reference)
    n = len(sites)
    frame = Frame(0.0, np.zeros((n, 3)), np.zeros((n, 3)), np.zeros((n, 3)), np.ones(n, bool), sites,
                  tuple(0 for _ in sites))
    with pytest.raises(UserError, match=layout.head_reference):
        FeatureExtractor(layout).update(frame)


def _nominal_calibration(layout, arm_scale: float | None = None):
    """A calibration whose neutral poses are the catalogue's nominal mountings, with lever arms of a
    face ``arm_scale`` times the catalogue's when given."""
    from imusic.calibration import Calibration
    from imusic.orientation import matrix_to_quat

    cal = Calibration()
    ref = layout.site(layout.head_reference)
    R_H_ref = nominal_R_head_sensor(ref.normal)
    for s in layout.face_sites:
        q = matrix_to_quat(R_H_ref.T @ nominal_R_head_sensor(layout.site(s).normal))
        arm = None if arm_scale is None else (
            R_H_ref.T @ (np.asarray(layout.site(s).position_mm) - np.asarray(ref.position_mm)) * 1e-3 * arm_scale)
        cal.set_neutral(s, q, head_reference=layout.head_reference, source="test", seconds=1.0, lever_arm_m=arm)
    return cal


def test_calibrated_neutral_is_used_without_capture(layout):
    """A calibration with a neutral pose: no still capture is needed; features are valid once each
    site's filter has levelled its tilt from the rest pose (``level_window_s``, 1 s) and lin_acc
    comes from after it (``lin_acc_delay_frames`` later)."""
    from imusic.calibration import Calibration

    cal = _nominal_calibration(layout)
    block = rigid_block(layout, 6.0)
    feats, valid = features_of_block(block, layout, cal)
    level = round(FeatureSettings().level_window_s * RATE_HZ) + FeatureSettings().lin_acc_delay_frames
    assert not valid[:level].any() and valid[level:].all()
    assert np.isnan(feats[:level]).all()
    assert _rms(feats[level:, :, 0:3]) < 0.003
    other = Calibration()
    other.set_neutral(layout.face_sites[0], np.array([1.0, 0, 0, 0]), head_reference=layout.face_sites[1],
                      source="test", seconds=1.0)
    with pytest.raises(UserError, match="neutral"):
        FeatureExtractor(layout, other)


def test_calibrated_lever_arms_replace_the_catalogues(layout):
    """A face 8 % larger than the catalogue's: the catalogue's lever arms are centimetres short of
    the truth and the rigid-body term leaves the head's angular acceleration in lin_acc. With the
    arms a calibration's neutral step fitted, lin_acc is as small as on a face of the catalogue's
    size, and those arms are used as they are, not refined during the take."""
    scale = 1.08
    block = rigid_block(layout, 10.0, scale=scale)
    t = block.t_host_s
    cals = {False: _nominal_calibration(layout), True: _nominal_calibration(layout, arm_scale=scale)}
    late = t > 4.0
    rms = {}
    for with_arms, cal in cals.items():
        fx = FeatureExtractor(layout, cal, settings=FeatureSettings(lever_arm_prior_weight=1e6))
        feats = np.array([fx.update(frame)[0] for frame in block.frames()])
        rms[with_arms] = _rms(feats[late, :, 6:9])
        if with_arms:
            fitted = cal.neutral_lever_arms_m()
            assert np.allclose(fx.lever_arms_m, [fitted[s] for s in layout.face_sites], atol=1e-9)
    # the floor: the catalogue's own face (its arms exact), where what is left is the angular
    # acceleration's causal estimate and the filters, not the arms
    floor_feats, _ = features_of_block(rigid_block(layout, 10.0), layout, cals[False],
                                       settings=FeatureSettings(lever_arm_prior_weight=1e6))
    floor = _rms(floor_feats[late, :, 6:9])
    assert rms[False] > 2.5 * rms[True], (rms, floor)  # an 8 % arm error on a turning head
    assert rms[True] < 1.15 * floor, (rms, floor)  # what is left grows with the arm: 8 % here


def test_lin_acc_comes_two_frames_late_with_a_central_angular_acceleration(layout):
    """A frame's lin_acc is that of ``lin_acc_delay_frames`` (2) frames earlier, its rigid-body term
    from a central difference of the head's rate: on a rigid head with exact arms what is left is
    a third of what the backward difference leaves; and a one-frame jolt at a site shows in lin_acc
    two rows later, while rel_rot and rel_rate stay the frame's own."""
    block = rigid_block(layout, 10.0)
    late = block.t_host_s > 4.0
    exact_arms = {"lever_arm_prior_weight": 1e6}
    causal, _ = features_of_block(block, layout, settings=FeatureSettings(lin_acc_delay_frames=0, **exact_arms))
    central, valid = features_of_block(block, layout, settings=FeatureSettings(**exact_arms))
    assert _rms(central[late, :, 6:9]) < 0.5 * _rms(causal[late, :, 6:9])
    # the jolt: 2 m/s^2 along one face site's x for one frame, 7 s in
    acc = block.accel_mps2.copy()
    site = layout.face_sites[3]
    k, i, at = layout.face_sites.index(site), layout.sites.index(site), 420
    acc[at, i, 0] += 2.0
    jolted = FrameBlock(block.t_host_s, acc, block.gyro_rads, block.mag_uT, block.valid, block.sites, block.node_ids)
    for settings, delay in ((FeatureSettings(lin_acc_delay_frames=0, **exact_arms), 0), (FeatureSettings(**exact_arms), 2)):
        before, _ = features_of_block(block, layout, settings=settings)
        after, _ = features_of_block(jolted, layout, settings=settings)
        jump = np.nan_to_num(np.abs(after[:, k, 6:9] - before[:, k, 6:9]).max(axis=1))
        assert int(np.argmax(jump)) == at + delay and jump[at + delay] > 1.5, (delay, jump[at - 1:at + 4])
        # the jolt tips the site's filter a little in the frame itself: rotations move from there
        moved = np.flatnonzero(np.nan_to_num(np.abs(after[:, k, :6] - before[:, k, :6]).max(axis=1)) > 0)
        assert moved[0] == at, (delay, moved[:3])
    assert valid[late].all()


def test_relative_heading_is_held_when_the_take_starts_off_neutral(layout):
    """A face already off its calibrated neutral on the first frame (a held smile), turned about the
    vertical: the filter starts at the neutral, the accelerometers cannot see a heading, and without
    the gyro heading hold the error stays and leaks the head's rate into rel_rate."""
    cal = _nominal_calibration(layout)
    site = layout.face_sites[2]
    held = Rotation.from_rotvec([0.0, 0.0, 0.03]).as_matrix()  # 0.03 rad about the head's vertical

    def rot(t):
        return np.broadcast_to(held, (len(t), 3, 3))

    block = rigid_block(layout, 16.0, site_rot={site: rot})
    k = layout.face_sites.index(site)
    expect = Rotation.from_matrix(nominal_R_head_sensor(layout.site(site).normal).T @ held
                                  @ nominal_R_head_sensor(layout.site(site).normal)).as_rotvec()
    late = block.t_host_s > 10.0
    errs = {}
    for name, settings in (("held", FeatureSettings()), ("off", FeatureSettings(heading_gain=0.0))):
        feats, valid = features_of_block(block, layout, cal, settings=settings)
        assert valid[late, k].all()
        errs[name] = (_rms(feats[late, k, 0:3] - expect), _rms(feats[late, k, 3:6]))
    assert errs["off"][0] > 0.01  # the heading part of the held pose was never seen
    assert errs["held"][0] < errs["off"][0] / 4, errs
    assert errs["held"][1] < errs["off"][1] / 2, errs  # and the head's rate no longer leaks


def test_tilt_is_levelled_when_the_take_starts_off_neutral(layout):
    """A face already off its calibrated neutral by a tilt on the first frame (raised brows): the
    filter starts at the neutral, and until it has taken the tilt up from the accelerometer,
    gravity times the tilt shows in lin_acc. Levelled once after the first second, lin_acc is at
    the rigid floor from then on and rel_rot shows the held pose."""
    cal = _nominal_calibration(layout)
    site = layout.face_sites[0]
    held = Rotation.from_rotvec([0.02, 0.0, 0.0]).as_matrix()  # 0.02 rad about the head's x axis: a tilt

    def rot(t):
        return np.broadcast_to(held, (len(t), 3, 3))

    block = rigid_block(layout, 6.0, site_rot={site: rot})
    k = layout.face_sites.index(site)
    R_H_S = nominal_R_head_sensor(layout.site(site).normal)
    expect = Rotation.from_matrix(R_H_S.T @ held @ R_H_S).as_rotvec()
    t = block.t_host_s
    after = (t > 1.1) & (t < 4.0)  # the window is the first second
    got = {}
    for name, settings in (("levelled", FeatureSettings()), ("off", FeatureSettings(level_window_s=0.0))):
        feats, valid = features_of_block(block, layout, cal, settings=settings)
        assert valid[after, k].all()
        got[name] = (_rms(feats[after, k, 6:9]), _rms(feats[after, k, 0:3] - expect))
    floor_feats, _ = features_of_block(rigid_block(layout, 6.0), layout, cal)
    floor = _rms(floor_feats[after, k, 6:9])
    assert got["off"][0] > 0.025, got  # g x 0.02 rad is 0.2 m/s^2 at first, decaying over seconds
    assert got["levelled"][0] < 2.0 * floor + 0.005, (got, floor)
    assert got["levelled"][1] < got["off"][1] / 4, got


# --- emulated end to end: the real firmware through the simulator, known truth ------------------

def _bench():
    import importlib.util

    from testenv import REPO

    spec = importlib.util.spec_from_file_location("bench_features", REPO / "bench" / "bench_features.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _chin_acceleration_passed(block, layout, cal, settings) -> float:
    """RMS of the mentalis lin_acc (its facial acceleration) on the frames its filter took its own
    accelerometer: what speech leaves in the tilt estimate."""
    ext = FeatureExtractor(layout, cal, settings=settings)
    k = layout.face_sites.index("mentalis")
    passed = []
    for frame in block.frames():
        before = ext._sites[k].gated_frames if ext._sites else 0
        feats, valid = ext.update(frame)
        if valid[k] and ext._sites[k].gated_frames == before:
            passed.append(feats[k, 6:9])
    return _rms(np.array(passed))


def test_emulated_head_motion_removal(micropython, tmp_path, layout):
    """Neutral and neutral-through-head-motion takes and an expressive walk of one rig, with its
    emulated calibration (gyro, accel, neutral). A neutral face through +-90 degree turns and a walk
    gives features within the sensor noise of rest (the issue's target, stated as an RMS ratio,
    docs/features.md); without the calibration's neutral step the same takes leak far above it. The
    correlation target is not met (its chance level at this take length is above 0.1): guarded
    against the raw signals."""
    bf = _bench()
    seed = 3
    takes = {sc: bf.record(sc, seed, 20.0, tmp_path) for sc in ("neutral", "neutral_head_motion", "expressions_walk")}
    cal = bf.rig_calibration(seed, tmp_path)

    corr = bf.correlation_stats(takes["expressions_walk"], layout, cal)
    assert corr["before_p95"] > 0.9  # raw face IMU signals are mostly head motion
    assert corr["after_p95"] < corr["before_p95"] - 0.3
    rest = bf.group_rms(takes["neutral"], layout, cal)
    moving = bf.group_rms(takes["neutral_head_motion"], layout, cal)
    ratios = {g: moving[g] / rest[g] for g in rest}
    # the facial-acceleration gate never holds for a neutral face, however the head moves; an
    # expressive take's chin (speech) does trigger it
    gated = {}
    for sc in ("neutral_head_motion", "expressions_walk"):
        ext = FeatureExtractor(layout, cal)
        features_of_block(bf.load_block(takes[sc]), layout, extractor=ext)
        gated[sc] = [st.gated_frames for st in ext._sites]
    assert sum(gated["neutral_head_motion"]) == 0, gated
    assert gated["expressions_walk"][layout.face_sites.index("mentalis")] > 0, gated
    # the gate's hold: what speech at the chin still passes to the filter, with and without it
    passed = {name: _chin_acceleration_passed(bf.load_block(takes["expressions_walk"]), layout, cal, settings)
              for name, settings in (("hold", FeatureSettings()), ("off", FeatureSettings(facial_accel_hold_s=0.0)))}
    assert passed["hold"] < passed["off"] / 2, passed
    assert max(ratios.values()) < 1.4, ratios  # measured 0.9-1.04
    assert rest["rel_rate"] < 2 * 0.0023  # rest itself is at the two gyros' noise
    # uncalibrated (the extractor's own rest and bias only): the gyro gain and accelerometer rotation
    # errors leak head motion far above the noise
    raw_rest = bf.group_rms(takes["neutral"], layout)
    raw_moving = bf.group_rms(takes["neutral_head_motion"], layout)
    assert raw_moving["rel_rate"] / raw_rest["rel_rate"] > 3 * ratios["rel_rate"]
    # the same take without removal: the face IMUs' gyros move ~100x more than at rest
    face = [layout.sites.index(s) for s in layout.face_sites]
    gyro_rest = bf.load_block(takes["neutral"]).gyro_rads[:, face]
    gyro_moving = bf.load_block(takes["neutral_head_motion"]).gyro_rads[:, face]
    assert np.nanstd(gyro_moving) > 30 * np.nanstd(gyro_rest)
    assert moving["rel_rate"] < 0.01 * float(np.nanstd(gyro_moving))


def test_accel_alignment_to_the_gyro_frame():
    """The neutral step's accelerometer rotation (imusic.calibration.estimators): a face site on a
    rigid head whose accelerometer is turned 1 degree from the axes its gyro agrees with, with a
    lever arm, head turns and translation: the rotation is recovered and the rigid-body residual
    falls to the noise."""
    from scipy.spatial.transform import Rotation

    from imusic.calibration.estimators import relative_accel_alignment

    rng = np.random.default_rng(5)
    rate = 60.0
    t = np.arange(0, 40, 1 / rate)
    # head rotation: turns and nods (smooth), and a translation bob
    rv = np.stack([0.3 * np.sin(2 * np.pi * 0.3 * t), 0.4 * np.sin(2 * np.pi * 0.2 * t + 1),
                   1.2 * np.sin(2 * np.pi * 0.15 * t)], axis=1)
    R_wr = Rotation.from_rotvec(rv)
    q = R_wr.as_quat()
    dq = np.gradient(q, 1 / rate, axis=0)
    # body rate from the quaternion derivative: omega = 2 * conj(q) * dq (vector part), scipy x,y,z,w
    w_, v_ = q[:, 3], q[:, :3]
    dw, dv = dq[:, 3], dq[:, :3]
    omega = 2 * (w_[:, None] * dv - dw[:, None] * v_ - np.cross(v_, dv))
    alpha = np.gradient(omega, 1 / rate, axis=0)
    acc_w = np.stack([0.5 * np.sin(2 * np.pi * 1.8 * t), 0.2 * np.cos(2 * np.pi * 0.9 * t),
                      1.0 * np.sin(2 * np.pi * 1.8 * t + 0.5)], axis=1)
    f_r = R_wr.inv().apply(acc_w + [0.0, 0.0, 9.80665])
    lever = np.array([0.06, 0.04, -0.05])
    f_r_at_site = f_r + np.cross(alpha, lever) + np.cross(omega, np.cross(omega, lever))
    R_ref_site = Rotation.from_rotvec([0.3, -0.5, 1.0]).as_matrix()
    true_fix = Rotation.from_rotvec(np.radians([0.8, -0.6, 0.3])).as_matrix()
    f_s = (f_r_at_site @ R_ref_site) @ true_fix  # site axes, turned by true_fix^T
    noise = 0.01
    fit = relative_accel_alignment(f_r + rng.normal(0, noise, f_r.shape), omega, f_s + rng.normal(0, noise, f_s.shape),
                                   R_ref_site, rate)
    err = np.degrees(np.linalg.norm(Rotation.from_matrix(fit.rotation.T @ true_fix).as_rotvec()))
    assert err < 0.1, err  # of a 1 degree rotation
    assert np.allclose(fit.lever_arm_m, lever, atol=0.01)
    assert fit.rms_before_mps2 > 5 * fit.rms_after_mps2
    assert fit.rms_after_mps2 < 3 * noise


def test_tracked_bias_keeps_a_warming_gyro_from_turning_the_heading(layout):
    """A face gyro whose bias creeps away from the head reference's (warming) turns its filter's
    heading, which no accelerometer sees; tracking the relative bias on quiet frames holds it."""
    block = rigid_block(layout, 90.0, noise=True, amp_rad=(0.05, 0.05, 0.1))  # gentle head motion
    site = layout.face_sites[2]
    i = layout.sites.index(site)
    gyro = block.gyro_rads.copy()
    ramp = np.clip(block.t_host_s / 60.0, 0.0, 1.0)[:, None] * np.array([0.002, 0.0, 0.0])  # 0.11 deg/s at 60 s, about "up"
    gyro[:, i] += ramp
    warm = FrameBlock(block.t_host_s, block.accel_mps2, gyro, block.mag_uT, block.valid, block.sites, block.node_ids)
    k = layout.face_sites.index(site)
    late = slice(int(60 * RATE_HZ), None)
    tracked, ok_t = features_of_block(warm, layout)
    untracked, ok_u = features_of_block(warm, layout, settings=FeatureSettings(track_bias=False, heading_gain=0.0))
    drift_untracked = _rms(untracked[late, k, 0:3][ok_u[late, k]])
    drift_tracked = _rms(tracked[late, k, 0:3][ok_t[late, k]])
    assert drift_untracked > 0.02  # radians: the heading ran away
    assert drift_tracked < drift_untracked / 2  # an average lags a ramp: measured 2.8x less



def test_accel_bias_is_tracked_along_gravity_and_across_it_from_the_gyros(layout):
    """An accelerometer bias that appears mid-take (a chip warming). Along gravity it shows in
    lin_acc and is tracked away. Across gravity the filter takes it as a tilt of the site against
    the head, which no accelerometer can tell from a bias while the head stays upright (tracking it
    from lin_acc walks a tilt-and-bias pair), but the gyros can: the tilt error times the head's
    rate shows in rel_rate, and ``tilt_tau_s`` moves that part into the tracked bias."""
    block = rigid_block(layout, 60.0, noise=True, amp_rad=(0.05, 0.05, 0.1))  # head near upright
    site = layout.face_sites[2]
    i, k = layout.sites.index(site), layout.face_sites.index(site)
    up_s = nominal_R_head_sensor(layout.site(site).normal).T @ np.array([0.0, 0.0, 1.0])
    across = np.cross(up_s, [1.0, 0.0, 0.0])
    across /= np.linalg.norm(across)
    bias = 0.03 * up_s + 0.03 * across  # 3 mg each
    acc = block.accel_mps2.copy()
    acc[:, i] += (block.t_host_s > 5.0)[:, None] * bias
    biased = FrameBlock(block.t_host_s, acc, block.gyro_rads, block.mag_uT, block.valid, block.sites, block.node_ids)
    late = slice(int(40 * RATE_HZ), None)
    results = {}
    for name, settings in (("default", FeatureSettings()), ("no_tilt", FeatureSettings(tilt_tau_s=0.0)),
                           ("lin_acc_every_axis", FeatureSettings(tilt_tau_s=0.0, track_accel_along_gravity=False)),
                           ("off", FeatureSettings(tilt_tau_s=0.0, track_quiet_mps2=0.0))):
        ext = FeatureExtractor(layout, settings=settings)
        feats, ok = features_of_block(biased, layout, extractor=ext)
        est = ext._sites[k].accel_bias_mps2
        lin_acc_up = float(np.mean(feats[late, k, 6:9][ok[late, k]] @ up_s))  # the rest frame is the sensor's here
        tilt_rad = float(np.linalg.norm(np.mean(feats[late, k, 0:3][ok[late, k]], axis=0)))  # rigid head: truth 0
        results[name] = (float(est @ up_s), float(est @ across), lin_acc_up, tilt_rad)
    default, no_tilt, every_axis, off = (results[n] for n in ("default", "no_tilt", "lin_acc_every_axis", "off"))
    assert abs(off[2]) > 0.02  # untracked, the bias along gravity stays in lin_acc
    assert abs(default[0] - 0.03) < 0.005 and abs(default[2]) < abs(off[2]) / 5  # tracked away
    # across gravity, without the gyros: left to the filter as a tilt of about 3 mrad
    assert abs(no_tilt[1]) < 0.003 and no_tilt[3] > 0.002
    assert abs(every_axis[1]) > 3 * abs(no_tilt[1])  # lin_acc on every axis picks up the pair
    # with them: the bias is being found (measured 0.020 of 0.030 by the end, gentle turning and a
    # 20 s time constant) and the relative tilt falls (measured 3.8x)
    assert 0.015 < default[1] < 0.035
    assert default[3] < no_tilt[3] / 2


def test_pooled_correlation_and_its_chance_level():
    """bench_features' pooled statistic: on one take it is Pearson's r; pooled over takes it finds a
    small leak that one take's chance level hides, and its chance level (other takes' head motion)
    falls with the number of takes."""
    bf = _bench()
    rng = np.random.default_rng(5)

    def slow(n: int, m: int) -> np.ndarray:  # slow signals: ~30 independent samples per take
        kernel = np.ones(20) / 20.0
        return np.stack([np.convolve(rng.normal(size=n + 19), kernel, "valid") for _ in range(m)], axis=1)

    def take(leak: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        head = slow(600, 9)
        x = slow(600, 2)
        x[:, 0] += leak * head[:, 4] / head[:, 4].std() * x[:, 0].std()
        return x, np.ones_like(x, dtype=bool), head

    one = take(0.0)
    r = bf.pooled_corr([one])
    assert np.allclose(r[1], [np.corrcoef(one[0][:, 1], one[2][:, i])[0, 1] for i in range(9)])
    few = [take(0.2) for _ in range(2)]
    many = few + [take(0.2) for _ in range(62)]
    chance_few, chance_many = bf.pooled_chance(few), bf.pooled_chance(many)
    assert chance_many.max() < 0.5 * chance_few.max()
    r_many = bf.pooled_corr(many)
    assert int(np.abs(r_many[0]).argmax()) == 4  # the leak is found in the right head channel
    assert np.abs(r_many[0, 4]) > 2 * chance_many[0]
