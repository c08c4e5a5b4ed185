"""Orientation of one IMU from its gyroscope, accelerometer and (optionally) magnetometer.

A thin wrapper over ``imufusion`` (x-io Technologies' Fusion AHRS, a published complementary
filter with gyro-range recovery and acceleration/magnetic rejection): nothing here estimates
orientation by itself. The wrapper converts the host's SI units to Fusion's (gyro deg/s, accel g,
field uT), fixes the earth convention to the project's world frame (NWU: x north, y west, z up),
and returns quaternions (w, x, y, z) of ``R_world_sensor`` (maps sensor-frame vectors to world).

Settings (``OrientationSettings``, immutable) are kept apart from the filter's state
(``OrientationFilter``). Quaternion helpers used by the feature code live here too, so the
runtime path needs nothing beyond numpy, scipy and imufusion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import imufusion
import numpy as np

__all__ = [
    "GRAVITY_MPS2",
    "OrientationFilter",
    "OrientationSettings",
    "orientation_of_arrays",
    "quat_conj",
    "quat_multiply",
    "quat_to_matrix",
    "matrix_to_quat",
    "rotvec_of_matrix",
]

GRAVITY_MPS2 = 9.80665  # standard gravity: Fusion takes accelerations in g
_DEG_PER_RAD = 180.0 / math.pi


@dataclass(frozen=True)
class OrientationSettings:
    """Fusion AHRS settings in the project's units. Defaults suit a head-worn IMU at 60 Hz.

    gain: weight of the accelerometer (and magnetometer) correction against gyro integration;
        Fusion's default 0.5. Lower trusts the gyro more (less tilt error during walking, more
        drift from gyro bias); the feature extractor uses the same gain for every IMU so common
        tilt errors cancel in relative rotations.
    gyro_range_dps: the configured gyro full scale; readings near it trigger Fusion's overrange
        recovery. 0 disables. The firmware's default range is 500-512 dps.
    acceleration_rejection_deg: accelerometer samples whose direction disagrees with the current
        gravity estimate by more than this are ignored (linear acceleration). 0 disables.
    magnetic_rejection_deg: the same for the magnetometer's heading. 0 disables.
    recovery_period_s: how long rejection may last before Fusion trusts the sensor again.
    use_magnetometer: use the field for heading when a reading is given; without it the heading
        is gyro-only (drifts with gyro bias) and starts at 0.
    startup: run Fusion's start-up ramp (high gain for its first 3 s, heading held at 0 meanwhile)
        so the first estimates converge from the identity; False starts straight at ``gain`` (for
        a filter given its initial orientation with ``set_quaternion``).
    """

    gain: float = 0.5
    gyro_range_dps: float = 500.0
    acceleration_rejection_deg: float = 0.0
    magnetic_rejection_deg: float = 10.0
    recovery_period_s: float = 5.0
    use_magnetometer: bool = False
    startup: bool = True

    def to_dict(self) -> dict[str, float | bool]:
        return {"gain": self.gain, "gyro_range_dps": self.gyro_range_dps,
                "acceleration_rejection_deg": self.acceleration_rejection_deg,
                "magnetic_rejection_deg": self.magnetic_rejection_deg,
                "recovery_period_s": self.recovery_period_s,
                "use_magnetometer": self.use_magnetometer, "startup": self.startup}


class OrientationFilter:
    """One IMU's streaming orientation estimate (imufusion.Ahrs underneath).

    ``update`` takes one sample in SI units and returns the quaternion (w, x, y, z) of
    ``R_world_sensor`` as float64. ``dt_s`` overrides the nominal period for one step (a sample
    after a short gap integrates the gyro over the whole gap).
    """

    def __init__(self, rate_hz: float, settings: OrientationSettings | None = None) -> None:
        if not rate_hz > 0:
            raise ValueError(f"rate_hz must be positive, got {rate_hz}")
        self.rate_hz = float(rate_hz)
        self.settings = settings if settings is not None else OrientationSettings()
        self._period_s = 1.0 / self.rate_hz
        self._ahrs = imufusion.Ahrs()
        self.reset()

    def _fusion_settings(self) -> imufusion.AhrsSettings:
        s = self.settings
        return imufusion.AhrsSettings(
            sample_rate=self.rate_hz, convention=imufusion.CONVENTION_NWU, gain=s.gain,
            gyroscope_range=s.gyro_range_dps, acceleration_rejection=s.acceleration_rejection_deg,
            magnetic_rejection=s.magnetic_rejection_deg, rejection_timeout=s.recovery_period_s)

    def reset(self) -> None:
        """Forget the state: the next update starts from the identity (with the start-up ramp)."""
        self._ahrs = imufusion.Ahrs()
        self._ahrs.set_settings(self._fusion_settings())
        if not self.settings.startup:
            self._ahrs.skip_startup()
        self._current_period_s = self._period_s
        self.updates = 0

    @property
    def settling(self) -> bool:
        """True while Fusion's start-up ramp is running (estimates still converging)."""
        return bool(self._ahrs.get_flags().startup)

    def quaternion(self) -> np.ndarray:
        """The current estimate, (w, x, y, z) of R_world_sensor."""
        return np.asarray(self._ahrs.get_quaternion(), dtype=np.float64)

    def set_quaternion(self, q_world_sensor: np.ndarray) -> None:
        """Replace the estimate (e.g. to start a filter with a heading consistent with another)."""
        q = np.asarray(q_world_sensor, dtype=np.float64)
        self._ahrs.set_quaternion((q / np.linalg.norm(q)).astype(np.float32))

    def update(self, gyro_rads: np.ndarray, accel_mps2: np.ndarray, mag_uT: np.ndarray | None = None,
               dt_s: float | None = None) -> np.ndarray:
        period = self._period_s if dt_s is None else float(dt_s)
        if period != self._current_period_s:
            self._ahrs.set_sample_period(period)
            self._current_period_s = period
        gyro_dps = np.asarray(gyro_rads, dtype=np.float64) * _DEG_PER_RAD
        accel_g = np.asarray(accel_mps2, dtype=np.float64) / GRAVITY_MPS2
        if (self.settings.use_magnetometer and mag_uT is not None
                and bool(np.all(np.isfinite(mag_uT)))):
            self._ahrs.update(gyro_dps, accel_g, np.asarray(mag_uT, dtype=np.float64))
        else:
            self._ahrs.update_no_magnetometer(gyro_dps, accel_g)
        self.updates += 1
        return self.quaternion()


def orientation_of_arrays(gyro_rads: np.ndarray, accel_mps2: np.ndarray, rate_hz: float,
                          mag_uT: np.ndarray | None = None,
                          settings: OrientationSettings | None = None) -> np.ndarray:
    """Batch helper: (T, 3) arrays of one IMU -> (T, 4) quaternions, one filter run in order.

    Rows with a non-finite gyro or accel keep the previous estimate (no update)."""
    filt = OrientationFilter(rate_hz, settings)
    n = int(np.asarray(gyro_rads).shape[0])
    out = np.empty((n, 4))
    q = filt.quaternion()
    for i in range(n):
        g, a = gyro_rads[i], accel_mps2[i]
        if np.all(np.isfinite(g)) and np.all(np.isfinite(a)):
            q = filt.update(g, a, None if mag_uT is None else mag_uT[i])
        out[i] = q
    return out


# --- quaternion helpers (w, x, y, z), float64 -------------------------------------------------

def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b (broadcasts over leading axes)."""
    aw, ax, ay, az = np.moveaxis(np.asarray(a, dtype=np.float64), -1, 0)
    bw, bx, by, bz = np.moveaxis(np.asarray(b, dtype=np.float64), -1, 0)
    return np.stack([aw * bw - ax * bx - ay * by - az * bz,
                     aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw], axis=-1)


def quat_conj(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    return q * np.array([1.0, -1.0, -1.0, -1.0])


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(..., 4) unit quaternions -> (..., 3, 3) rotation matrices."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.sqrt((q * q).sum(axis=-1, keepdims=True))
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    r = np.empty(q.shape[:-1] + (3, 3))
    r[..., 0, 0] = 1 - 2 * (y * y + z * z)
    r[..., 0, 1] = 2 * (x * y - w * z)
    r[..., 0, 2] = 2 * (x * z + w * y)
    r[..., 1, 0] = 2 * (x * y + w * z)
    r[..., 1, 1] = 1 - 2 * (x * x + z * z)
    r[..., 1, 2] = 2 * (y * z - w * x)
    r[..., 2, 0] = 2 * (x * z - w * y)
    r[..., 2, 1] = 2 * (y * z + w * x)
    r[..., 2, 2] = 1 - 2 * (x * x + y * y)
    return r


def matrix_to_quat(r: np.ndarray) -> np.ndarray:
    """(3, 3) rotation matrix -> (w, x, y, z) with w >= 0 (via scipy for numerical care)."""
    from scipy.spatial.transform import Rotation

    xyzw = Rotation.from_matrix(np.asarray(r, dtype=np.float64)).as_quat()
    q = np.array([xyzw[3], xyzw[0], xyzw[1], xyzw[2]])
    return q if q[0] >= 0 else -q


def rotvec_of_matrix(r: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle, rad) of a (3, 3) rotation matrix, without scipy overhead.

    Accurate for the small-to-moderate angles features see; near pi it falls back to scipy."""
    cos_angle = (r[0, 0] + r[1, 1] + r[2, 2] - 1.0) * 0.5
    axis2s = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])  # 2 sin(angle) axis
    if cos_angle < -0.99:
        from scipy.spatial.transform import Rotation

        return Rotation.from_matrix(r).as_rotvec()
    sin_angle = 0.5 * math.sqrt(float(axis2s @ axis2s))
    angle = math.atan2(sin_angle, min(1.0, max(-1.0, cos_angle)))
    scale = 0.5 if sin_angle < 1e-9 else angle / (2.0 * sin_angle)
    return axis2s * scale
