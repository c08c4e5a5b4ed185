"""The simulator's kinematic half: face model, head motion, expression generator, Live Link CSV."""

from __future__ import annotations

import numpy as np
import pytest

from imusic.arkit import BLENDSHAPES, INDEX, N_BLENDSHAPES
from imusic.sim.face import (JAW_OPEN_DEG, LANDMARKS_MM, FaceModel, FaceShape, nominal_mount_frame,
                             rotvec_to_matrix, site_world_pose)


def _normals(p: np.ndarray) -> np.ndarray:
    """Outward normals of an ellipsoid standing in for the head surface (tests only; the catalogue
    carries real normals)."""
    n = np.c_[(p[:, 0] - 20.0) / 110.0**2, p[:, 1] / 75.0**2, (p[:, 2] - 10.0) / 120.0**2]
    return n / np.linalg.norm(n, axis=1, keepdims=True)


def _sites(*names: str) -> tuple[np.ndarray, np.ndarray]:
    p = np.array([LANDMARKS_MM[n] for n in names], dtype=float)
    return p, _normals(p)


def _single(name: str, weight: float = 1.0) -> np.ndarray:
    w = np.zeros((1, N_BLENDSHAPES))
    w[0, INDEX[name]] = weight
    return w


RIGID = ("forehead_high", "nasal_dorsum", "mastoid_left", "tragion_left", "condyle_left")


# ---------------------------------------------------------------------------------------- face
def test_rigid_bone_sites_do_not_move_for_any_shape():
    p, n = _sites(*RIGID)
    full = np.vstack([np.eye(N_BLENDSHAPES), np.ones((1, N_BLENDSHAPES))])
    disp, rot = FaceModel().site_motion(full, p, n)
    assert np.abs(disp).max() < 0.3
    assert np.degrees(np.abs(rot)).max() < 0.5
    # ... while the face sites do move
    p, n = _sites("pogonion", "lip_corner_left", "brow_outer_left")
    disp, _ = FaceModel().site_motion(full, p, n)
    assert np.linalg.norm(disp, axis=2).max() > 5.0


@pytest.mark.parametrize("scale", [0.92, 1.0, 1.08])
def test_full_jaw_open_moves_chin_like_a_mandible(scale: float):
    model = FaceModel(FaceShape(scale=scale))
    p, n = _sites("pogonion", "lower_lip", "upper_lip", "forehead_centre")
    disp, rot = model.site_motion(_single("jawOpen"), p, n)
    chin_mm = np.linalg.norm(disp[0, 0])
    assert 40.0 * scale <= chin_mm <= 52.0 * scale, chin_mm
    assert disp[0, 0, 2] < -25.0 * scale                      # down ...
    assert 38.0 * scale <= np.linalg.norm(disp[0, 1]) <= 50.0 * scale   # incisal-level opening
    assert np.linalg.norm(disp[0, 2]) < 0.5 and np.linalg.norm(disp[0, 3]) < 0.1   # upper face still
    chin_deg = np.degrees(np.linalg.norm(rot[0, 0]))
    assert 24.0 <= chin_deg <= 30.0, chin_deg
    assert rot[0, 0, 1] > 0                                   # about +y_H: the chin goes down and back
    assert JAW_OPEN_DEG == pytest.approx(chin_deg, abs=0.5)


def test_jaw_is_nonlinear_in_weight():
    p, n = _sites("pogonion")
    w = np.zeros((3, N_BLENDSHAPES))
    w[:, INDEX["jawOpen"]] = [0.25, 0.5, 1.0]
    disp, _ = FaceModel().site_motion(w, p, n)
    d = np.linalg.norm(disp[:, 0], axis=1)
    # condylar glide (quadratic) offsets the backward swing: not proportional to the weight
    assert abs(d[2] / d[0] - 4.0) > 0.1


def test_lateral_and_forward_jaw():
    p, n = _sites("pogonion")
    model = FaceModel()
    left, _ = model.site_motion(_single("jawLeft"), p, n)
    right, _ = model.site_motion(_single("jawRight"), p, n)
    fwd, _ = model.site_motion(_single("jawForward"), p, n)
    assert 8.0 <= left[0, 0, 1] <= 12.5 and -12.5 <= right[0, 0, 1] <= -8.0
    assert 6.0 <= fwd[0, 0, 0] <= 10.0


def test_smile_moves_lip_corner_up_and_out():
    p, n = _sites("lip_corner_left", "lip_corner_right" if "lip_corner_right" in LANDMARKS_MM else "lip_corner_left")
    p[1, 1] *= -1
    n = _normals(p)
    disp, _ = FaceModel().site_motion(_single("mouthSmileLeft"), p, n)
    d = disp[0, 0]
    assert 6.0 <= np.linalg.norm(d) <= 12.0
    assert d[1] > 0 and d[2] > 0                              # out (left) and up
    frontal_deg = np.degrees(np.arctan2(d[2], d[1]))
    assert 35.0 <= frontal_deg <= 60.0
    assert np.linalg.norm(disp[0, 1]) < 0.5                   # the other corner stays (asymmetric shape)


def test_smile_right_mirrors_left():
    p, n = _sites("lip_corner_left", "malar_left")
    q = p * np.array([1, -1, 1])
    model = FaceModel()
    dl, rl = model.site_motion(_single("mouthSmileLeft"), p, n)
    dr, rr = model.site_motion(_single("mouthSmileRight"), q, _normals(q))
    np.testing.assert_allclose(dr * np.array([1, -1, 1]), dl, atol=1e-9)
    np.testing.assert_allclose(rr * np.array([-1, 1, -1]), rl, atol=1e-9)   # axial vectors mirror


@pytest.mark.parametrize("shape,site", [("browOuterUpLeft", "brow_outer_left"), ("browInnerUp", "brow_inner_left")])
def test_brow_lift(shape: str, site: str):
    p, n = _sites(site)
    disp, _ = FaceModel().site_motion(_single(shape), p, n)
    assert 7.5 <= np.linalg.norm(disp[0, 0]) <= 12.0
    assert disp[0, 0, 2] > 7.0


def test_forehead_and_eyelid_magnitudes():
    p, n = _sites("forehead_centre", "upper_lid_left")
    model = FaceModel()
    fh, _ = model.site_motion(_single("browInnerUp"), p, n)
    blink, _ = model.site_motion(_single("eyeBlinkLeft"), p, n)
    assert 6.0 <= fh[0, 0, 2] <= 9.0                          # forehead wrinkling ~7.6 mm
    assert -10.5 <= blink[0, 1, 2] <= -7.5                     # lid travel ~9 mm


def test_gaze_moves_skin_only_near_the_eye():
    p, n = _sites("malar_left", "brow_mid_left", "lateral_canthus_left", "forehead_centre")
    names = [b for b in BLENDSHAPES if b.startswith("eyeLook")]
    w = np.vstack([_single(b) for b in names])
    disp, _ = FaceModel().site_motion(w, p, n)
    assert np.linalg.norm(disp, axis=2).max() < 1.0


def test_saturation_keeps_cocontraction_physical():
    p, n = _sites("lip_corner_left")
    model = FaceModel()
    lin_names = ["mouthSmileLeft", "mouthStretchLeft", "mouthDimpleLeft"]
    w = np.zeros((1, N_BLENDSHAPES))
    w[0, [INDEX[k] for k in lin_names]] = 1.0
    sum_single = sum(np.linalg.norm(model.site_motion(_single(k), p, n)[0][0, 0]) for k in lin_names)
    together = np.linalg.norm(model.site_motion(w, p, n)[0][0, 0])
    assert together < 18.0 < sum_single


def test_soft_field_gradient_matches_finite_differences():
    p, _ = _sites("malar_left", "brow_mid_left", "buccinator_left")
    model = FaceModel()
    _, grads = model.soft_fields(p)
    h = 1e-3
    for j in range(3):
        e = np.zeros(3)
        e[j] = h
        num = (model.soft_fields(p + e)[0] - model.soft_fields(p - e)[0]) / (2 * h)
        np.testing.assert_allclose(grads[..., j], num, atol=1e-4)


def test_rotation_is_exact_for_rigid_chin_and_skin_rotation_is_plausible():
    p, n = _sites("malar_left", "buccinator_left", "brow_mid_left", "mentalis")
    disp, rot = FaceModel().site_motion(np.eye(N_BLENDSHAPES), p, n)
    deg = np.degrees(np.linalg.norm(rot, axis=2))
    assert deg.max() < 35.0
    assert deg[INDEX["mouthSmileLeft"], 0] > 0.5              # the cheek tilts when smiling
    # a pure rotation field gives back its rotation through the surface-gradient formula
    from imusic.sim.face import _surface_rotation
    omega = np.array([0.01, -0.02, 0.03])
    skew = np.array([[0, -omega[2], omega[1]], [omega[2], 0, -omega[0]], [-omega[1], omega[0], 0]])
    np.testing.assert_allclose(_surface_rotation(np.broadcast_to(skew, (4, 3, 3)), n), np.tile(omega, (4, 1)),
                               atol=1e-12)


def test_sensitivity_shape_and_consistency():
    rng = np.random.default_rng(3)
    names = list(LANDMARKS_MM)
    p, n = _sites(*names)
    p = np.vstack([p, p + rng.normal(0, 2, p.shape)])[:40]
    n = _normals(p)
    model = FaceModel(FaceShape(scale=1.05, mobility=0.9))
    s = model.sensitivity(p, n)
    assert s.shape == (40, 6, 52)
    k = INDEX["jawOpen"]
    w = np.zeros((2, N_BLENDSHAPES))
    w[:, k] = [0.49, 0.51]
    disp, rot = model.site_motion(w, p, n)
    fd = np.concatenate([disp[1] - disp[0], rot[1] - rot[0]], axis=1) / 0.02
    np.testing.assert_allclose(s[:, :, k], fd, rtol=0.02, atol=1e-3)
    # the jaw's sensitivity at 0.5 differs from its small-weight slope (nonlinearity included)
    w[:, k] = [0.0, 0.02]
    d0, _ = model.site_motion(w, p, n)
    slope0 = (d0[1] - d0[0]) / 0.02
    assert np.abs(slope0 - s[:, :3, k]).max() > 1.0


def test_site_motion_is_vectorised_and_batch_independent():
    rng = np.random.default_rng(0)
    w = rng.random((20000, N_BLENDSHAPES)) * 0.4
    p, n = _sites("malar_left", "pogonion", "brow_mid_left")
    model = FaceModel()
    disp, rot = model.site_motion(w, p, n)
    d1, r1 = model.site_motion(w[12345:12346], p, n)
    np.testing.assert_allclose(disp[12345], d1[0], atol=1e-12)
    np.testing.assert_allclose(rot[12345], r1[0], atol=1e-12)
    assert np.isfinite(disp).all() and np.isfinite(rot).all()


def test_site_world_pose_composes_head_and_skin():
    p, n = _sites("pogonion")
    model = FaceModel()
    disp, rot = model.site_motion(_single("jawOpen", 0.6), p, n)
    R0 = nominal_mount_frame(n[0])
    np.testing.assert_allclose(R0.T @ R0, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(R0[:, 2], n[0])
    assert R0[2, 0] > 0                                       # x_S points up along the skin
    yaw = rotvec_to_matrix(np.array([[0, 0, np.pi / 2]]))
    R_ws, p_w = site_world_pose(yaw, np.array([[1.0, 2.0, 3.0]]), model.rest_position_mm(p[0]), disp[:, 0],
                                rot[:, 0], R0)
    expected_local = (p[0] + disp[0, 0]) / 1000.0
    np.testing.assert_allclose(p_w[0], [1.0 - expected_local[1], 2.0 + expected_local[0], 3.0 + expected_local[2]])
    np.testing.assert_allclose(R_ws[0], yaw[0] @ rotvec_to_matrix(rot[0, 0]) @ R0, atol=1e-12)


# ---------------------------------------------------------------------------------------- head
from imusic.sim.head import KINDS, HeadMotion, generate_head_motion  # noqa: E402


def _yaw_deg(hm: HeadMotion) -> np.ndarray:
    yaw = np.degrees(np.unwrap(np.arctan2(hm.R_world_head[:, 1, 0], hm.R_world_head[:, 0, 0])))
    return yaw - yaw[0]


def test_head_motion_is_deterministic_per_seed():
    a = generate_head_motion(20, rate_hz=100, seed=4, kind="conversation")
    b = generate_head_motion(20, rate_hz=100, seed=4, kind="conversation")
    c = generate_head_motion(20, rate_hz=100, seed=5, kind="conversation")
    np.testing.assert_array_equal(a.R_world_head, b.R_world_head)
    np.testing.assert_array_equal(a.p_world_m, b.p_world_m)
    assert np.abs(a.R_world_head - c.R_world_head).max() > 1e-3


def test_turns_reach_ninety_degrees_at_head_turn_rates():
    hm = generate_head_motion(40, rate_hz=200, seed=1, kind="turns")
    yaw = _yaw_deg(hm)
    assert yaw.max() > 85 or yaw.min() < -85
    assert np.abs(yaw).max() < 100
    peak_dps = np.degrees(np.linalg.norm(hm.angular_velocity_world(), axis=1)).max()
    assert 120 <= peak_dps <= 260


def test_walk_speed_bob_and_gait():
    hm = generate_head_motion(30, rate_hz=200, seed=2, kind="walk")
    late = hm.t_s > 3.0
    speed = np.linalg.norm(hm.linear_velocity_world()[late, :2], axis=1)
    assert 1.3 <= speed.mean() <= 1.5
    z = hm.p_world_m[late, 2]
    assert 0.025 <= z.max() - z.min() <= 0.045                # 3-4 cm bob
    from scipy.signal import welch
    f, P = welch(z - z.mean(), fs=200, nperseg=2048)
    assert 1.7 <= f[np.argmax(P)] <= 2.1                       # at the step frequency


@pytest.mark.parametrize("kind", KINDS)
def test_head_motion_is_smooth_and_derivatives_are_exact(kind: str):
    hm = generate_head_motion(20, rate_hz=1000, seed=3, kind=kind)
    bare = HeadMotion(hm.t_s, hm.R_world_head, hm.p_world_m)   # the differencing fallback
    inner = slice(5, -5)
    omega = hm.angular_velocity_world()
    scale = max(1.0, float(np.abs(omega).max()))
    assert np.abs(bare.angular_velocity_world()[inner] - omega[inner]).max() < 1e-3 * scale
    np.testing.assert_allclose(bare.linear_acceleration_world()[inner], hm.linear_acceleration_world()[inner],
                               atol=2e-3 * max(1.0, float(np.abs(hm.linear_acceleration_world()).max())))
    alpha_num = np.gradient(omega, hm.t_s, axis=0)
    alpha = hm.angular_acceleration_world()
    assert np.abs(alpha_num[inner] - alpha[inner]).max() < 2e-2 * max(1.0, float(np.abs(alpha).max()))
    # C2: the second differences of the angular rate are bounded (no steps in acceleration)
    jerk = np.diff(alpha, axis=0) * 1000
    assert np.abs(jerk).max() < 5e4
    np.testing.assert_allclose(np.einsum("tij,tkj->tik", hm.R_world_head, hm.R_world_head),
                               np.broadcast_to(np.eye(3), hm.R_world_head.shape), atol=1e-12)


def test_conversation_head_rates_are_moderate():
    hm = generate_head_motion(120, rate_hz=200, seed=6, kind="conversation")
    dps = np.degrees(np.linalg.norm(hm.angular_velocity_world(), axis=1))
    assert 15 <= np.percentile(dps, 99.5) <= 70
    still = generate_head_motion(30, rate_hz=200, seed=6, kind="still")
    assert np.degrees(np.linalg.norm(still.angular_velocity_world(), axis=1)).max() < 5


# ---------------------------------------------------------------------------------------- expressions
from imusic.sim.expressions import PROGRAMS, ExpressionStyle, generate_blendshapes  # noqa: E402


def test_expressions_deterministic_ranges_and_programs():
    for program in PROGRAMS:
        a = generate_blendshapes(20, seed=7, program=program)
        assert a.shape == (1200, 52) and a.dtype == np.float32
        assert a.min() >= 0.0 and a.max() <= 1.0
        np.testing.assert_array_equal(a, generate_blendshapes(20, seed=7, program=program))
    assert not np.array_equal(generate_blendshapes(20, seed=7), generate_blendshapes(20, seed=8))
    assert not np.any(generate_blendshapes(30, seed=1, program="neutral"))
    assert generate_blendshapes(1.0, rate_hz=30.0).shape == (30, 52)
    with pytest.raises(ValueError):
        generate_blendshapes(1.0, program="dance")


def _runs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    edges = np.diff(np.r_[0, x.astype(int), 0])
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


@pytest.mark.parametrize("rate", [15.0, 26.0])
def test_blink_rate_and_duration(rate: float):
    style = ExpressionStyle(blink_rate_per_min=rate)
    w = generate_blendshapes(240, rate_hz=240, seed=11, style=style, program="blinks")
    left, right = w[:, INDEX["eyeBlinkLeft"]], w[:, INDEX["eyeBlinkRight"]]
    starts, ends = _runs(left > 0.05)
    per_min = len(starts) / 4.0
    assert 0.7 * rate <= per_min <= 1.3 * rate
    dur_ms = (ends - starts) / 240 * 1000
    assert 100 <= dur_ms.min() and dur_ms.max() <= 400
    # closing faster than opening: time from start to the peak < time from the peak to the end
    rise, fall = [], []
    for s, e in zip(starts, ends):
        k = s + int(np.argmax(left[s:e]))
        rise.append(k - s)
        fall.append(e - k)
    assert np.mean(rise) < np.mean(fall)
    assert np.percentile(left[starts[0]:ends[0]], 100) > 0.8
    assert np.abs(left - right).max() < 0.5 and np.corrcoef(left, right)[0, 1] > 0.8   # together
    assert w[:, INDEX["eyeSquintLeft"]].max() > 0.05                                    # squint coupling


def test_speech_jaw_modulates_at_syllable_rates():
    from scipy.signal import welch
    rng = np.random.default_rng(0)
    for seed in range(3):
        style = ExpressionStyle.random(rng)
        w = generate_blendshapes(120, seed=seed, style=style, program="speech")
        jaw = w[:, INDEX["jawOpen"]].astype(float)
        f, P = welch(jaw - jaw.mean(), fs=60, nperseg=512)
        band = (f > 0.5) & (f < 15)
        peak_hz = f[band][np.argmax((f * P)[band])]              # power per log-frequency
        assert 2.0 <= peak_hz <= 7.0 and abs(peak_hz - style.speech_rate_hz) < 1.5
        assert P[(f >= 2) & (f <= 7)].sum() > 0.5 * P[band].sum()
        assert 0.1 <= np.percentile(jaw, 95) <= 0.5
        lips = ["mouthClose", "mouthFunnel", "mouthPucker", "mouthStretchLeft", "mouthRollLower",
                "mouthLowerDownLeft", "mouthUpperUpLeft"]
        assert all(w[:, INDEX[k]].max() > 0.05 for k in lips)
        assert np.corrcoef(jaw, w[:, INDEX["mouthLowerDownLeft"]])[0, 1] > 0.2          # co-activation


def test_emotions_have_onset_apex_offset_and_asymmetry():
    style = ExpressionStyle(asymmetry=0.3, smile_bias=0.3)
    w = generate_blendshapes(300, seed=3, style=style, program="emotions")
    smile_l, smile_r = w[:, INDEX["mouthSmileLeft"]], w[:, INDEX["mouthSmileRight"]]
    assert smile_l.max() > 0.3
    assert smile_l.mean() > 1.15 * smile_r.mean()               # the left side is stronger
    for name in ("browInnerUp", "browDownLeft", "noseSneerLeft", "mouthFrownLeft", "eyeWideLeft"):
        assert w[:, INDEX[name]].max() > 0.2, name
    # smooth onsets: no frame-to-frame jump larger than a fast (~0.3 s) onset allows
    assert np.abs(np.diff(w[:, INDEX["mouthSmileLeft"]])).max() < 0.15
    mixed = generate_blendshapes(300, seed=3, program="mixed")
    assert mixed[:, INDEX["jawOpen"]].max() > 0.1 and mixed[:, INDEX["eyeBlinkLeft"]].max() > 0.8
    assert mixed[:, INDEX["eyeLookOutLeft"]].max() > 0.1           # gaze shifts


# ---------------------------------------------------------------------------------------- Live Link CSV
from imusic.errors import UserError  # noqa: E402
from imusic.livelink import csv_columns, read_csv, write_csv  # noqa: E402


def test_livelink_round_trip_and_quirky_header(tmp_path):
    w = generate_blendshapes(10, seed=5)
    t = 3600.0 + 7.25 + np.arange(len(w)) / 60.0
    extra = np.random.default_rng(0).uniform(-1, 1, (len(w), 9))
    path = tmp_path / "take.csv"
    write_csv(path, t, w, extra)
    header = path.read_text().splitlines()[0].split(",")
    assert header[:3] == ["Timecode", "BlendShapeCount", "EyeBlinkLeft"] and len(header) == 63
    assert header.index("JawRight") < header.index("JawLeft")
    assert header.index("MouthRight") < header.index("MouthLeft")
    assert header[-9:] == ["HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
                           "RightEyeYaw", "RightEyePitch", "RightEyeRoll"]
    first = path.read_text().splitlines()[1].split(",")
    assert first[0] == "01:00:07:15.000" and first[1] == "61"
    t2, w2, x2 = read_csv(path)
    np.testing.assert_allclose(w2, w, atol=1e-6)
    np.testing.assert_allclose(x2, extra, atol=1e-6)
    np.testing.assert_allclose(t2, t, atol=1e-6)


def test_livelink_maps_columns_by_name(tmp_path):
    rng = np.random.default_rng(1)
    w = rng.random((5, 52))
    cols = csv_columns()[:52]
    perm = rng.permutation(52)
    lines = ["Timecode, FrameRate, " + ", ".join(cols[i] for i in perm)]
    for k in range(5):
        lines.append(f"10:00:00:{k}, 30/1, " + ", ".join(f"{w[k, BLENDSHAPES.index(cols[i][:1].lower() + cols[i][1:])]:.8f}"
                                                          for i in perm))
    path = tmp_path / "unreal.csv"
    path.write_text("\n".join(lines) + "\n")
    t, w2, extra = read_csv(path)
    np.testing.assert_allclose(w2, w, atol=1e-7)
    np.testing.assert_allclose(np.diff(t), 1 / 30)
    assert not extra.any()


@pytest.mark.parametrize("damage,needle", [
    ("drop_column", "missing column JawOpen"),
    ("truncate", "line 4 has"),
    ("garble", "line 3"),
    ("empty", "empty"),
    ("not_csv", "Timecode"),
])
def test_livelink_bad_files_give_one_line_errors(tmp_path, damage: str, needle: str):
    path = tmp_path / "bad.csv"
    write_csv(path, np.arange(4) / 60, np.full((4, 52), 0.25))
    lines = path.read_text().splitlines()
    if damage == "drop_column":
        k = lines[0].split(",").index("JawOpen")
        lines = [",".join(c for i, c in enumerate(line.split(",")) if i != k) for line in lines]
    elif damage == "truncate":
        lines[3] = lines[3][: len(lines[3]) // 2]
    elif damage == "garble":
        lines[2] = lines[2].replace("0.25", "zz", 1)
    elif damage == "empty":
        lines = []
    else:
        lines = ["hello,world", "1,2"]
    path.write_text("\n".join(lines))
    with pytest.raises(UserError) as err:
        read_csv(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and needle in msg, msg
    with pytest.raises(UserError, match="no such file"):
        read_csv(tmp_path / "absent.csv")
