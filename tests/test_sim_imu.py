"""IMU physics and the error model of the simulator (imusic.sim.imu, rig, off-face scenarios); no firmware."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from testenv import REAL_IMU

from imusic.placement import load_layout
from imusic.sim.imu import (
    CHIPS,
    EARTH_FIELD_UT,
    STANDARD_GRAVITY_MPS2,
    ImuErrors,
    apply_errors,
    draw_errors,
    kinematic_signals,
    noise_std,
    quantise,
)
from imusic.sim.rig import NodeClock, Rig
from imusic.sim.scenarios import simulate_take

GRID_HZ = 240.0


def _grid(duration_s: float) -> np.ndarray:
    return np.arange(int(duration_s * GRID_HZ) + 1) / GRID_HZ


def test_static_imu_reads_gravity_within_noise() -> None:
    rng = np.random.default_rng(1)
    grid = _grid(4.0)
    R = np.broadcast_to(Rotation.from_euler("xyz", [0.7, -0.4, 2.1]).as_matrix(), (len(grid), 3, 3))
    t = np.arange(1, 200) / 60.0
    sig = kinematic_signals(grid, R, np.zeros((len(grid), 3)), t)
    assert np.allclose(np.linalg.norm(sig.accel_mps2, axis=1), STANDARD_GRAVITY_MPS2, atol=1e-9)
    assert np.allclose(sig.gyro_rads, 0.0, atol=1e-9)
    accel, _, _ = apply_errors(ImuErrors.ideal(), t, sig.accel_mps2, sig.gyro_rads, sig.mag_uT,
                               np.full(len(t), 25.0), rng, walk=False)
    std = CHIPS["qmi8658"].accel_noise_std_mps2()
    deviation = np.linalg.norm(accel, axis=1) - STANDARD_GRAVITY_MPS2
    assert np.abs(deviation).max() < 5 * std
    assert abs(deviation.mean()) < 4 * std / np.sqrt(len(t))


def test_constant_rate_rotation_reads_that_rate() -> None:
    grid = _grid(5.0)
    rate = np.array([0.4, -1.1, 2.3])  # rad/s, body frame
    start = Rotation.from_euler("xyz", [0.3, -1.0, 2.0])
    R = (start * Rotation.from_rotvec(np.outer(grid, rate))).as_matrix()
    sig = kinematic_signals(grid, R, np.zeros((len(grid), 3)), np.linspace(0.5, 4.5, 97))
    assert np.allclose(sig.gyro_rads, rate, atol=1e-9)
    # field magnitude is preserved by a rotation (no iron errors)
    assert np.allclose(np.linalg.norm(sig.mag_uT, axis=1), np.linalg.norm(EARTH_FIELD_UT), atol=1e-9)


def test_lever_arm_centripetal_and_tangential() -> None:
    """A point r from the head centre, head turning about a fixed tilted axis: specific force is
    alpha x r + omega x (omega x r) + g, seen in the sensor (= head) axes."""
    grid = _grid(6.0)
    axis = np.array([0.2, 0.3, 1.0]) / np.linalg.norm([0.2, 0.3, 1.0])
    amp, f = np.radians(80.0), 0.6
    w = 2 * np.pi * f

    def angle(t: np.ndarray) -> np.ndarray:
        return amp * np.sin(w * t)

    R = Rotation.from_rotvec(np.outer(angle(grid), axis)).as_matrix()
    r_head = np.array([0.09, 0.03, -0.04])  # m, a cheek site in H
    p = np.einsum("gij,j->gi", R, r_head)
    t = np.linspace(0.5, 5.5, 301)
    sig = kinematic_signals(grid, R, p, t)
    omega = (amp * w * np.cos(w * t))[:, None] * axis
    alpha = (-amp * w * w * np.sin(w * t))[:, None] * axis
    Rt = Rotation.from_rotvec(np.outer(angle(t), axis)).as_matrix()
    r_world = np.einsum("nij,j->ni", Rt, r_head)
    a_world = np.cross(alpha, r_world) + np.cross(omega, np.cross(omega, r_world))
    expected = np.einsum("nji,nj->ni", Rt, a_world + [0.0, 0.0, STANDARD_GRAVITY_MPS2])
    lever = np.abs(a_world).max()
    assert lever > 0.5  # the lever-arm term is large compared with the tolerance below
    assert np.abs(sig.accel_mps2 - expected).max() < 2e-3 * lever
    assert np.allclose(sig.gyro_rads, np.einsum("nji,nj->ni", Rt, omega), atol=1e-3 * amp * w)


def test_rest_noise_matches_density() -> None:
    rng = np.random.default_rng(7)
    n = 6000
    t = np.arange(n) / 60.0
    for chip in CHIPS:
        errors = ImuErrors.ideal(chip)
        accel, gyro, _ = apply_errors(errors, t, np.tile([0.0, 0.0, STANDARD_GRAVITY_MPS2], (n, 1)),
                                      np.zeros((n, 3)), np.zeros((n, 3)), np.full(n, 25.0), rng, walk=False)
        a_std, g_std, _ = noise_std(chip)
        model = CHIPS[chip]
        # the per-sample std is the density over the noise bandwidth (docs/sim.md)
        assert a_std == pytest.approx(model.accel_noise_ug_rthz * 1e-6 * STANDARD_GRAVITY_MPS2
                                      * np.sqrt(model.noise_bandwidth_hz))
        assert np.allclose(accel.std(axis=0), a_std, rtol=0.05)
        assert np.allclose(gyro.std(axis=0), g_std, rtol=0.05)


def test_simulated_rest_noise_near_a_real_mems_imu() -> None:
    """Simulated QMI8658 at rest against the x-io sample's first 12 s at rest (docs/sim.md)."""
    path = REAL_IMU / "xio-fusion-sensor-data.csv"
    if not path.exists():
        pytest.skip(f"real IMU data absent: {path}")
    data = np.genfromtxt(path, delimiter=",", skip_header=1)
    rest = data[data[:, 0] < 12.0]
    real_gyro_rads = np.radians(rest[:, 1:4]).std(axis=0).mean()
    real_accel_mps2 = (rest[:, 4:7] * STANDARD_GRAVITY_MPS2).std(axis=0).mean()
    layout = load_layout("minimal")
    take = simulate_take(Rig.random(layout, 4), "table_rest", duration_s=12.0)
    node = take.nodes[layout.node_ids[0]]
    sim_gyro = (node.gyro_rads - node.true_gyro_rads)[:, 0].std(axis=0).mean()
    sim_accel = (node.accel_mps2 - node.true_accel_mps2)[:, 0].std(axis=0).mean()
    assert 1 / 3 < sim_gyro / real_gyro_rads < 3
    # the x-io board's accelerometer is noisier than the QMI8658's datasheet density (ratio ~3.3)
    assert 1 / 5 < sim_accel / real_accel_mps2 < 5


def test_errors_json_round_trip() -> None:
    rng = np.random.default_rng(11)
    for chip in CHIPS:
        for has_mag in (False, True):
            e = draw_errors(chip, rng, has_mag=has_mag, normal=np.array([0.8, 0.6, 0.0]))
            back = ImuErrors.from_json(json.loads(json.dumps(e.to_json())))
            assert back == e
            assert back.to_json() == e.to_json()
    clock = NodeClock(3, 1234567, -12.5, 80.0, 0.3, 1.1, b"\x01\x02\x03\x04\x05\x06\x07\x08")
    assert NodeClock.from_json(json.loads(json.dumps(clock.to_json()))) == clock


def test_drawn_errors_in_their_ranges() -> None:
    rng = np.random.default_rng(5)
    normal = np.array([0.0, 0.6, 0.8])
    for _ in range(50):
        e = draw_errors("qmi8658", rng, has_mag=True, normal=normal)
        assert 0.4 <= e.misalignment_deg() <= 3.0 + 1e-9
        assert 0.4 <= np.linalg.norm(e.placement_offset_mm) <= 3.0 + 1e-9
        assert abs(e.placement_offset_mm @ normal) < 1e-9  # stuck on the skin: tangent to it
        assert np.abs(np.degrees(e.gyro_bias_rads)).max() <= 1.0
        assert np.abs(e.mag_hard_iron_uT).max() <= 30.0
        assert np.allclose(e.mag_soft_iron, e.mag_soft_iron.T)
    plain = draw_errors("qmi8658", rng, has_mag=False)
    assert np.array_equal(plain.mag_soft_iron, np.eye(3)) and not plain.mag_hard_iron_uT.any()


def test_bias_follows_temperature() -> None:
    e = draw_errors("qmi8658", np.random.default_rng(2))
    n = 100
    temp = np.linspace(25.0, 32.0, n)
    _, gyro, _ = apply_errors(e, np.arange(n) / 60.0, np.zeros((n, 3)), np.zeros((n, 3)), np.zeros((n, 3)),
                              temp, np.random.default_rng(0), noise=False, walk=False)
    assert np.allclose(gyro[-1] - gyro[0], 7.0 * e.gyro_bias_tc_rads_per_c)
    assert np.allclose(gyro[0], e.gyro_bias_rads + (temp[0] - e.reference_temp_c) * e.gyro_bias_tc_rads_per_c)


def test_rig_and_takes_are_deterministic_per_seed() -> None:
    layout = load_layout("compact")
    a, b, c = Rig.random(layout, 9), Rig.random(layout, 9), Rig.random(layout, 10)
    assert a.to_json() == b.to_json()
    assert a.clocks[1].uid != c.clocks[1].uid
    assert all(-50 <= clk.drift_ppm <= 50 for clk in a.clocks.values())
    t1 = simulate_take(a, "six_pose", duration_s=6.0)
    t2 = simulate_take(b, "six_pose", duration_s=6.0)
    t3 = simulate_take(a, "six_pose", duration_s=6.0, take_seed=1)
    n1, n2, n3 = t1.nodes[1], t2.nodes[1], t3.nodes[1]
    assert np.array_equal(n1.accel_mps2, n2.accel_mps2) and np.array_equal(n1.t_s, n2.t_s)
    assert not np.array_equal(n1.accel_mps2, n3.accel_mps2)


def test_off_face_scenarios() -> None:
    layout = load_layout("imusic")
    rig = Rig.random(layout, 2)
    rest = simulate_take(rig, "table_rest", duration_s=3.0).nodes[1]
    assert np.allclose(np.linalg.norm(rest.true_accel_mps2, axis=2), STANDARD_GRAVITY_MPS2, atol=1e-6)
    assert np.abs(rest.true_gyro_rads).max() < 1e-4  # the Earth's rotation only
    poses = simulate_take(rig, "six_pose").nodes[1]
    # every IMU has each of its axes pointing up and down at some time (ellipsoid fits need that)
    up = poses.true_accel_mps2 / STANDARD_GRAVITY_MPS2
    assert (up.max(axis=0) > 0.95).all() and (up.min(axis=0) < -0.95).all()
    spin = simulate_take(rig, "mag_rotation").nodes[1]
    j = layout.sites.index(layout.head_reference)
    field = spin.true_mag_uT[:, j] / np.linalg.norm(spin.true_mag_uT[:, j], axis=1, keepdims=True)
    k = np.arange(100) + 0.5  # near-uniform directions on the sphere
    polar, azimuth = np.arccos(1 - 2 * k / 100), np.pi * (1 + 5 ** 0.5) * k
    dirs = np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], axis=1)
    covered = (dirs @ field.T).max(axis=1) > np.cos(np.radians(35))
    assert covered.mean() > 0.8


def test_sample_times_follow_the_node_clock() -> None:
    layout = load_layout("minimal")
    rig = Rig.random(layout, 6)
    take = simulate_take(rig, "table_rest", duration_s=5.0)
    node = take.nodes[1]
    clock = rig.clocks[1]
    assert take.period_us == 16666  # firmware: 1000000 // 60
    assert np.all(np.diff(node.device_us) == take.period_us)
    residual_us = (node.t_s - clock.true_s(node.device_us)) * 1e6
    assert 0.5 * clock.jitter_us < residual_us.std() < 1.5 * clock.jitter_us


def test_quantise_offline() -> None:
    a, g, m = quantise(np.array([[0.0, 0.0, 200.0]]), np.array([[0.001, 0.0, 0.0]]), "qmi8658",
                       np.array([[20.0, 0.0, -45.0]]))
    assert a[0, 2] == pytest.approx(32767 * 8 * STANDARD_GRAVITY_MPS2 / 32768)  # saturates at +-8 g
    assert g[0, 0] == 0.0 or abs(g[0, 0] - 0.001) <= 512 * np.pi / 180 / 32768
    assert m is not None and np.abs(m - [[20.0, 0.0, -45.0]]).max() <= 100 / 3750 / 2 + 1e-12
