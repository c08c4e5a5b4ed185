"""IMU physics and sensor errors: what a chip on the skin (or on a table) measures.

Physics (all in SI units; frames as in docs/sim.md: world W is north-west-up, the sensor frame S is
the chip's axes, rotation matrices ``R_a_b`` map b-frame vectors into a):

- accelerometer: specific force ``R_sensor_world @ (a_world + g z_W)`` (at rest it reads +g up);
- gyroscope: the sensor's angular velocity in its own axes, plus the Earth's rotation;
- magnetometer: ``R_sensor_world @ field_world``.

`kinematic_signals` computes the three from a sensor's world pose sampled on a fine, uniform
internal grid: position through a cubic spline (its second derivative is the acceleration),
angular velocity from the logarithm of the relative rotation between neighbouring grid poses
(a midpoint rate, second-order accurate, well conditioned for any attitude), interpolated to the
wanted times; the orientation at those times by geodesic interpolation between grid poses.

Errors (`ImuErrors`, the truth of one IMU, drawn by `draw_errors` from a `ChipModel`) are applied
by `apply_errors`: scale/cross-axis matrix, turn-on bias with a temperature coefficient and a slow
random walk, white noise at the node's sample rate, hard and soft iron on the magnetometer.
Quantisation and saturation are left to the emulated chips (they convert at the range the firmware
configures); `quantise` does the same offline for tests.

Numbers and their sources or stated choices: docs/sim.md, "IMU physics and error model".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.spatial.transform import Rotation

__all__ = [
    "CHIPS", "EARTH_FIELD_UT", "EARTH_RATE_RADS", "MAG_NOISE_UT", "STANDARD_GRAVITY_MPS2", "ChipModel",
    "ImuErrors", "apply_errors", "draw_errors", "earth_rate_world", "kinematic_signals", "noise_std",
    "quantise", "rotation_about",
]

STANDARD_GRAVITY_MPS2 = 9.80665
DEG = np.pi / 180.0
UG_TO_MPS2 = STANDARD_GRAVITY_MPS2 * 1e-6
MDPS_TO_RADS = DEG * 1e-3
# World field (NWU): 20 uT north, 45 uT down (a mid-latitude European field, |B| = 49.2 uT).
EARTH_FIELD_UT = np.array([20.0, 0.0, -45.0])
EARTH_RATE_RADS = 7.2921159e-5  # sidereal rotation rate of the Earth
DEFAULT_LATITUDE_DEG = 48.0
# QMC5883P noise: the reference gives none; QMC-family datasheets quote a few milligauss RMS at the
# fastest settings. Stated choice: 0.2 uT (2 mG) RMS per sample at the firmware's OSR 8.
MAG_NOISE_UT = 0.2
MAG_RANGE_GAUSS = 8  # the firmware's default (config.py)


@dataclass(frozen=True)
class ChipModel:
    """A 6-axis chip's error statistics. Noise densities are the datasheet's (reference/imu-chips.md);
    the rest are stated choices for consumer MEMS parts (docs/sim.md). Spreads are the half-widths
    of uniform distributions per axis unless named ``sigma``."""

    name: str
    accel_noise_ug_rthz: float  # accelerometer noise density, ug/sqrt(Hz)
    gyro_noise_mdps_rthz: float  # gyroscope noise density, mdps/sqrt(Hz)
    accel_range_g: int  # the full scale the firmware configures (config.py defaults)
    gyro_range_dps: int
    noise_bandwidth_hz: float  # equivalent noise bandwidth at the firmware's filter settings
    gyro_bias_spread_dps: float  # turn-on bias
    accel_bias_spread_mg: float
    gyro_bias_instability_dph: float  # sets the bias random walk (see `bias_walk`)
    accel_bias_instability_ug: float
    scale_error_sigma: float  # fraction, per axis, normal
    cross_axis_sigma: float  # fraction, per off-diagonal element, normal
    gyro_bias_tc_dps_per_c: float  # temperature coefficient of the bias, half-width per axis
    accel_bias_tc_mg_per_c: float

    def accel_noise_std_mps2(self) -> float:
        """White noise of one sample (any sample rate below twice the bandwidth)."""
        return self.accel_noise_ug_rthz * UG_TO_MPS2 * float(np.sqrt(self.noise_bandwidth_hz))

    def gyro_noise_std_rads(self) -> float:
        return self.gyro_noise_mdps_rthz * MDPS_TO_RADS * float(np.sqrt(self.noise_bandwidth_hz))

    def bias_walk(self) -> tuple[float, float]:
        """(gyro rad/s/sqrt(s), accel m/s^2/sqrt(s)): random walks whose drift over
        ``BIAS_WALK_HORIZON_S`` equals the bias instability (a stated simplification: a random walk
        in place of the flicker floor, so the bias wanders slowly and without bound)."""
        root = float(np.sqrt(BIAS_WALK_HORIZON_S))
        return (self.gyro_bias_instability_dph * DEG / 3600.0 / root,
                self.accel_bias_instability_ug * UG_TO_MPS2 / root)


BIAS_WALK_HORIZON_S = 100.0

# QMI8658 at the firmware's settings: ODR 448 Hz, low-pass 5.39 % of ODR (24 Hz) below 200 Hz host
# rate; a first-order roll-off's noise bandwidth is pi/2 times its corner: ~38 Hz.
# ICM-42688-P: ODR 1 kHz, bandwidth ODR/40 = 25 Hz -> ~39 Hz.
CHIPS: dict[str, ChipModel] = {
    "qmi8658": ChipModel(
        name="qmi8658", accel_noise_ug_rthz=150.0, gyro_noise_mdps_rthz=15.0, accel_range_g=8,
        gyro_range_dps=512, noise_bandwidth_hz=0.5 * np.pi * 0.0539 * 448.4,
        gyro_bias_spread_dps=1.0, accel_bias_spread_mg=40.0, gyro_bias_instability_dph=10.0,
        accel_bias_instability_ug=60.0, scale_error_sigma=0.01, cross_axis_sigma=0.01,
        gyro_bias_tc_dps_per_c=0.015, accel_bias_tc_mg_per_c=0.2),
    "icm42688": ChipModel(
        name="icm42688", accel_noise_ug_rthz=70.0, gyro_noise_mdps_rthz=2.8, accel_range_g=8,
        gyro_range_dps=500, noise_bandwidth_hz=0.5 * np.pi * 1000.0 / 40.0,
        gyro_bias_spread_dps=0.5, accel_bias_spread_mg=20.0, gyro_bias_instability_dph=5.0,
        accel_bias_instability_ug=40.0, scale_error_sigma=0.005, cross_axis_sigma=0.005,
        gyro_bias_tc_dps_per_c=0.005, accel_bias_tc_mg_per_c=0.15),
}


def _arr(values: Any, shape: tuple[int, ...]) -> np.ndarray:
    out = np.asarray(values, dtype=np.float64).reshape(shape)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class ImuErrors:
    """The truth of one IMU's errors, in its chip axes.

    accelerometer: measured = accel_matrix @ true + accel_bias(T);
    gyroscope: measured = gyro_matrix @ true + gyro_bias(T);
    bias(T) = bias + bias_tc * (T - reference_temp_c) (plus the take's random walk, not stored here);
    magnetometer: measured = mag_soft_iron @ true + mag_hard_iron_uT (identity and zeros without one);
    mounting: R_nominal_sensor = mount_R_nominal_sensor (the chip as stuck, relative to the nominal
    mounting at its site); placement_offset_mm: where it sits relative to the catalogue position
    (face frame, millimetres on the canonical face).
    """

    chip: str
    accel_bias_mps2: np.ndarray
    accel_matrix: np.ndarray
    gyro_bias_rads: np.ndarray
    gyro_matrix: np.ndarray
    gyro_bias_tc_rads_per_c: np.ndarray
    accel_bias_tc_mps2_per_c: np.ndarray
    reference_temp_c: float
    mag_hard_iron_uT: np.ndarray
    mag_soft_iron: np.ndarray
    mount_R_nominal_sensor: np.ndarray
    placement_offset_mm: np.ndarray
    has_mag: bool = False

    _VECTORS = ("accel_bias_mps2", "gyro_bias_rads", "gyro_bias_tc_rads_per_c", "accel_bias_tc_mps2_per_c",
                "mag_hard_iron_uT", "placement_offset_mm")
    _MATRICES = ("accel_matrix", "gyro_matrix", "mag_soft_iron", "mount_R_nominal_sensor")

    def __post_init__(self) -> None:
        for name in self._VECTORS:
            object.__setattr__(self, name, _arr(getattr(self, name), (3,)))
        for name in self._MATRICES:
            object.__setattr__(self, name, _arr(getattr(self, name), (3, 3)))

    @staticmethod
    def ideal(chip: str = "qmi8658", has_mag: bool = False) -> ImuErrors:
        """No errors at all (tests of the physics)."""
        z = np.zeros(3)
        eye = np.eye(3)
        return ImuErrors(chip, z, eye, z, eye, z, z, 25.0, z, eye, eye, z, has_mag)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImuErrors) and self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]

    def gyro_bias_at(self, temp_c: np.ndarray | float) -> np.ndarray:
        """Gyro bias (rad/s) at temperature(s) temp_c: (..., 3)."""
        dt = np.asarray(temp_c, dtype=np.float64)[..., None] - self.reference_temp_c
        return self.gyro_bias_rads + dt * self.gyro_bias_tc_rads_per_c

    def accel_bias_at(self, temp_c: np.ndarray | float) -> np.ndarray:
        dt = np.asarray(temp_c, dtype=np.float64)[..., None] - self.reference_temp_c
        return self.accel_bias_mps2 + dt * self.accel_bias_tc_mps2_per_c

    def misalignment_deg(self) -> float:
        return float(np.degrees(np.linalg.norm(Rotation.from_matrix(self.mount_R_nominal_sensor).as_rotvec())))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"chip": self.chip, "has_mag": self.has_mag, "reference_temp_c": self.reference_temp_c}
        for name in self._VECTORS + self._MATRICES:
            out[name] = np.asarray(getattr(self, name)).tolist()
        return out

    @staticmethod
    def from_json(d: dict[str, Any]) -> ImuErrors:
        fields = {name: np.asarray(d[name], dtype=np.float64) for name in ImuErrors._VECTORS + ImuErrors._MATRICES}
        return ImuErrors(chip=str(d["chip"]), reference_temp_c=float(d["reference_temp_c"]),
                         has_mag=bool(d.get("has_mag", False)), **fields)


def rotation_about(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64)
    return Rotation.from_rotvec(axis / np.linalg.norm(axis) * angle_rad).as_matrix()


def _random_unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def draw_errors(chip: str | ChipModel, rng: np.random.Generator, *, has_mag: bool = False,
                normal: np.ndarray | None = None, misalignment_deg: float = 2.5, placement_mm: float = 2.5,
                reference_temp_c: float = 25.0, hard_iron_uT: float = 30.0, soft_iron: float = 0.03) -> ImuErrors:
    """One IMU's errors, drawn from the chip's statistics.

    misalignment: a rotation about a random axis by U(0.2, 1.2) x misalignment_deg; placement: an
    offset of U(0.2, 1.2) x placement_mm in a random direction, tangent to the skin when `normal`
    (face frame) is given; hard iron U(-hard_iron_uT, +hard_iron_uT) per axis; soft iron the identity
    plus a symmetric matrix with entries U(-soft_iron, +soft_iron) (only with `has_mag`)."""
    model = CHIPS[chip] if isinstance(chip, str) else chip

    def spread(half: float) -> np.ndarray:
        return rng.uniform(-half, half, size=3)

    def matrix(scale_sigma: float, cross_sigma: float) -> np.ndarray:
        m = np.eye(3) + np.diag(rng.normal(0.0, scale_sigma, size=3))
        off = rng.normal(0.0, cross_sigma, size=(3, 3))
        np.fill_diagonal(off, 0.0)
        return m + off

    accel_bias = spread(model.accel_bias_spread_mg * 1e-3 * STANDARD_GRAVITY_MPS2)
    gyro_bias = spread(model.gyro_bias_spread_dps * DEG)
    accel_m = matrix(model.scale_error_sigma, model.cross_axis_sigma)
    gyro_m = matrix(model.scale_error_sigma, model.cross_axis_sigma)
    gyro_tc = spread(model.gyro_bias_tc_dps_per_c * DEG)
    accel_tc = spread(model.accel_bias_tc_mg_per_c * 1e-3 * STANDARD_GRAVITY_MPS2)
    mount = rotation_about(_random_unit(rng), float(rng.uniform(0.2, 1.2)) * misalignment_deg * DEG)
    direction = _random_unit(rng)
    if normal is not None:
        n = np.asarray(normal, dtype=np.float64)
        n = n / np.linalg.norm(n)
        direction = direction - n * float(direction @ n)
        direction /= max(float(np.linalg.norm(direction)), 1e-9)
    offset = direction * float(rng.uniform(0.2, 1.2)) * placement_mm
    # drawn even without a magnetometer, so a rig's other errors do not depend on which IMUs have one
    hard = spread(hard_iron_uT)
    sym = rng.uniform(-soft_iron, soft_iron, size=(3, 3))
    soft = np.eye(3) + 0.5 * (sym + sym.T)
    if not has_mag:
        hard, soft = np.zeros(3), np.eye(3)
    return ImuErrors(model.name, accel_bias, accel_m, gyro_bias, gyro_m, gyro_tc, accel_tc, reference_temp_c,
                     hard, soft, mount, offset, has_mag)


def earth_rate_world(latitude_deg: float = DEFAULT_LATITUDE_DEG) -> np.ndarray:
    """The Earth's rotation in the NWU world frame at a latitude (rad/s)."""
    lat = latitude_deg * DEG
    return EARTH_RATE_RADS * np.array([np.cos(lat), 0.0, np.sin(lat)])


@dataclass(frozen=True)
class TrueSignals:
    """What an ideal sensor reads, in its own axes, at the requested times."""

    accel_mps2: np.ndarray  # (n, 3) specific force
    gyro_rads: np.ndarray  # (n, 3)
    mag_uT: np.ndarray  # (n, 3)
    R_world_sensor: np.ndarray = field(repr=False)  # (n, 3, 3)


def kinematic_signals(grid_t_s: np.ndarray, R_world_sensor: np.ndarray, p_world_m: np.ndarray,
                      t_s: np.ndarray, *, field_world_uT: np.ndarray = EARTH_FIELD_UT,
                      earth_rate_rads: np.ndarray | None = None) -> TrueSignals:
    """Ideal accelerometer, gyroscope and magnetometer readings of sensors whose world pose is given
    on a uniform grid.

    grid_t_s: (G,) uniform, increasing; R_world_sensor: (G, m, 3, 3) or (G, 3, 3); p_world_m: (G, m, 3)
    or (G, 3); t_s: (n,) times inside the grid. Returns arrays (n, m, 3) (or (n, 3)). The grid should
    be several times finer than the fastest motion (the simulator uses 4x the sample rate)."""
    single = R_world_sensor.ndim == 3
    if single:
        R_world_sensor = R_world_sensor[:, None]
        p_world_m = p_world_m[:, None]
    grid = np.asarray(grid_t_s, dtype=np.float64)
    t = np.asarray(t_s, dtype=np.float64)
    g_n, m = R_world_sensor.shape[:2]
    dt = float(grid[1] - grid[0])
    if np.any(t < grid[0] - 1e-9) or np.any(t > grid[-1] + 1e-9):
        raise ValueError("sample times outside the kinematic grid")

    # acceleration: C2 cubic spline through the positions
    spline = CubicSpline(grid, p_world_m.reshape(g_n, m * 3), axis=0)
    a_world = spline(t, 2).reshape(t.shape[0], m, 3)

    # orientation at t: geodesic interpolation between the grid poses
    pos = np.clip((t - grid[0]) / dt, 0.0, g_n - 1 - 1e-9)
    i = np.minimum(pos.astype(np.int64), g_n - 2)
    frac = (pos - i)[:, None]
    R0 = R_world_sensor[i]  # (n, m, 3, 3)
    rel_all = Rotation.from_matrix(np.einsum("...ji,...jk->...ik", R_world_sensor[:-1],
                                             R_world_sensor[1:]).reshape(-1, 3, 3)).as_rotvec()
    rel_all = rel_all.reshape(g_n - 1, m, 3)  # body-frame rotation from grid i to i+1
    step = Rotation.from_rotvec((rel_all[i] * frac[..., None]).reshape(-1, 3)).as_matrix().reshape(-1, m, 3, 3)
    R_t = R0 @ step

    # body rate: the midpoint rates rel/dt at grid times + dt/2, spline-interpolated to t
    mid_t = grid[:-1] + 0.5 * dt
    rate_mid = rel_all / dt
    if g_n - 1 >= 4:
        gyro = CubicSpline(mid_t, rate_mid.reshape(g_n - 1, m * 3), axis=0)(t).reshape(t.shape[0], m, 3)
    else:
        gyro = np.stack([np.stack([np.interp(t, mid_t, rate_mid[:, j, k]) for k in range(3)], -1)
                         for j in range(m)], 1)

    R_sw = np.swapaxes(R_t, -1, -2)
    f_world = a_world + np.array([0.0, 0.0, STANDARD_GRAVITY_MPS2])
    accel = np.einsum("nmij,nmj->nmi", R_sw, f_world)
    mag = np.einsum("nmij,j->nmi", R_sw, np.asarray(field_world_uT, dtype=np.float64))
    if earth_rate_rads is not None:
        gyro = gyro + np.einsum("nmij,j->nmi", R_sw, np.asarray(earth_rate_rads, dtype=np.float64))
    if single:
        return TrueSignals(accel[:, 0], gyro[:, 0], mag[:, 0], R_t[:, 0])
    return TrueSignals(accel, gyro, mag, R_t)


def noise_std(chip: str | ChipModel) -> tuple[float, float, float]:
    """(accel m/s^2, gyro rad/s, mag uT) white noise per sample."""
    model = CHIPS[chip] if isinstance(chip, str) else chip
    return model.accel_noise_std_mps2(), model.gyro_noise_std_rads(), MAG_NOISE_UT


def apply_errors(errors: ImuErrors, t_s: np.ndarray, accel_mps2: np.ndarray, gyro_rads: np.ndarray,
                 mag_uT: np.ndarray, temp_c: np.ndarray, rng: np.random.Generator, *,
                 noise: bool = True, walk: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The readings of one IMU with its errors: (accel m/s^2, gyro rad/s, mag uT), each (n, 3).

    t_s: (n,) sample times (increasing; sets the random walk's steps); temp_c: (n,) the chip's
    temperature. The noise is white at the sample rate with the chip's per-sample std (its density
    over the equivalent noise bandwidth): the firmware's low-pass corner (~24 Hz) is below the
    Nyquist rate of every host rate, so samples are nearly uncorrelated. Not quantised or clipped:
    the emulated chips do that."""
    model = CHIPS[errors.chip]
    n = t_s.shape[0]
    accel = accel_mps2 @ errors.accel_matrix.T + errors.accel_bias_at(temp_c)
    gyro = gyro_rads @ errors.gyro_matrix.T + errors.gyro_bias_at(temp_c)
    if walk and n > 1:
        gyro_walk, accel_walk = model.bias_walk()
        dt = np.diff(t_s, prepend=t_s[0])[:, None]
        root = np.sqrt(np.maximum(dt, 0.0))
        gyro = gyro + np.cumsum(rng.normal(size=(n, 3)) * root * gyro_walk, axis=0)
        accel = accel + np.cumsum(rng.normal(size=(n, 3)) * root * accel_walk, axis=0)
    if noise:
        a_std, g_std, m_std = noise_std(model)
        accel = accel + rng.normal(0.0, a_std, size=(n, 3))
        gyro = gyro + rng.normal(0.0, g_std, size=(n, 3))
    if errors.has_mag:
        mag = mag_uT @ errors.mag_soft_iron.T + errors.mag_hard_iron_uT
        if noise:
            mag = mag + rng.normal(0.0, MAG_NOISE_UT, size=(n, 3))
    else:
        mag = np.array(mag_uT, dtype=np.float64, copy=True)
    return accel, gyro, mag


def quantise(accel_mps2: np.ndarray, gyro_rads: np.ndarray, chip: str | ChipModel,
             mag_uT: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Offline stand-in for the chips' conversion (tests): counts at the firmware's ranges, rounded
    and clipped to +-32767, back in SI units."""
    model = CHIPS[chip] if isinstance(chip, str) else chip
    a_lsb = model.accel_range_g * STANDARD_GRAVITY_MPS2 / 32768
    g_lsb = model.gyro_range_dps * DEG / 32768
    a = np.clip(np.round(accel_mps2 / a_lsb), -32767, 32767) * a_lsb
    g = np.clip(np.round(gyro_rads / g_lsb), -32767, 32767) * g_lsb
    m = None
    if mag_uT is not None:
        m_lsb = 100.0 / 3750  # 8 gauss range: 3750 counts per gauss, 100 uT per gauss
        m = np.clip(np.round(mag_uT / m_lsb), -32767, 32767) * m_lsb
    return a, g, m
