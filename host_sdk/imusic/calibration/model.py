"""The calibration file: results per IMU, bound to the hardware, applied to frames.

One JSON file per rig (docs/calibration.md has the schema). Every IMU is known by its identity: the
node's uid (HELLO, hex) and slot, the chip, where it hangs (bus, mux address, mux channel) and its
site. A step stores its result under its own key of each IMU it calibrated (or of the node, for the
clock, or of the face site, for the neutral pose) together with when and from what data it was made;
other entries are left alone. Saving writes a temporary file beside the target and renames it over
the old one, so a failed step or a crash never leaves half a file.

Correction (SI units; NaN stays NaN):
    accel = A (a_raw - b_a)        A symmetric, from the six-pose fit (identity before it)
    gyro  = g_raw - b_g            bias at rest
    mag   = S (m_raw - h)          S symmetric soft-iron correction, h hard iron
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from imusic.align import Frame, FrameBlock
from imusic.calibration.estimators import CalibrationError
from imusic.errors import UserError, read_error
from imusic.protocol import ChipId, Hello, ImuInfo

_FramesT = TypeVar("_FramesT", Frame, FrameBlock)

__all__ = ["Calibration", "CalibrationFileError", "ImuIdentity", "SCHEMA", "SCHEMA_VERSION", "identity_of"]

SCHEMA = "imusic-calibration"
SCHEMA_VERSION = 1
STEPS = ("gyro", "accel", "mag", "clock", "neutral")


class CalibrationFileError(CalibrationError):
    """A calibration file that cannot be used: unreadable, malformed, or for other hardware (the
    message names the file, and the node and IMU that do not match)."""

    def __init__(self, message: str) -> None:
        UserError.__init__(self, message)
        self.step = "file"
        self.who = ""


def chip_name(code: int) -> str:
    try:
        return ChipId(code).name.lower().replace("icm42688p", "icm42688")
    except ValueError:
        return f"chip{code}"


@dataclass(frozen=True)
class ImuIdentity:
    """What makes an IMU this IMU: its node's uid and slot, the chip and where it is wired."""

    node_uid: str  # HELLO uid, hex
    slot: int
    chip: str
    bus: int
    mux: int | None  # I2C mux address, None without a mux
    channel: int | None
    site: str

    @property
    def key(self) -> str:
        return f"{self.node_uid}/{self.slot}"

    def label(self, node_id: int | None = None) -> str:
        node = f"node {node_id}" if node_id is not None else f"node {self.node_uid}"
        return f"{node} IMU {self.slot} ({self.site})"

    def to_json(self) -> dict[str, Any]:
        return {"node_uid": self.node_uid, "slot": self.slot, "chip": self.chip, "bus": self.bus,
                "mux": self.mux, "channel": self.channel, "site": self.site}

    @staticmethod
    def from_json(d: dict[str, Any]) -> ImuIdentity:
        return ImuIdentity(str(d["node_uid"]), int(d["slot"]), str(d["chip"]), int(d["bus"]),
                           None if d.get("mux") is None else int(d["mux"]),
                           None if d.get("channel") is None else int(d["channel"]), str(d["site"]))

    def differences(self, other: ImuIdentity) -> list[str]:
        out = []
        for name in ("chip", "bus", "mux", "channel", "site"):
            a, b = getattr(self, name), getattr(other, name)
            if a != b:
                out.append(f"{name} {b} (the file says {a})")
        return out


def identity_of(hello: Hello, slot: int) -> ImuIdentity:
    imu: ImuInfo = hello.imus[slot]
    has_mux = imu.mux_addr != 0
    return ImuIdentity(hello.uid.hex(), slot, chip_name(imu.chip), imu.bus, imu.mux_addr if has_mux else None,
                       imu.mux_channel if has_mux else None, imu.site)


def _made(source: str, **extra: Any) -> dict[str, Any]:
    """Provenance of a step's result: when and from what."""
    return {"unix_s": round(time.time(), 3), "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": source, **extra}


def _vec(x: Any, n: int = 3) -> list[float]:
    arr = np.asarray(x, dtype=np.float64).reshape(n)
    return [float(v) for v in arr]


def _mat(x: Any) -> list[list[float]]:
    return [[float(v) for v in row] for row in np.asarray(x, dtype=np.float64).reshape(3, 3)]


@dataclass
class _Correction:
    """Per-frame-layout arrays for ``apply``."""

    accel_offset: np.ndarray  # (n, 3)
    accel_matrix: np.ndarray  # (n, 3, 3)
    gyro_bias: np.ndarray
    gyro_matrix: np.ndarray  # (n, 3, 3): gain relative to the head reference (neutral step); identity if none
    gyro_offset: np.ndarray  # (n, 3): bias left relative to the head reference, after the matrix (neutral step)
    mag_offset: np.ndarray
    mag_matrix: np.ndarray
    identity: bool  # nothing to do
    fingerprint: str = ""  # set by seal()

    def seal(self) -> _Correction:
        """Name these numbers: frames corrected by them carry it (``Frame.corrected_by``), so two
        copies of one calibration (the same file loaded twice) are told from different ones."""
        h = hashlib.sha256()
        for arr in (self.accel_offset, self.accel_matrix, self.gyro_bias, self.gyro_matrix, self.gyro_offset,
                    self.mag_offset, self.mag_matrix):
            h.update(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
        self.fingerprint = h.hexdigest()[:16]
        return self


@dataclass
class Calibration:
    """A rig's calibration (see the module docstring). ``imus`` by identity key (uid/slot)."""

    imus: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> {"identity": {...}, step: {...}}
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)  # uid -> {"node_id", "board", "clock"}
    neutral: dict[str, dict[str, Any]] = field(default_factory=dict)  # face site -> {"q_ref_sensor", ...}
    head_reference: str | None = None
    created_unix_s: float = field(default_factory=time.time)
    path: Path | None = None
    # node id -> uid, from the HELLOs of the session it is applied to (check_hardware); else the file's
    _bound: dict[int, str] = field(default_factory=dict)
    _cache: dict[tuple[tuple[str, ...], tuple[int, ...]], _Correction] = field(default_factory=dict)

    # ---- building

    def register(self, hellos: Iterable[Hello]) -> None:
        """Add the nodes and IMUs of these HELLOs (identity only) and bind their node ids."""
        for hello in hellos:
            uid = hello.uid.hex()
            node = self.nodes.setdefault(uid, {})
            node["node_id"] = hello.node_id
            node["board"] = hello.board
            for slot in range(hello.n_imus):
                ident = identity_of(hello, slot)
                entry = self.imus.get(ident.key)
                if entry is None or ImuIdentity.from_json(entry["identity"]) != ident:
                    self.imus[ident.key] = {"identity": ident.to_json()}  # new or rewired: start afresh
            self._bound[hello.node_id] = uid
        self._cache.clear()

    def set_step(self, key: str, step: str, result: dict[str, Any]) -> None:
        if key not in self.imus:
            raise KeyError(key)
        self.imus[key][step] = result
        self._cache.clear()

    def set_gyro(self, ident: ImuIdentity, bias_rads: np.ndarray, stderr_rads: np.ndarray, *, samples: int,
                 temp_c: float | None, source: str, seconds: float) -> None:
        self.set_step(ident.key, "gyro", {
            "bias_rads": _vec(bias_rads), "bias_stderr_rads": _vec(stderr_rads), "temp_c": temp_c,
            "made": _made(source, samples=samples, seconds=round(seconds, 3))})

    def set_accel(self, ident: ImuIdentity, offset_mps2: np.ndarray, matrix: np.ndarray, *, residual_mg: float,
                  poses: int, source: str, seconds: float, method: str = "six-pose", **extra: Any) -> None:
        self.set_step(ident.key, "accel", {
            "offset_mps2": _vec(offset_mps2), "matrix": _mat(matrix), "residual_mg": residual_mg,
            "made": _made(source, poses=poses, seconds=round(seconds, 3), method=method, **extra)})

    def set_mag(self, ident: ImuIdentity, offset_uT: np.ndarray, matrix: np.ndarray, *, field_uT: float,
                spread_pct: float, coverage: float, samples: int, source: str, seconds: float) -> None:
        self.set_step(ident.key, "mag", {
            "offset_uT": _vec(offset_uT), "matrix": _mat(matrix), "field_uT": field_uT, "spread_pct": spread_pct,
            "coverage": coverage, "made": _made(source, samples=samples, seconds=round(seconds, 3))})

    def set_clock(self, uid: str, drift_ppm: float, *, source: str, seconds: float, points: int | None = None) -> None:
        self.nodes.setdefault(uid, {})["clock"] = {
            "drift_ppm": drift_ppm, "made": _made(source, seconds=round(seconds, 3), points=points)}

    def set_gyro_gain(self, ident: ImuIdentity, matrix: np.ndarray, offset_rads: np.ndarray, *, relative_to: str,
                      source: str, seconds: float, **extra: Any) -> None:
        """The gyro's gain and cross-axis correction, and its bias left over, relative to the head
        reference's gyro: ``gyro = matrix @ (raw - bias) - offset_rads``. Made by the neutral step
        (worn, at skin temperature), kept apart from the gyro step's bias (on the table)."""
        self.set_step(ident.key, "gyro_gain", {"matrix": _mat(matrix), "offset_rads": _vec(offset_rads),
                                               "relative_to": relative_to,
                                               "made": _made(source, seconds=round(seconds, 3), **extra)})

    def set_gyro_scale(self, ident: ImuIdentity, matrix: np.ndarray | None, *, source: str, seconds: float,
                       **extra: Any) -> None:
        """The gyro's own scale and cross-axis correction, from the accel step's turns between still
        poses: ``gyro = gyro_gain @ matrix @ (raw - bias) - offset``. None (the turns did not fit)
        removes an older one, so a re-run accel step never leaves a scale from another capture."""
        if matrix is None:
            self.imus.get(ident.key, {}).pop("gyro_scale", None)
            self._cache.clear()
            return
        self.set_step(ident.key, "gyro_scale", {"matrix": _mat(matrix),
                                                "made": _made(source, seconds=round(seconds, 3), **extra)})

    def set_accel_alignment(self, ident: ImuIdentity, rotation: np.ndarray, *, relative_to: str, source: str,
                            seconds: float, **extra: Any) -> None:
        """The rotation that brings the accelerometer's axes onto the gyro's, as the neutral step sees
        it against the head reference (the cross-axis errors turn the two apart by about a degree, and
        a six-pose fit cannot see a rotation): ``accel = rotation @ accel_matrix @ (raw - offset)``.
        Kept apart from the accel step's entry, so re-running either keeps the other."""
        self.set_step(ident.key, "accel_align", {"rotation": _mat(rotation), "relative_to": relative_to,
                                                 "made": _made(source, seconds=round(seconds, 3), **extra)})

    def accel_alignment(self, key: str) -> np.ndarray:
        entry = self.imus.get(key, {}).get("accel_align")
        return np.eye(3) if entry is None else np.asarray(entry["rotation"], dtype=np.float64)

    def gyro_gain(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(matrix, offset_rads) of the neutral step's gyro correction; identity and zero if none."""
        entry = self.imus.get(key, {}).get("gyro_gain")
        if entry is None:
            return np.eye(3), np.zeros(3)
        return (np.asarray(entry["matrix"], dtype=np.float64),
                np.asarray(entry.get("offset_rads", (0.0, 0.0, 0.0)), dtype=np.float64))

    def gyro_matrix(self, key: str) -> np.ndarray:
        """The whole gyro matrix the file applies: the neutral step's relative gain on the accel
        step's scale, ``gyro_gain @ gyro_scale`` (identity where a step is missing)."""
        entry = self.imus.get(key, {})
        scale = np.asarray(entry["gyro_scale"]["matrix"], dtype=np.float64) if "gyro_scale" in entry else np.eye(3)
        return self.gyro_gain(key)[0] @ scale

    def set_neutral(self, site: str, q_ref_sensor: np.ndarray, *, head_reference: str, source: str,
                    seconds: float, lever_arm_m: np.ndarray | None = None, **extra: Any) -> None:
        """The rest pose of a face site relative to the head reference and, when fitted, its lever
        arm: where the site sits from the reference, in the reference's axes (metres; stored in mm)."""
        if self.head_reference is not None and self.head_reference != head_reference:
            self.neutral.clear()  # another head reference: the old poses are relative to something else
        self.head_reference = head_reference
        entry: dict[str, Any] = {"q_ref_sensor": _vec(q_ref_sensor, 4)}
        if lever_arm_m is not None:
            entry["lever_arm_mm"] = [round(float(v) * 1e3, 3) for v in np.asarray(lever_arm_m, dtype=np.float64)]
        entry["made"] = _made(source, seconds=round(seconds, 3), **extra)
        self.neutral[site] = entry

    # ---- reading

    def identity(self, key: str) -> ImuIdentity:
        return ImuIdentity.from_json(self.imus[key]["identity"])

    def step(self, key: str, step: str) -> dict[str, Any] | None:
        entry = self.imus.get(key)
        return None if entry is None else entry.get(step)

    def neutral_quaternion(self, site: str) -> np.ndarray | None:
        """R_ref_sensor at rest of a face site as a quaternion (w, x, y, z), None if not captured."""
        entry = self.neutral.get(site)
        return None if entry is None else np.asarray(entry["q_ref_sensor"], dtype=np.float64)

    def neutral_quaternions(self) -> dict[str, np.ndarray]:
        return {site: np.asarray(e["q_ref_sensor"], dtype=np.float64) for site, e in self.neutral.items()}

    def neutral_lever_arms_m(self) -> dict[str, np.ndarray]:
        """Per face site with a fitted one, its lever arm from the head reference in the reference's
        axes (m), from the neutral step's rigid-body fit (files written before it have none)."""
        return {site: np.asarray(e["lever_arm_mm"], dtype=np.float64) * 1e-3
                for site, e in self.neutral.items() if "lever_arm_mm" in e}

    def clock_drift_ppm(self, uid: str) -> float | None:
        clock = self.nodes.get(uid, {}).get("clock")
        return None if clock is None else float(clock["drift_ppm"])

    # ---- hardware binding

    def check_hardware(self, hellos: Iterable[Hello]) -> None:
        """Refuse a file made for other hardware: every IMU of every HELLO must be in the file with
        the same chip, wiring and site (one line naming the node and the IMU). Binds node ids."""
        for hello in hellos:
            uid = hello.uid.hex()
            where = f"{self.path}: " if self.path is not None else ""
            known = [k for k in self.imus if k.startswith(uid + "/")]
            if not known:
                raise CalibrationFileError(
                    f"{where}calibration for other hardware: node {hello.node_id} (uid {uid}) is not in it "
                    f"(run imusic calibrate for this rig)")
            for slot in range(hello.n_imus):
                ident = identity_of(hello, slot)
                entry = self.imus.get(ident.key)
                if entry is None:
                    raise CalibrationFileError(
                        f"{where}calibration for other hardware: {ident.label(hello.node_id)} is not in it")
                diff = ImuIdentity.from_json(entry["identity"]).differences(ident)
                if diff:
                    raise CalibrationFileError(
                        f"{where}calibration for other hardware: {ident.label(hello.node_id)} has {', '.join(diff)}")
            self._bound[hello.node_id] = uid
        self._cache.clear()

    def check_recording(self, path: str | Path) -> None:
        """``check_hardware`` with the HELLOs of a recording."""
        from imusic.calibration.steps import recording_messages

        hellos, _ = recording_messages(path)
        self.check_hardware(hellos.values())

    def _uid_of(self, node_id: int) -> str | None:
        uid = self._bound.get(node_id)
        if uid is not None:
            return uid
        for uid, node in self.nodes.items():
            if node.get("node_id") == node_id:
                return uid
        return None

    def _correction(self, sites: tuple[str, ...], node_ids: tuple[int, ...]) -> _Correction:
        hit = self._cache.get((sites, node_ids))
        if hit is not None:
            return hit
        n = len(sites)
        eye = np.broadcast_to(np.eye(3), (n, 3, 3)).copy()
        corr = _Correction(np.zeros((n, 3)), eye.copy(), np.zeros((n, 3)), eye.copy(), np.zeros((n, 3)),
                           np.zeros((n, 3)), eye.copy(), True)
        slot_of: dict[int, int] = {}
        for i, (site, node_id) in enumerate(zip(sites, node_ids)):
            slot = slot_of.get(node_id, 0)
            slot_of[node_id] = slot + 1
            uid = self._uid_of(node_id)
            entry = self.imus.get(f"{uid}/{slot}") if uid is not None else None
            if entry is None or entry["identity"]["site"] != site:
                continue  # not calibrated (check_hardware refuses unknown IMUs; this is the lenient path)
            if "gyro" in entry:
                corr.gyro_bias[i] = entry["gyro"]["bias_rads"]
                corr.identity = False
            if "gyro_scale" in entry or "gyro_gain" in entry:
                corr.gyro_matrix[i] = self.gyro_matrix(f"{uid}/{slot}")
                corr.gyro_offset[i] = self.gyro_gain(f"{uid}/{slot}")[1]
                corr.identity = False
            if "accel" in entry:
                corr.accel_offset[i] = entry["accel"]["offset_mps2"]
                corr.accel_matrix[i] = entry["accel"]["matrix"]
                corr.identity = False
            if "accel_align" in entry:
                corr.accel_matrix[i] = np.asarray(entry["accel_align"]["rotation"]) @ corr.accel_matrix[i]
                corr.identity = False
            if "mag" in entry:
                corr.mag_offset[i] = entry["mag"]["offset_uT"]
                corr.mag_matrix[i] = entry["mag"]["matrix"]
                corr.identity = False
        if len(self._cache) > 16:
            self._cache.clear()
        self._cache[(sites, node_ids)] = corr.seal()
        return corr

    # ---- applying

    def apply_arrays(self, accel_mps2: np.ndarray, gyro_rads: np.ndarray, mag_uT: np.ndarray,
                     sites: tuple[str, ...], node_ids: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Correct (..., n, 3) arrays laid out as ``sites`` / ``node_ids`` (new arrays)."""
        c = self._correction(sites, node_ids)
        accel = np.einsum("nij,...nj->...ni", c.accel_matrix, accel_mps2 - c.accel_offset)
        gyro = np.einsum("nij,...nj->...ni", c.gyro_matrix, gyro_rads - c.gyro_bias) - c.gyro_offset
        mag = np.einsum("nij,...nj->...ni", c.mag_matrix, mag_uT - c.mag_offset)
        return accel, gyro, mag

    def apply_frame(self, frame: Frame) -> Frame:
        return self._apply(frame)

    def apply_block(self, block: FrameBlock) -> FrameBlock:
        return self._apply(block)

    def _apply(self, x: _FramesT) -> _FramesT:
        """A Frame or FrameBlock with corrected (read-only) arrays; the same object if nothing applies.

        Frames this calibration (or an identical copy) already corrected pass unchanged, so a
        calibration given both to a Session and to a feature extractor is applied once; frames
        another calibration corrected are refused (UserError)."""
        c = self._correction(x.sites, x.node_ids)
        if c.identity:
            return x
        fp = c.fingerprint
        if x.corrected_by is not None:
            if x.corrected_by == fp:
                return x
            raise UserError(f"these frames were already corrected by another calibration ({x.corrected_by}, this one is "
                            f"{fp}): give one calibration to the session or to the feature extractor, not two")
        a, g, m = self.apply_arrays(x.accel_mps2, x.gyro_rads, x.mag_uT, x.sites, x.node_ids)
        for arr in (a, g, m):
            arr.flags.writeable = False
        return dataclasses.replace(x, accel_mps2=a, gyro_rads=g, mag_uT=m, corrected_by=fp)

    # ---- files

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SCHEMA, "version": SCHEMA_VERSION,
            "created_unix_s": round(self.created_unix_s, 3), "saved_unix_s": round(time.time(), 3),
            "nodes": self.nodes,
            "imus": [self.imus[k] for k in sorted(self.imus, key=lambda k: (k.split("/")[0], int(k.split("/")[1])))],
            "neutral": {"head_reference": self.head_reference, "sites": self.neutral},
        }

    @staticmethod
    def from_json(data: Any, where: str = "calibration") -> Calibration:
        try:
            if not isinstance(data, dict) or data.get("format") != SCHEMA:
                raise CalibrationFileError(f"{where}: not an imusic calibration file")
            version = data.get("version")
            if not isinstance(version, int) or version > SCHEMA_VERSION:
                raise CalibrationFileError(f"{where}: calibration file version {version!r}; this imusic reads "
                                           f"version {SCHEMA_VERSION} and older")
            cal = Calibration(created_unix_s=float(data.get("created_unix_s", time.time())))
            for entry in data["imus"]:
                ident = ImuIdentity.from_json(entry["identity"])
                for step, keys in (("gyro", ("bias_rads",)), ("accel", ("offset_mps2", "matrix")),
                                   ("mag", ("offset_uT", "matrix"))):
                    if step in entry:
                        for key in keys:
                            arr = np.asarray(entry[step][key], dtype=np.float64)
                            if arr.shape not in ((3,), (3, 3)) or not np.isfinite(arr).all():
                                raise ValueError(f"{ident.key} {step}.{key}")
                cal.imus[ident.key] = entry
            cal.nodes = {str(k): dict(v) for k, v in data.get("nodes", {}).items()}
            neutral = data.get("neutral") or {}
            cal.head_reference = neutral.get("head_reference")
            cal.neutral = {str(k): dict(v) for k, v in (neutral.get("sites") or {}).items()}
            for site, e in cal.neutral.items():
                if np.asarray(e["q_ref_sensor"], dtype=np.float64).shape != (4,):
                    raise ValueError(f"neutral {site}")
                if "lever_arm_mm" in e and np.asarray(e["lever_arm_mm"], dtype=np.float64).shape != (3,):
                    raise ValueError(f"neutral {site} lever_arm_mm")
            return cal
        except CalibrationFileError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CalibrationFileError(f"{where}: malformed calibration file ({exc.__class__.__name__}: {exc})") from None

    @staticmethod
    def load(path: str | Path) -> Calibration:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise read_error(p, exc, "a calibration file", CalibrationFileError) from None
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CalibrationFileError(f"{p}: not JSON ({exc})") from None
        cal = Calibration.from_json(data, str(p))
        cal.path = p
        return cal

    def save(self, path: str | Path) -> Path:
        """Write atomically: a temporary file beside ``path``, then renamed over it."""
        p = Path(path)
        text = json.dumps(self.to_json(), indent=1, allow_nan=False) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent if str(p.parent) else ".")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, p)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise UserError(f"{p}: cannot write the calibration: {exc.strerror or exc}") from None
        self.path = p
        return p

    @staticmethod
    def load_or_new(path: str | Path) -> Calibration:
        p = Path(path)
        return Calibration.load(p) if p.exists() else Calibration(path=p)

    def summary(self) -> list[str]:
        """Human-readable lines per IMU and node (imusic calibrate show)."""
        lines = []
        for uid, node in sorted(self.nodes.items()):
            clock = node.get("clock")
            drift = f", clock {clock['drift_ppm']:+.2f} ppm" if clock else ""
            lines.append(f"node {node.get('node_id', '?')} uid {uid} ({node.get('board', '?')}){drift}")
        for key in sorted(self.imus, key=lambda k: (k.split("/")[0], int(k.split("/")[1]))):
            entry = self.imus[key]
            ident = self.identity(key)
            parts = []
            if "gyro" in entry:
                b = np.degrees(entry["gyro"]["bias_rads"])
                t = entry["gyro"].get("temp_c")
                parts.append(f"gyro bias [{b[0]:+.3f} {b[1]:+.3f} {b[2]:+.3f}] deg/s"
                             + (f" at {t:.1f} C" if t is not None else ""))
            if "accel" in entry:
                parts.append(f"accel fit {entry['accel']['residual_mg']:.2f} mg")
            if "mag" in entry:
                parts.append(f"mag {entry['mag']['field_uT']:.1f} uT, spread {entry['mag']['spread_pct']:.2f} %")
            lines.append(f"  {ident.label(self.nodes.get(ident.node_uid, {}).get('node_id'))}: "
                         + ("; ".join(parts) if parts else "not calibrated"))
        if self.neutral:
            lines.append(f"neutral pose relative to {self.head_reference}:")
            for site, e in sorted(self.neutral.items()):
                q = np.asarray(e["q_ref_sensor"])
                angle = math.degrees(2 * math.acos(min(1.0, abs(float(q[0])))))
                arm = (f", {float(np.linalg.norm(e['lever_arm_mm'])):.1f} mm from it" if "lever_arm_mm" in e else "")
                lines.append(f"  {site}: {angle:.1f} deg from the reference's axes{arm}")
        return lines

