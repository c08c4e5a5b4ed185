"""Rigid 6-DoF head motion: the pose of the face frame H in the world frame W over time.

World frame W: x north, y west, z up. At yaw = pitch = roll = 0 the subject faces north, upright.
R_world_head = Rz(yaw) @ Ry(pitch) @ Rx(roll) (pitch positive = nose down, since +y_H points to the
subject's left), p_world_m = the H origin (between the tragi).

Every channel is a sum of analytic pieces (band-limited sinusoids, sin^3-windowed bursts,
minimum-jerk steps), so the trajectories are C2 and their derivatives are exact: `HeadMotion` carries
the angular velocity and acceleration and the linear velocity and acceleration in W (analytic, not
differenced), and the IMU layer need not differentiate poses. Deterministic per seed.

Kinds (docs/sim.md gives the figures):
  still          seated, physiological sway (~0.3 deg, ~1 mm, breathing)
  conversation   coordinated sway at 0.2-1.1 Hz, gaze shifts, small listener nods at 2.6-6.5 Hz
  nods           deliberate nods (4-8 deg amplitude at 1.5-2.5 Hz) over conversation sway
  turns          +-90 deg yaw turns, 1-2 s each (peak rate ~150-250 deg/s), holds between
  walk           1.4 m/s straight walk with step-frequency bob, sway and head oscillation
  turns_and_walk standing turns for the first part, then a walk with the head turning to look around
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["HeadMotion", "generate_head_motion", "KINDS", "euler_zyx_to_matrix"]

KINDS = ("still", "conversation", "nods", "turns", "walk", "turns_and_walk")

WALK_SPEED_MPS = 1.4
STEP_HZ_RANGE = (1.8, 2.0)


@dataclass(frozen=True)
class HeadMotion:
    t_s: np.ndarray              # (T,)
    R_world_head: np.ndarray     # (T, 3, 3)
    p_world_m: np.ndarray        # (T, 3) position of the H origin in W
    # Exact derivatives (None when a HeadMotion is built by hand: the methods then difference).
    omega_world_rads: np.ndarray | None = None     # (T, 3) angular velocity of H in W
    alpha_world_rads2: np.ndarray | None = None    # (T, 3) its time derivative
    v_world_mps: np.ndarray | None = None          # (T, 3)
    a_world_mps2: np.ndarray | None = None         # (T, 3) kinematic acceleration (no gravity)

    def angular_velocity_world(self) -> np.ndarray:
        """(T, 3) rad/s in W."""
        if self.omega_world_rads is not None:
            return self.omega_world_rads
        return _omega_from_rotations(self.t_s, self.R_world_head)

    def angular_velocity_head(self) -> np.ndarray:
        """(T, 3) rad/s in H (what a gyroscope aligned with H reads)."""
        return np.einsum("tji,tj->ti", self.R_world_head, self.angular_velocity_world())

    def angular_acceleration_world(self) -> np.ndarray:
        if self.alpha_world_rads2 is not None:
            return self.alpha_world_rads2
        return np.gradient(self.angular_velocity_world(), self.t_s, axis=0)

    def linear_velocity_world(self) -> np.ndarray:
        if self.v_world_mps is not None:
            return self.v_world_mps
        return np.gradient(self.p_world_m, self.t_s, axis=0)

    def linear_acceleration_world(self) -> np.ndarray:
        """(T, 3) m/s^2 of the H origin in W, gravity not included."""
        if self.a_world_mps2 is not None:
            return self.a_world_mps2
        return np.gradient(self.linear_velocity_world(), self.t_s, axis=0)


def _omega_from_rotations(t_s: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Central-difference angular velocity in W from rotation matrices (fallback only)."""
    dR = np.gradient(R, t_s, axis=0)
    skew = dR @ np.transpose(R, (0, 2, 1))
    return 0.5 * np.stack([skew[:, 2, 1] - skew[:, 1, 2], skew[:, 0, 2] - skew[:, 2, 0],
                           skew[:, 1, 0] - skew[:, 0, 1]], axis=1)


# --------------------------------------------------------------------------- analytic pieces
# Every piece returns (value, first derivative, second derivative) on the time grid.
_Triple = tuple[np.ndarray, np.ndarray, np.ndarray]


def _zeros(t: np.ndarray) -> _Triple:
    return np.zeros_like(t), np.zeros_like(t), np.zeros_like(t)


def _add(a: _Triple, b: _Triple) -> _Triple:
    return a[0] + b[0], a[1] + b[1], a[2] + b[2]


def _scaled(a: _Triple, k: float) -> _Triple:
    return a[0] * k, a[1] * k, a[2] * k


def _sines(t: np.ndarray, amp: np.ndarray, hz: np.ndarray, phase: np.ndarray) -> _Triple:
    w = 2.0 * np.pi * np.asarray(hz)
    arg = np.outer(t, w) + phase
    s, c = np.sin(arg), np.cos(arg)
    return s @ amp, c @ (amp * w), -(s @ (amp * w * w))


def _band_noise(t: np.ndarray, rng: np.random.Generator, rms: float, lo_hz: float, hi_hz: float,
                n: int = 8) -> _Triple:
    """Smooth random signal: n sinusoids with random frequencies in [lo, hi] and phases, scaled to
    the given RMS (a sum of n unit-amplitude sines has RMS sqrt(n / 2))."""
    hz = rng.uniform(lo_hz, hi_hz, n)
    amp = rng.uniform(0.5, 1.0, n)
    amp *= rms / np.sqrt(0.5 * np.sum(amp**2))
    return _sines(t, amp, hz, rng.uniform(0, 2 * np.pi, n))


def _min_jerk(t: np.ndarray, t0: float, duration: float, delta: float) -> _Triple:
    """Minimum-jerk step of size delta from t0 over duration (C2; peak rate 1.875 delta/duration)."""
    tau = np.clip((t - t0) / duration, 0.0, 1.0)
    inside = (t > t0) & (t < t0 + duration)
    v = delta * tau**3 * (10 - 15 * tau + 6 * tau**2)
    d1 = np.where(inside, delta * 30 * tau**2 * (1 - tau) ** 2 / duration, 0.0)
    d2 = np.where(inside, delta * 60 * tau * (1 - tau) * (1 - 2 * tau) / duration**2, 0.0)
    return v, d1, d2


def _min_jerk_integral(t: np.ndarray, t0: float, duration: float, level: float) -> _Triple:
    """Integral of a minimum-jerk ramp from 0 to `level` (a velocity ramping up: the position)."""
    tau = np.clip((t - t0) / duration, 0.0, 1.0)
    after = np.maximum(t - (t0 + duration), 0.0)
    ramp_area = level * duration * (2.5 * tau**4 - 3 * tau**5 + tau**6)
    v, d1, _ = _min_jerk(t, t0, duration, level)
    return ramp_area + level * after, v, d1


def _burst(t: np.ndarray, t0: float, duration: float, amp: float, hz: float) -> _Triple:
    """amp * sin^3(pi tau) * sin(2 pi hz (t - t0)): an oscillation that starts and stops C2-smoothly."""
    tau = (t - t0) / duration
    inside = (tau > 0) & (tau < 1)
    k = np.pi / duration
    s, c = np.sin(np.pi * tau), np.cos(np.pi * tau)
    win = np.where(inside, s**3, 0.0)
    win1 = np.where(inside, 3 * s**2 * c * k, 0.0)
    win2 = np.where(inside, k * k * (6 * s * c**2 - 3 * s**3), 0.0)
    w = 2 * np.pi * hz
    osc, osc1, osc2 = np.sin(w * (t - t0)), w * np.cos(w * (t - t0)), -w * w * np.sin(w * (t - t0))
    return (amp * win * osc, amp * (win1 * osc + win * osc1),
            amp * (win2 * osc + 2 * win1 * osc1 + win * osc2))


def _events(rng: np.random.Generator, duration_s: float, mean_gap_s: float, length_s: tuple[float, float],
            start_s: float = 0.5) -> list[tuple[float, float]]:
    """Non-overlapping (start, length) events with exponential gaps."""
    out: list[tuple[float, float]] = []
    t = start_s + rng.exponential(mean_gap_s)
    while True:
        length = float(rng.uniform(*length_s))
        if t + length >= duration_s:
            return out
        out.append((float(t), length))
        t += length + rng.exponential(mean_gap_s)


# --------------------------------------------------------------------------- kinds
class _Channels:
    """yaw, pitch, roll (rad) and x, y, z (m) as analytic triples."""

    def __init__(self, t: np.ndarray) -> None:
        self.t = t
        self.ang = [_zeros(t) for _ in range(3)]
        self.pos = [_zeros(t) for _ in range(3)]

    def add_ang(self, axis: int, piece: _Triple) -> None:
        self.ang[axis] = _add(self.ang[axis], piece)

    def add_pos(self, axis: int, piece: _Triple) -> None:
        self.pos[axis] = _add(self.pos[axis], piece)


_DEG = np.pi / 180.0


def _still(ch: _Channels, rng: np.random.Generator) -> None:
    t = ch.t
    for axis, rms_deg in enumerate((0.3, 0.3, 0.2)):
        ch.add_ang(axis, _band_noise(t, rng, rms_deg * _DEG, 0.05, 0.4, 6))
    for axis, rms_mm in enumerate((1.0, 1.0, 0.5)):
        ch.add_pos(axis, _band_noise(t, rng, rms_mm / 1000, 0.05, 0.4, 6))
    ch.add_pos(2, _sines(t, np.array([0.5e-3]), np.array([rng.uniform(0.2, 0.3)]),
                         np.array([rng.uniform(0, 2 * np.pi)])))   # breathing


def _conversation(ch: _Channels, rng: np.random.Generator, duration_s: float) -> None:
    t = ch.t
    # coordinated sway at 0.2-1.1 Hz (Hale et al. 2019)
    for axis, rms_deg in enumerate((3.0, 2.5, 1.5)):
        ch.add_ang(axis, _band_noise(t, rng, rms_deg * _DEG, 0.2, 1.1, 8))
    for axis, rms_mm in enumerate((6.0, 4.0, 2.0)):
        ch.add_pos(axis, _band_noise(t, rng, rms_mm / 1000, 0.2, 1.1, 6))
    # gaze shifts: quick small yaw/pitch re-orientations that come back later
    for t0, _ in _events(rng, duration_s, 6.0, (1.3, 1.3)):
        amp_deg = rng.uniform(8, 25)
        length = 0.5 + amp_deg / 30.0            # head part of a gaze shift: peak ~20-35 deg/s
        yaw = amp_deg * rng.choice([-1, 1]) * _DEG
        pitch = rng.uniform(-5, 5) * _DEG
        back = t0 + length + rng.uniform(1.0, 4.0)
        for axis, delta in ((0, yaw), (1, pitch)):
            ch.add_ang(axis, _min_jerk(t, t0, length, delta))
            ch.add_ang(axis, _min_jerk(t, back, length, -delta))
    # listener nods: small fast pitch oscillations at 2.6-6.5 Hz, peak rate 15-40 deg/s
    for t0, length in _events(rng, duration_s, 5.0, (0.5, 1.2)):
        hz = rng.uniform(2.6, 6.5)
        ch.add_ang(1, _burst(t, t0, length, rng.uniform(15, 40) / (2 * np.pi * hz) * _DEG, hz))


def _nods(ch: _Channels, rng: np.random.Generator, duration_s: float) -> None:
    _conversation(ch, rng, duration_s)
    for t0, length in _events(rng, duration_s, 2.5, (1.2, 2.5)):
        ch.add_ang(1, _burst(ch.t, t0, length, rng.uniform(4, 8) * _DEG, rng.uniform(1.5, 2.5)))


def _turns(ch: _Channels, rng: np.random.Generator, t_from: float, t_to: float) -> None:
    """Yaw turns to +-90 deg and back (sometimes straight across, 180 deg), each 1-2 s (about
    1 s per 90 deg), with 1-3 s holds; the head is back at its start yaw by t_to."""
    t = ch.t
    current = 0.0
    t0 = t_from + rng.uniform(0.5, 1.5)
    while True:
        if current == 0.0:
            target = float(rng.choice([90.0, -90.0]))
        else:
            target = -current if rng.random() < 0.3 else 0.0
        delta = target - current
        length = float(np.clip(abs(delta) / 90.0 * rng.uniform(0.9, 1.2), 1.0, 2.0))
        home = 0.0 if target == 0.0 else 1.0 + 1.2          # time to hold and come back from the target
        if t0 + length + home > t_to:
            break
        ch.add_ang(0, _min_jerk(t, t0, length, delta * _DEG))
        pitch = rng.uniform(-4, 4) * _DEG                       # a slight pitch change with the turn
        ch.add_ang(1, _min_jerk(t, t0, length, pitch))
        ch.add_ang(1, _min_jerk(t, t0 + length, 0.6, -pitch))
        current = target
        t0 += length + rng.uniform(1.0, 3.0)
    if current != 0.0:
        ch.add_ang(0, _min_jerk(t, min(t0, t_to - 1.21), 1.2, -current * _DEG))


def _walk(ch: _Channels, rng: np.random.Generator, t_from: float, duration_s: float, heading: float) -> None:
    """Walk along `heading` (rad, world yaw) from t_from: speed ramps up over 1.5 s to 1.4 m/s."""
    t = ch.t
    ramp = 1.5
    step_hz = rng.uniform(*STEP_HZ_RANGE)
    dist = _min_jerk_integral(t, t_from, ramp, WALK_SPEED_MPS)
    ch.add_pos(0, _scaled(dist, np.cos(heading)))
    ch.add_pos(1, _scaled(dist, np.sin(heading)))
    on = _min_jerk(t, t_from, ramp, 1.0)                           # gait amplitude envelope
    phase = rng.uniform(0, 2 * np.pi)
    w_step = 2 * np.pi * step_hz

    def gait(amp: float, w: float, ph: float) -> _Triple:
        s = _sines(t - t_from, np.array([amp]), np.array([w / (2 * np.pi)]), np.array([ph]))
        # product with the envelope, C2 by the product rule
        return (on[0] * s[0], on[1] * s[0] + on[0] * s[1], on[2] * s[0] + 2 * on[1] * s[1] + on[0] * s[2])

    bob_m = rng.uniform(0.015, 0.02)                               # 3-4 cm peak to peak
    sway_m = rng.uniform(0.015, 0.025)
    ch.add_pos(2, gait(bob_m, w_step, phase))
    lateral = gait(sway_m, w_step / 2, phase / 2)                  # side to side at half the step rate
    ch.add_pos(0, _scaled(lateral, -np.sin(heading)))
    ch.add_pos(1, _scaled(lateral, np.cos(heading)))
    ch.add_ang(1, gait(rng.uniform(1.5, 3.0) * _DEG, w_step, phase + 1.0))    # pitch at step rate
    ch.add_ang(2, gait(rng.uniform(1.5, 3.0) * _DEG, w_step / 2, phase / 2))  # roll at stride rate
    ch.add_ang(0, gait(rng.uniform(1.0, 2.0) * _DEG, w_step / 2, phase / 2 + 0.5))


def euler_zyx_to_matrix(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """Rz(yaw) @ Ry(pitch) @ Rx(roll), (T, 3, 3)."""
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    return np.stack([
        np.stack([cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr], -1),
        np.stack([sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr], -1),
        np.stack([-sp, cp * sr, cp * cr], -1)], -2)


def generate_head_motion(duration_s: float, *, rate_hz: float = 1000.0, seed: int = 0,
                         kind: str = "conversation") -> HeadMotion:
    """Head motion of one take (see the module docstring for the kinds). Deterministic per seed."""
    if kind not in KINDS:
        raise ValueError(f"unknown head motion kind {kind!r}; one of {', '.join(KINDS)}")
    n = int(round(duration_s * rate_hz))
    t = np.arange(n) / rate_hz
    rng = np.random.default_rng([seed, KINDS.index(kind), 0x4EAD])
    heading = float(rng.uniform(0, 2 * np.pi))
    ch = _Channels(t)
    ch.add_ang(0, (np.full(n, heading), np.zeros(n), np.zeros(n)))
    if kind == "still":
        _still(ch, rng)
    elif kind == "conversation":
        _conversation(ch, rng, duration_s)
    elif kind == "nods":
        _nods(ch, rng, duration_s)
    elif kind == "turns":
        _still(ch, rng)
        _turns(ch, rng, 0.0, duration_s)
    elif kind == "walk":
        _still(ch, rng)
        _walk(ch, rng, 0.5, duration_s, heading)
    else:  # turns_and_walk
        _still(ch, rng)
        split = duration_s * 0.4
        _turns(ch, rng, 0.0, split)
        _walk(ch, rng, split, duration_s, heading)
        _turns(ch, rng, split + 3.0, duration_s)
    ch.add_pos(2, (np.full(n, 1.6), np.zeros(n), np.zeros(n)))   # standing/seated head height
    return _assemble(t, ch)


def _assemble(t: np.ndarray, ch: _Channels) -> HeadMotion:
    (yaw, dyaw, ddyaw), (pitch, dpitch, ddpitch), (roll, droll, ddroll) = ch.ang
    R = euler_zyx_to_matrix(yaw, pitch, roll)
    z = np.array([0.0, 0.0, 1.0])
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    a = np.stack([-sy, cy, np.zeros_like(yaw)], -1)                # Rz(yaw) e_y
    b = np.stack([cy * cp, sy * cp, -sp], -1)                      # Rz(yaw) Ry(pitch) e_x
    omega = dyaw[:, None] * z + dpitch[:, None] * a + droll[:, None] * b
    w_zy = dyaw[:, None] * z + dpitch[:, None] * a
    alpha = (ddyaw[:, None] * z + ddpitch[:, None] * a + dpitch[:, None] * np.cross(dyaw[:, None] * z, a)
             + ddroll[:, None] * b + droll[:, None] * np.cross(w_zy, b))
    p = np.stack([c[0] for c in ch.pos], -1)
    v = np.stack([c[1] for c in ch.pos], -1)
    acc = np.stack([c[2] for c in ch.pos], -1)
    return HeadMotion(t_s=t, R_world_head=R, p_world_m=p, omega_world_rads=omega, alpha_world_rads2=alpha,
                      v_world_mps=v, a_world_mps2=acc)
