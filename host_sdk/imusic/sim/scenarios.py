"""Scenarios and takes: what a rig goes through, simulated, then recorded through the real firmware.

A *scenario* says what happens to the rig:

- worn on a subject's face (`Subject`: face shape and expression style):
  ``neutral`` (face still, head still), ``neutral_head_motion`` (neutral face through +-90 deg head
  turns and a walk), ``expressions`` (mixed expressions and speech, conversational head motion),
  ``expressions_walk`` (mixed expressions while walking);
- off the face, for calibration: ``table_rest`` (every IMU lying still on a table, each at its own
  orientation), ``six_pose`` (the IMUs in a tray turned through the six faces-up poses, ~3.75 s
  each, smooth 1.5 s transitions), ``mag_rotation`` (the tray turned slowly through all
  orientations, so every IMU's field and gravity directions cover the sphere).

`simulate_take(rig, scenario)` computes a `SimTake` on the host timeline (host time 0 = the
nodes' boot): the 60 Hz truth (blendshapes, head or tray pose) and, per node, the value of every
IMU at the true instant of every device tick (``device_us = offset_us + k * period_us``, drift and
sample jitter applied), true and with errors. `run_take(take, out_dir)` feeds those values to the
register-level emulated chips (one `TableSource` per node, row k = tick k), runs the unchanged
firmware under MicroPython on a virtual clock, and writes the node's bytes as a recording with
simulated host receive times. `record_scenario` does both in one call.

Output files of a take (docs/sim.md, "IMU physics and error model"):

    rec.imu          the recording (one link per node, ``emu://sim/node<ID>``)
    blendshapes.csv  the truth as a Live Link Face CSV (60 fps, host timeline)
    truth.json       rig and take truth (errors per site, node clocks and uids, temperatures, ...)
    truth.npz        arrays (see `SimTake.save_npz`)
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.spatial.transform import Rotation

from imusic.errors import UserError
from imusic.sim.imu import EARTH_FIELD_UT, STANDARD_GRAVITY_MPS2, apply_errors, earth_rate_world, kinematic_signals
from imusic.sim.rig import Rig, sample_period_us

if TYPE_CHECKING:
    from imusic.placement import Layout
    from imusic.sim.expressions import ExpressionStyle
    from imusic.sim.face import FaceShape

__all__ = ["SCENARIOS", "NodeTake", "Scenario", "SimTake", "Subject", "record_scenario", "run_take",
           "simulate_take", "TruthError"]

TRUTH_FORMAT = "imusic-sim-truth"
TRUTH_VERSION = 1
BLENDSHAPE_FPS = 60
GRID_FACTOR = 4  # the kinematic grid runs at this multiple of the sample rate
GRID_LEAD_S = 0.1  # the grid starts this long before host time 0
CHUNK_S = 30.0  # sample times simulated per block (bounds memory on long takes)
CHUNK_MARGIN_S = 0.5  # grid kept on either side of a block (spline edges)
SKIN_TEMP_C = 32.0
WARM_TAU_S = 180.0  # a chip stuck on skin warms with this time constant (stated choice)


class TruthError(UserError):
    """A simulated take that does not line up with what the firmware recorded (a simulator bug)."""


@dataclass(frozen=True)
class Scenario:
    name: str
    worn: bool
    program: str | None  # imusic.sim.expressions program
    head: str | None  # imusic.sim.head kind
    default_duration_s: float
    description: str


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("table_rest", False, None, None, 20.0, "every IMU lying still on a table, each at its own orientation"),
    Scenario("six_pose", False, None, None, 30.0, "the IMUs in a tray turned through six static faces-up poses"),
    Scenario("mag_rotation", False, None, None, 30.0, "the tray turned slowly through all orientations"),
    Scenario("neutral", True, "neutral", "still", 20.0, "neutral face, head still (seated)"),
    Scenario("neutral_head_motion", True, "neutral", "turns_and_walk", 40.0,
             "neutral face through +-90 deg head turns and a walk"),
    Scenario("expressions", True, "mixed", "conversation", 60.0, "mixed expressions and speech, conversation"),
    Scenario("expressions_walk", True, "mixed", "walk", 60.0, "mixed expressions and speech while walking"),
)}


def scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise UserError(f"unknown scenario {name!r}: choose one of {', '.join(SCENARIOS)}") from None


@dataclass(frozen=True)
class Subject:
    """A simulated person: face geometry and expression style, both drawn from `seed`."""

    seed: int
    shape: FaceShape
    style: ExpressionStyle

    @staticmethod
    def random(seed: int) -> Subject:
        from imusic.sim.expressions import ExpressionStyle
        from imusic.sim.face import FaceShape

        rng = np.random.default_rng([seed, 0x5B1EC7])
        return Subject(seed, FaceShape.random(rng), ExpressionStyle.random(rng))

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "face_shape": _plain(self.shape), "expression_style": _plain(self.style)}


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


@dataclass
class NodeTake:
    """One node's samples: row k is device tick k (device time offset_us + k * period_us); the
    node samples rows 1, 2, ... (its first tick is one period after boot)."""

    node_id: int
    sites: tuple[str, ...]
    device_us: np.ndarray  # (N,) int64
    t_s: np.ndarray  # (N,) true host time of each sample (jitter included)
    true_accel_mps2: np.ndarray  # (N, n, 3) ideal sensor, chip axes
    true_gyro_rads: np.ndarray
    true_mag_uT: np.ndarray
    accel_mps2: np.ndarray  # (N, n, 3) with the IMU's errors: what the emulated chips are fed
    gyro_rads: np.ndarray
    mag_uT: np.ndarray
    temp_c: np.ndarray  # (N, n)
    q_world_sensor: np.ndarray  # (N, n, 4) (w, x, y, z)


@dataclass
class SimTake:
    """A simulated take: truth on the host timeline and the per-node sample values."""

    rig: Rig
    scenario: Scenario
    take_seed: int
    duration_s: float
    subject: Subject | None
    t_s: np.ndarray  # (T,) 60 Hz truth times, k / 60
    blendshapes: np.ndarray  # (T, 52) float32 (zeros off the face)
    R_world_head: np.ndarray  # (T, 3, 3): the head (worn) or the tray (off the face)
    p_world_m: np.ndarray  # (T, 3)
    nodes: dict[int, NodeTake]
    temperature: dict[str, Any] = field(default_factory=dict)

    @property
    def layout(self) -> Layout:
        return self.rig.layout

    @property
    def period_us(self) -> int:
        return sample_period_us(self.layout.rate_hz)

    def temp_register_cdeg(self, site: str) -> int:
        """What the emulated chip's temperature register reads for a site: the take's mean (the
        emulator holds one value per run)."""
        for node in self.nodes.values():
            if site in node.sites:
                return int(round(float(node.temp_c[:, node.sites.index(site)].mean()) * 100))
        raise KeyError(site)

    def truth_json(self) -> dict[str, Any]:
        layout = self.layout
        imus: dict[str, Any] = {}
        for imu in layout.imus:
            node = self.nodes[imu.node_id]
            temps = node.temp_c[:, node.sites.index(imu.site)]
            imus[imu.site] = {
                "node_id": imu.node_id, "slot": imu.slot, "chip": imu.chip, "mag": imu.mag,
                "errors": self.rig.errors[imu.site].to_json(),
                "temp_c": {"start": round(float(temps[0]), 3), "end": round(float(temps[-1]), 3),
                           "mean": round(float(temps.mean()), 3)},
                "temp_register_cdeg": self.temp_register_cdeg(imu.site),
            }
        return {
            "format": TRUTH_FORMAT, "version": TRUTH_VERSION, "simulated": True,
            "note": "simulated data: imusic.sim, recorded through the real firmware on emulated chips",
            "scenario": self.scenario.name, "scenario_description": self.scenario.description,
            "worn": self.scenario.worn, "program": self.scenario.program, "head_motion": self.scenario.head,
            "seed": self.rig.seed, "take_seed": self.take_seed,
            "subject": self.subject.to_json() if self.subject is not None else None,
            "layout": layout.name, "sites": list(layout.sites), "head_reference": layout.head_reference,
            "rate_hz": layout.rate_hz, "period_us": self.period_us, "duration_s": self.duration_s,
            "blendshape_fps": BLENDSHAPE_FPS,
            "imus": imus,
            "nodes": {str(n): dict(c.to_json(), url=node_url(n)) for n, c in self.rig.clocks.items()},
            "temperature": self.temperature,
            "world": {"gravity_mps2": STANDARD_GRAVITY_MPS2, "field_uT": EARTH_FIELD_UT.tolist(),
                      "earth_rate_rads": earth_rate_world().tolist(), "frame": "NWU"},
            "host_time": "host time 0 is the nodes' boot; rec.imu receive times and blendshapes.csv share it",
        }

    def save_npz(self, path: str | Path) -> None:
        """truth.npz: ``t_s`` (T,), ``blendshapes`` (T, 52), ``R_world_head`` (T, 3, 3),
        ``p_world_m`` (T, 3) at 60 Hz; per-sample arrays stacked over the layout's IMUs in frame
        order (all nodes run the same number of ticks): ``sites`` (n,), ``device_us`` (N, n),
        ``sample_t_s`` (N, n), ``true_accel_mps2`` / ``true_gyro_rads`` / ``true_mag_uT`` (N, n, 3),
        ``accel_mps2`` / ``gyro_rads`` / ``mag_uT`` (N, n, 3, errors applied), ``temp_c`` (N, n),
        ``q_world_sensor`` (N, n, 4)."""
        arrays: dict[str, Any] = {"t_s": self.t_s, "blendshapes": self.blendshapes,
                                  "R_world_head": self.R_world_head, "p_world_m": self.p_world_m,
                                  "sites": np.array(self.layout.sites), **self.stacked()}
        np.savez_compressed(path, **arrays)

    def stacked(self) -> dict[str, np.ndarray]:
        """Per-sample arrays over all IMUs in frame order (see `save_npz`)."""
        order = [(imu.node_id, self.nodes[imu.node_id].sites.index(imu.site)) for imu in self.layout.imus]
        n_rows = min(len(node.t_s) for node in self.nodes.values())
        out: dict[str, np.ndarray] = {}
        out["device_us"] = np.stack([self.nodes[n].device_us[:n_rows] for n, _ in order], axis=1)
        out["sample_t_s"] = np.stack([self.nodes[n].t_s[:n_rows] for n, _ in order], axis=1)
        for name in ("true_accel_mps2", "true_gyro_rads", "true_mag_uT", "accel_mps2", "gyro_rads", "mag_uT",
                     "temp_c", "q_world_sensor"):
            out[name] = np.stack([getattr(self.nodes[n], name)[:n_rows, j] for n, j in order], axis=1)
        return out


def node_url(node_id: int) -> str:
    return f"emu://sim/node{node_id}"


# ---------------------------------------------------------------------------------------------
# poses

PoseFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # grid indices -> (R (g, n, 3, 3), p (g, n, 3))


def _min_jerk(s: np.ndarray) -> np.ndarray:
    s = np.clip(s, 0.0, 1.0)
    return s * s * s * (10.0 - 15.0 * s + 6.0 * s * s)


def _tray_layout(n: int) -> np.ndarray:
    """IMU positions on a tray (m, tray frame): a grid 40 mm apart around its centre."""
    cols = int(np.ceil(np.sqrt(n)))
    idx = np.arange(n)
    pos = np.stack([(idx % cols) * 0.04, (idx // cols) * 0.04, np.zeros(n)], axis=1)
    return pos - pos.mean(axis=0)


def _yaw_tilt(rng: np.random.Generator, n: int, quarter_turns: bool, tilt_deg: float) -> np.ndarray:
    """Per IMU: a yaw (any, or a multiple of 90 deg) and a small random tilt."""
    yaw = rng.integers(0, 4, size=n) * (np.pi / 2) if quarter_turns else rng.uniform(-np.pi, np.pi, size=n)
    tilt = rng.normal(size=(n, 3)) * np.array([1.0, 1.0, 0.0])
    tilt *= (np.radians(tilt_deg) * rng.uniform(0.0, 1.0, size=(n, 1))
             / np.maximum(np.linalg.norm(tilt, axis=1, keepdims=True), 1e-12))
    return (Rotation.from_rotvec(np.outer(yaw, [0.0, 0.0, 1.0])) * Rotation.from_rotvec(tilt)).as_matrix()


# the tray's six faces-up poses: R_world_tray putting +z, -z, +x, -x, +y, -y of the tray up
_SIX_POSES = np.array([
    [0.0, 0.0, 0.0], [np.pi, 0.0, 0.0], [0.0, -np.pi / 2, 0.0], [0.0, np.pi / 2, 0.0],
    [np.pi / 2, 0.0, 0.0], [-np.pi / 2, 0.0, 0.0]])  # rotation vectors


def _six_pose_tray(t: np.ndarray, duration_s: float, transition_s: float = 1.5) -> Rotation:
    n = len(_SIX_POSES)
    hold = max(1.0, (duration_s - (n - 1) * transition_s) / n)
    step = hold + transition_s
    k = np.clip(np.floor(t / step).astype(np.int64), 0, n - 1)
    into = t - k * step - hold  # > 0 during the transition from pose k to k + 1
    s = _min_jerk(np.where(k < n - 1, into / transition_s, 0.0))
    a = Rotation.from_rotvec(_SIX_POSES[k])
    b = Rotation.from_rotvec(_SIX_POSES[np.minimum(k + 1, n - 1)])
    rel = (a.inv() * b).as_rotvec()
    return a * Rotation.from_rotvec(rel * s[:, None])


def _sphere_tray(t: np.ndarray, duration_s: float) -> Rotation:
    """A slow tumble, eased in and out: R = Rz(psi) Ry(theta) Rz(chi) with psi and chi turning at
    incommensurate rates and theta swinging between 0.2 and pi - 0.2 rad (never through the
    Euler singularity at 0 or pi), so a world vector's direction in the tray frame (gravity, the
    field) sweeps nearly the whole sphere."""
    ease = min(1.5, duration_s / 4)
    u = np.clip(t, 0.0, duration_s)
    late = u - (duration_s - ease)
    # eased time: still at both ends, constant speed in between; s(duration_s) = duration_s - ease
    s = np.where(u < ease, u * u / (2 * ease),
                 np.where(late > 0, duration_s - 1.5 * ease + late - late * late / (2 * ease), u - ease / 2))
    x = s / max(duration_s - ease, 1e-6)
    psi = 2 * np.pi * 1.3 * x
    theta = np.pi / 2 - (np.pi / 2 - 0.2) * np.cos(2 * np.pi * 2.7 * x)
    chi = 2 * np.pi * 3.1 * x
    return Rotation.from_euler("ZYZ", np.stack([psi, theta, chi], axis=1))


def _off_face_pose(rig: Rig, sc: Scenario, grid: np.ndarray, duration_s: float,
                   rng: np.random.Generator) -> tuple[PoseFn, dict[str, Any]]:
    layout = rig.layout
    n = len(layout.imus)
    tray_pos = _tray_layout(n)
    mounts = np.stack([rig.errors[i.site].mount_R_nominal_sensor for i in layout.imus])
    if sc.name == "table_rest":
        on_table = _yaw_tilt(rng, n, False, 3.0)
        flip = rng.random(n) < 0.3  # some lie face down
        on_table = np.where(flip[:, None, None], on_table @ np.diag([1.0, -1.0, -1.0]), on_table)
        R_tray_sensor = on_table @ mounts

        def tray(t: np.ndarray) -> Rotation:
            return Rotation.identity(len(t))
    else:
        R_tray_sensor = _yaw_tilt(rng, n, True, 1.0) @ mounts
        if sc.name == "six_pose":
            def tray(t: np.ndarray) -> Rotation:
                return _six_pose_tray(t, duration_s)
        else:
            def tray(t: np.ndarray) -> Rotation:
                return _sphere_tray(t, duration_s)

    centre = np.array([0.0, 0.0, 0.8])  # a table top

    def pose(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        R_wt = tray(grid[idx]).as_matrix()  # (g, 3, 3)
        R = np.einsum("gij,njk->gnik", R_wt, R_tray_sensor)
        p = centre + np.einsum("gij,nj->gni", R_wt, tray_pos)
        return R, p

    def tray_pose(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return tray(t).as_matrix(), np.broadcast_to(centre, (len(t), 3)).copy()

    return pose, {"tray_pose": tray_pose}


def _worn_pose(rig: Rig, sc: Scenario, subject: Subject, grid: np.ndarray, duration_s: float,
               rng: np.random.Generator) -> tuple[PoseFn, dict[str, Any]]:
    from imusic.sim.expressions import generate_blendshapes
    from imusic.sim.face import FaceModel, nominal_mount_frame
    from imusic.sim.head import generate_head_motion

    layout = rig.layout
    grid_rate = 1.0 / float(grid[1] - grid[0])
    span_s = float(grid[-1] - grid[0])
    head = generate_head_motion(span_s, rate_hz=grid_rate, seed=int(rng.integers(1 << 31)), kind=str(sc.head))
    head_R = np.asarray(head.R_world_head)
    head_p = np.asarray(head.p_world_m)
    if head_R.shape[0] < grid.shape[0]:
        pad = grid.shape[0] - head_R.shape[0]
        head_R = np.concatenate([head_R, np.repeat(head_R[-1:], pad, axis=0)])
        head_p = np.concatenate([head_p, np.repeat(head_p[-1:], pad, axis=0)])
    n_frames = int(np.ceil((grid[-1] + 0.1) * BLENDSHAPE_FPS)) + 2
    weights = np.asarray(generate_blendshapes(n_frames / BLENDSHAPE_FPS, rate_hz=BLENDSHAPE_FPS,
                                              seed=int(rng.integers(1 << 31)), style=subject.style,
                                              program=str(sc.program)), dtype=np.float64)
    n_frames = weights.shape[0]
    frame_t = np.arange(n_frames) / BLENDSHAPE_FPS
    # C2 through the 60 Hz truth (a C1 interpolant such as PCHIP puts steps in the acceleration);
    # its small overshoots below 0 or above 1 are clipped
    interp = CubicSpline(frame_t, weights, axis=0)
    face = FaceModel(subject.shape)
    sites = [layout.site(i.site) for i in layout.imus]
    pos_c = np.stack([s.position_mm + rig.errors[s.name].placement_offset_mm for s in sites])
    normals = np.stack([s.normal for s in sites])
    rest = face.rest_position_mm(pos_c)
    mount = nominal_mount_frame(normals) @ np.stack([rig.errors[s.name].mount_R_nominal_sensor for s in sites])

    def pose(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = np.clip(grid[idx], 0.0, frame_t[-1])
        w = np.clip(interp(t), 0.0, 1.0)
        disp, rotvec = face.site_motion(w, pos_c, normals)
        R_head_skin = Rotation.from_rotvec(rotvec.reshape(-1, 3)).as_matrix().reshape(len(idx), -1, 3, 3)
        R_hs = R_head_skin @ mount
        R = np.einsum("gij,gnjk->gnik", head_R[idx], R_hs)
        p = head_p[idx][:, None, :] + np.einsum("gij,gnj->gni", head_R[idx], (rest[None] + disp) / 1000.0)
        return R, p

    def head_pose(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i = np.clip(np.round((t - grid[0]) * grid_rate).astype(np.int64), 0, grid.shape[0] - 1)
        return head_R[i], head_p[i]

    return pose, {"head_pose": head_pose, "weights": weights}


# ---------------------------------------------------------------------------------------------
# simulation

def _temperatures(rig: Rig, sc: Scenario, t: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """(len(t), n) chip temperatures and the profile's description."""
    n = len(rig.layout.imus)
    room = rig.room_temp_c
    if not sc.worn:
        offsets = rng.normal(0.0, 0.2, size=n)  # chips on the same table differ a little
        temps = np.broadcast_to(room + offsets, (t.shape[0], n)).copy()
        return temps, {"profile": "constant (on a table)", "room_c": room}
    skin = SKIN_TEMP_C + rng.normal(0.0, 0.5, size=n)
    tau = WARM_TAU_S * rng.uniform(0.7, 1.3, size=n)
    tt = np.maximum(t, 0.0)[:, None]
    temps = skin - (skin - room) * np.exp(-tt / tau)
    return temps, {"profile": "worn: room -> skin, first order", "room_c": room,
                   "skin_c": skin.round(3).tolist(), "tau_s": tau.round(1).tolist()}


def simulate_take(rig: Rig, scenario_name: str, *, take_seed: int = 0, duration_s: float | None = None,
                  subject: Subject | None = None) -> SimTake:
    """Simulate one take of `rig` in a scenario (deterministic for rig.seed, the scenario,
    take_seed and the subject). `duration_s` defaults to the scenario's; worn scenarios need a
    subject (default: `Subject.random(rig.seed)`)."""
    sc = scenario(scenario_name)
    duration = float(duration_s if duration_s is not None else sc.default_duration_s)
    if not (duration > 0 and np.isfinite(duration)):
        raise UserError(f"duration must be positive, not {duration_s}")
    if sc.worn and subject is None:
        subject = Subject.random(rig.seed)
    if not sc.worn:
        subject = None
    layout = rig.layout
    rate = layout.rate_hz
    period = sample_period_us(rate)
    n_rows = int(np.ceil(duration * 1e6 / period)) + 2  # row 0 is boot; the node samples rows 1..
    scenario_key = list(SCENARIOS).index(sc.name)
    rng = np.random.default_rng([rig.seed, 0x7A4E, scenario_key, take_seed])

    # sample instants per node (host timeline)
    ticks = np.arange(n_rows, dtype=np.int64) * period
    node_times: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for node_id, clock in rig.clocks.items():
        device = clock.offset_us + ticks
        jitter_s = rng.normal(0.0, clock.jitter_us * 1e-6, size=n_rows)
        node_times[node_id] = (device, clock.true_s(device) + jitter_s)
    t_last = max(float(t.max()) for _, t in node_times.values())

    grid_rate = GRID_FACTOR * rate
    n_grid = int(np.ceil((t_last + 2 * GRID_LEAD_S) * grid_rate)) + 1
    grid = np.arange(n_grid) / grid_rate - GRID_LEAD_S
    if sc.worn:
        assert subject is not None
        pose, extra = _worn_pose(rig, sc, subject, grid, duration, rng)
    else:
        pose, extra = _off_face_pose(rig, sc, grid, duration, rng)

    imu_index = {imu.site: k for k, imu in enumerate(layout.imus)}
    earth_rate = earth_rate_world()
    temps_all: dict[int, np.ndarray] = {}
    temp_info: dict[str, Any] = {}
    for node_id, (_, t) in node_times.items():
        temps_all[node_id], temp_info = _temperatures(rig, sc, t, np.random.default_rng([rig.seed, 0x7E, scenario_key, take_seed]))

    nodes: dict[int, NodeTake] = {}
    for node_id, (device, t) in node_times.items():
        sites = tuple(rig.node_imus(node_id))
        cols = np.array([imu_index[s] for s in sites])
        n = len(sites)
        out = {k: np.empty((n_rows, n, 3)) for k in ("true_accel_mps2", "true_gyro_rads", "true_mag_uT")}
        q = np.empty((n_rows, n, 4))
        t_eval = np.clip(t, grid[0], grid[-1])
        for lo in np.arange(float(t_eval.min()), float(t_eval.max()) + CHUNK_S, CHUNK_S):
            sel = np.flatnonzero((t_eval >= lo) & (t_eval < lo + CHUNK_S))
            if sel.size == 0:
                continue
            g_lo = max(0, int(np.floor((t_eval[sel].min() - CHUNK_MARGIN_S - grid[0]) * grid_rate)))
            g_hi = min(n_grid, int(np.ceil((t_eval[sel].max() + CHUNK_MARGIN_S - grid[0]) * grid_rate)) + 1)
            idx = np.arange(g_lo, g_hi)
            R, p = pose(idx)
            sig = kinematic_signals(grid[idx], R[:, cols], p[:, cols], t_eval[sel], earth_rate_rads=earth_rate)
            out["true_accel_mps2"][sel] = sig.accel_mps2
            out["true_gyro_rads"][sel] = sig.gyro_rads
            out["true_mag_uT"][sel] = sig.mag_uT
            qx = Rotation.from_matrix(sig.R_world_sensor.reshape(-1, 3, 3)).as_quat().reshape(len(sel), n, 4)
            q[sel] = np.concatenate([qx[..., 3:], qx[..., :3]], axis=-1)
        temp = temps_all[node_id][:, cols]
        meas = [np.empty((n_rows, n, 3)) for _ in range(3)]
        for j, site in enumerate(sites):
            site_rng = np.random.default_rng([rig.seed, 0xE44, scenario_key, take_seed, int(cols[j])])
            a, g, m = apply_errors(rig.errors[site], t, out["true_accel_mps2"][:, j], out["true_gyro_rads"][:, j],
                                   out["true_mag_uT"][:, j], temp[:, j], site_rng)
            meas[0][:, j], meas[1][:, j], meas[2][:, j] = a, g, m
        nodes[node_id] = NodeTake(node_id, sites, device, t, out["true_accel_mps2"], out["true_gyro_rads"],
                                  out["true_mag_uT"], meas[0], meas[1], meas[2], temp, q)

    n_frames = int(round(duration * BLENDSHAPE_FPS))
    t_s = np.arange(n_frames) / BLENDSHAPE_FPS
    if sc.worn:
        weights = extra["weights"][:n_frames].astype(np.float32)
        if weights.shape[0] < n_frames:
            weights = np.concatenate([weights, np.repeat(weights[-1:], n_frames - weights.shape[0], axis=0)])
        R_wh, p_wh = extra["head_pose"](t_s)
    else:
        weights = np.zeros((n_frames, 52), dtype=np.float32)
        R_wh, p_wh = extra["tray_pose"](t_s)
    return SimTake(rig, sc, take_seed, duration, subject, t_s, weights, R_wh, p_wh, nodes, temp_info)


# ---------------------------------------------------------------------------------------------
# the emulated rig

TABLE_MAGIC = b"IMUSRC01"  # emu_source.TableSource's file format (imusic/emulation/mp/emu_source.py)
INT32_MAX = 2**31 - 1


def write_table(path: Path, period_us: int, accel_mps2: np.ndarray, gyro_rads: np.ndarray,
                mag_uT: np.ndarray) -> None:
    """A TableSource file: row k = (accel um/s^2, gyro urad/s, mag nT) x 3 per IMU, int32 LE."""
    n_rows, n = accel_mps2.shape[:2]
    rows = np.concatenate([accel_mps2 * 1e6, gyro_rads * 1e6, mag_uT * 1e3], axis=2)  # (N, n, 9)
    ints = np.clip(np.round(rows), -INT32_MAX, INT32_MAX).astype("<i4")
    with open(path, "wb") as f:
        f.write(TABLE_MAGIC)
        f.write(struct.pack("<IHH", period_us, n, 9))
        f.write(ints.reshape(n_rows, n * 9).tobytes())


def run_take(take: SimTake, out_dir: str | Path, *, overwrite: bool = True) -> Path:
    """Record `take` through the firmware: write rec.imu, blendshapes.csv, truth.json and truth.npz
    into `out_dir` (created). Returns `out_dir`."""
    from imusic.emulation.launcher import EmulatedNode
    from imusic.livelink import write_csv
    from imusic.protocol import decode_samples_bulk
    from imusic.recording import RecordingWriter

    out = Path(out_dir).resolve()  # the emulated node runs in its own working directory
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {out}: {exc.strerror or exc}") from None
    rig = take.rig
    layout = rig.layout
    period = take.period_us
    work = Path(tempfile.mkdtemp(prefix="imusic-sim-", dir=out))
    try:
        nodes: dict[int, EmulatedNode] = {}
        streams: dict[int, Path] = {}
        for node_id, nt in take.nodes.items():
            table = work / f"node{node_id}.table"
            write_table(table, period, nt.accel_mps2, nt.gyro_rads, nt.mag_uT)
            imus = layout.emulator_imus(node_id)
            for entry in imus:
                entry["temp_cdeg"] = take.temp_register_cdeg(str(entry["site"]))
            clock = rig.clocks[node_id]
            streams[node_id] = work / f"node{node_id}.bin"
            nodes[node_id] = EmulatedNode(
                imus=imus, rate_hz=layout.rate_hz, node_id=node_id, link=f"file:{streams[node_id]}",
                clock="virtual", source={"kind": "table", "path": str(table), "loop": False,
                                         "start_us": clock.offset_us, "seed": rig.seed},
                max_seconds=take.duration_s, offset_us=clock.offset_us, uid=clock.uid, workdir=work / f"node{node_id}")
        for node in nodes.values():
            node.start()
        try:
            for node_id, node in nodes.items():
                code = node.wait(600)
                if code != 0:
                    err = node.stderr_text().strip().splitlines()
                    raise UserError(f"emulated node {node_id} exited with status {code}"
                                    + (f": {err[-1]}" if err else ""))
        finally:
            for node in nodes.values():
                node.stop()

        rec = out / "rec.imu"
        meta = {"simulated": True, "scenario": take.scenario.name, "seed": rig.seed, "take_seed": take.take_seed,
                "layout": layout.name}
        with RecordingWriter(rec, overwrite=overwrite, meta=meta) as writer:
            for node_id in sorted(take.nodes):
                data = streams[node_id].read_bytes()
                _write_link(writer, node_id, data, take, decode_samples_bulk(data))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    write_csv(out / "blendshapes.csv", take.t_s, take.blendshapes, fps=BLENDSHAPE_FPS)
    (out / "truth.json").write_text(json.dumps(take.truth_json(), indent=1))
    take.save_npz(out / "truth.npz")
    return out


def _write_link(writer: Any, node_id: int, data: bytes, take: SimTake, batch: Any) -> None:
    """One node's byte stream as DATA chunks cut at SAMPLES frame ends, each received when the
    frame's last sample was taken plus the link latency (frames keep their order)."""
    clock = take.rig.clocks[node_id]
    nt = take.nodes[node_id]
    samples = batch.nodes.get(node_id)
    if samples is None or samples.frame_end is None or len(samples) == 0:
        raise TruthError(f"the emulated node {node_id} sent no samples")
    period = take.period_us
    rows = (samples.t_us - clock.offset_us) // period
    if np.any((samples.t_us - clock.offset_us) % period) or rows.min() < 1 or rows.max() >= nt.t_s.shape[0]:
        raise TruthError(f"node {node_id}: sample times are off the simulated ticks")
    fe = samples.frame_end
    last = np.flatnonzero(np.append(fe[1:] != fe[:-1], True))  # each frame's last sample
    ends = fe[last]
    rng = np.random.default_rng([take.rig.seed, 0x1A7, node_id, take.take_seed])
    arrive = nt.t_s[rows[last]] + (clock.latency_ms + rng.exponential(clock.latency_jitter_ms, size=len(last))) * 1e-3
    arrive = np.maximum.accumulate(arrive)
    link = writer.add_link(node_url(node_id), node_id=node_id, simulated=True)
    start = 0
    for end, t in zip(ends.tolist(), arrive.tolist()):
        writer.data(link, t, data[start:end])
        start = end
    if start < len(data):
        writer.data(link, float(arrive[-1]) + period * 1e-6, data[start:])


def record_scenario(layout: Layout | str, scenario_name: str, *, seed: int, duration_s: float | None = None,
                    out_dir: str | Path, subject_seed: int | None = None, take_seed: int = 0,
                    rig: Rig | None = None) -> Path:
    """Simulate a scenario on a rig and record it through the real firmware; returns `out_dir`.

    layout: a `Layout` or a layout name (``"imusic"``, ``"compact"``, ``"minimal"``, a .yaml path).
    scenario_name: one of `SCENARIOS` (``table_rest``, ``six_pose``, ``mag_rotation``, ``neutral``,
        ``neutral_head_motion``, ``expressions``, ``expressions_walk``).
    seed: the rig: `Rig.random(layout, seed)` (IMU errors, node clocks, uids). Takes of the same seed
        are the same hardware: calibrate with ``table_rest``/``six_pose``/``mag_rotation``/``neutral``
        takes of seed S and apply it to any other take of seed S (a rig of another seed has other
        node uids). `rig` overrides it.
    duration_s: seconds of recording (default: the scenario's, `SCENARIOS[name].default_duration_s`).
    subject_seed: the wearer (face shape, expression style) for worn scenarios (default: seed).
    take_seed: varies the motion, noise and temperatures between takes of one rig and scenario.

    Writes out_dir/rec.imu (replay with `imusic.replay.replay_blocks` or ``file://`` sessions;
    frames carry the layout's site names), blendshapes.csv, truth.json and truth.npz (module
    docstring; truth keys in docs/sim.md).
    """
    from imusic.placement import load_layout

    lay = load_layout(layout) if isinstance(layout, str) else layout
    the_rig = rig if rig is not None else Rig.random(lay, seed)
    sc = scenario(scenario_name)
    subject = Subject.random(seed if subject_seed is None else subject_seed) if sc.worn else None
    take = simulate_take(the_rig, sc.name, take_seed=take_seed, duration_s=duration_s, subject=subject)
    return run_take(take, out_dir)

