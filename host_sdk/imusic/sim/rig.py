"""A simulated rig: a layout's IMUs with their own errors, and each node's clock.

``Rig.random(layout, seed)`` draws, deterministically from the seed, everything that belongs to
the hardware and stays the same from one take to the next: per IMU the `ImuErrors` (bias, scale,
misalignment, placement error, hard and soft iron), per node a `NodeClock` (offset, drift, sample
jitter, link latency) and its 8-byte uid. A calibration made with takes of one rig therefore
applies to every other take of the same seed and is refused by another seed's node (other uid).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imusic.sim.imu import ImuErrors, draw_errors

if TYPE_CHECKING:
    from imusic.placement import Layout

__all__ = ["NodeClock", "Rig", "record_scenario", "sample_period_us"]

MAX_DRIFT_PPM = 50.0


def sample_period_us(rate_hz: int) -> int:
    """The firmware's integer sample period (node.py: 1000000 // rate_hz; 16666 us at 60 Hz)."""
    return 1_000_000 // int(rate_hz)


@dataclass(frozen=True)
class NodeClock:
    """The truth of one node's clock and link.

    The node boots at host time 0 of a take; its device clock then reads
    ``device_us = offset_us + t_s * 1e6 * (1 + drift_ppm * 1e-6)``. Each sample is taken
    N(0, jitter_us) away from its tick (I2C scheduling), and a frame reaches the host
    latency_ms + Exp(latency_jitter_ms) after its last sample (USB or network), in order.
    """

    node_id: int
    offset_us: int
    drift_ppm: float
    jitter_us: float
    latency_ms: float
    latency_jitter_ms: float
    uid: bytes

    def device_us(self, t_s: np.ndarray | float) -> np.ndarray:
        return self.offset_us + np.asarray(t_s, dtype=np.float64) * 1e6 * (1.0 + self.drift_ppm * 1e-6)

    def true_s(self, device_us: np.ndarray | float) -> np.ndarray:
        """Host time (s) at which the device clock reads ``device_us``."""
        return (np.asarray(device_us, dtype=np.float64) - self.offset_us) * 1e-6 / (1.0 + self.drift_ppm * 1e-6)

    def to_json(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "offset_us": self.offset_us, "drift_ppm": self.drift_ppm,
                "jitter_us": self.jitter_us, "latency_ms": self.latency_ms,
                "latency_jitter_ms": self.latency_jitter_ms, "uid": self.uid.hex()}

    @staticmethod
    def from_json(d: dict[str, Any]) -> NodeClock:
        return NodeClock(int(d["node_id"]), int(d["offset_us"]), float(d["drift_ppm"]), float(d["jitter_us"]),
                         float(d["latency_ms"]), float(d["latency_jitter_ms"]), bytes.fromhex(d["uid"]))


def rig_uid(seed: int, node_id: int) -> bytes:
    """A node's 8-byte uid, derived from the rig seed (distinct per seed and node)."""
    return hashlib.blake2b(f"imusic-sim-rig/{seed}/{node_id}".encode(), digest_size=8).digest()


@dataclass(frozen=True)
class Rig:
    """A layout with per-IMU error truth (keyed by site) and per-node clock truth."""

    layout: Layout
    seed: int
    errors: dict[str, ImuErrors]
    clocks: dict[int, NodeClock]
    room_temp_c: float  # the room the rig is calibrated in (table scenarios)

    @staticmethod
    def random(layout: Layout, seed: int, *, misalignment_deg: float = 2.5, placement_mm: float = 2.5) -> Rig:
        """Draw a rig (deterministic for `seed`). Each IMU's draw depends on the seed and its site
        name only, so the same site on another layout of the same seed has the same errors."""
        errors: dict[str, ImuErrors] = {}
        for imu in layout.imus:
            site = layout.site(imu.site)
            rng = np.random.default_rng([seed, _name_key(imu.site)])
            errors[imu.site] = draw_errors(imu.chip, rng, has_mag=imu.mag, normal=site.normal,
                                           misalignment_deg=misalignment_deg, placement_mm=placement_mm)
        clocks: dict[int, NodeClock] = {}
        for node_id in layout.node_ids:
            rng = np.random.default_rng([seed, 1_000_003, node_id])
            clocks[node_id] = NodeClock(
                node_id=node_id,
                offset_us=int(rng.integers(500_000, 300_000_000)),  # the node booted 0.5 s .. 5 min before
                drift_ppm=round(float(rng.uniform(-MAX_DRIFT_PPM, MAX_DRIFT_PPM)), 3),
                jitter_us=round(float(rng.uniform(20.0, 150.0)), 1),
                latency_ms=round(float(rng.uniform(0.2, 0.5)), 3),
                latency_jitter_ms=round(float(rng.uniform(0.3, 2.0)), 3),
                uid=rig_uid(seed, node_id))
        room = round(float(np.random.default_rng([seed, 7]).uniform(21.0, 25.0)), 2)
        return Rig(layout, seed, errors, clocks, room)

    def node_imus(self, node_id: int) -> list[str]:
        return [i.site for i in self.layout.imus if i.node_id == node_id]

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "layout": self.layout.name, "room_temp_c": self.room_temp_c,
                "imus": {site: e.to_json() for site, e in self.errors.items()},
                "nodes": {str(n): c.to_json() for n, c in self.clocks.items()}}


def _name_key(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "little")


def record_scenario(layout: Layout | str, scenario_name: str, **kwargs: Any) -> Path:
    """`imusic.sim.scenarios.record_scenario` (re-exported here for callers that look for it with
    the rig)."""
    from imusic.sim.scenarios import record_scenario as record

    return record(layout, scenario_name, **kwargs)
