"""Alignment: per-node samples on the host timeline -> frames of every IMU on one frame clock.

Each node's samples arrive with host times (device times mapped by its ``ClockFit``). The
``Aligner`` keeps a short buffer of recent samples per node and linearly interpolates every IMU
onto the frame times ``t = k / rate_hz`` (host seconds). Gaps are marked, never filled: an IMU is
NaN with ``valid=False`` in a frame unless the two samples bracketing the frame time are both
valid and neighbours (no sample missing between them).

``samples_to_arrays`` turns decoded SAMPLES (one live frame or a replay's whole ``NodeSamples``)
into the SI arrays ``Aligner.add_samples`` takes; the live session and the replay share it.

Pure computation: no threads, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from imusic.protocol import INVALID_SAMPLE, Hello, NodeSamples, Samples, StatusBit

__all__ = ["Aligner", "DeviceClock", "Frame", "FrameBlock", "NodeArrays", "samples_to_arrays"]

_AXES = 3
_CHANNELS = 9  # accel xyz, gyro xyz, mag xyz: one gather moves all three
_ACCEL, _GYRO, _MAG = slice(0, 3), slice(3, 6), slice(6, 9)


@dataclass(frozen=True)
class Frame:
    """Every IMU of the session at one instant of the frame clock. Arrays are read-only."""

    t_host_s: float
    accel_mps2: np.ndarray  # (n_imus, 3) float64, NaN where invalid
    gyro_rads: np.ndarray  # (n_imus, 3)
    mag_uT: np.ndarray  # (n_imus, 3), NaN where the IMU has no magnetometer or its reading is missing
    valid: np.ndarray  # (n_imus,) bool: accel and gyro interpolated between two valid neighbours
    sites: tuple[str, ...]  # layout site per IMU, nodes by id, then slot
    node_ids: tuple[int, ...]  # node of each IMU (parallel to ``sites``)
    # the fingerprint of the calibration that corrected these samples (None: as the chips sent them);
    # a calibration refuses frames another one corrected, and leaves its own alone
    corrected_by: str | None = None


@dataclass(frozen=True)
class FrameBlock:
    """Consecutive frames as stacked arrays (offline work: export, stats), read-only."""

    t_host_s: np.ndarray  # (m,)
    accel_mps2: np.ndarray  # (m, n_imus, 3)
    gyro_rads: np.ndarray  # (m, n_imus, 3)
    mag_uT: np.ndarray  # (m, n_imus, 3)
    valid: np.ndarray  # (m, n_imus)
    sites: tuple[str, ...]
    node_ids: tuple[int, ...]
    corrected_by: str | None = None  # as Frame.corrected_by

    def __len__(self) -> int:
        return int(self.t_host_s.shape[0])

    def frames(self) -> list[Frame]:
        t = self.t_host_s.tolist()
        a, g, m, v = self.accel_mps2, self.gyro_rads, self.mag_uT, self.valid
        sites, node_ids, by = self.sites, self.node_ids, self.corrected_by
        return [Frame(t[i], a[i], g[i], m[i], v[i], sites, node_ids, by) for i in range(len(t))]


class NodeArrays(NamedTuple):
    """One node's samples in SI units on the host timeline: ``Aligner.add_samples(node_id, *arrays)``."""

    t_host_s: np.ndarray  # (k,) float64
    accel_mps2: np.ndarray  # (k, n, 3) float64, NaN where invalid
    gyro_rads: np.ndarray  # (k, n, 3)
    mag_uT: np.ndarray  # (k, n, 3), NaN where absent
    valid: np.ndarray  # (k, n) bool


class DeviceClock(Protocol):
    """What the conversion needs of a clock (``imusic.timesync.ClockFit`` is one)."""

    def to_host_s(self, device_us: np.ndarray) -> np.ndarray: ...


def samples_to_arrays(samples: Samples | NodeSamples, hello: Hello, clock: DeviceClock) -> NodeArrays:
    """Decoded SAMPLES -> SI arrays on the host timeline, laid out as the node's HELLO says.

    Counts are multiplied by the HELLO's scale factors. A sample marked ``INVALID_SAMPLE`` (-32768)
    on any accel or gyro axis is invalid (NaN); the frame's ``STALE`` bit only says that some are, so
    its other samples stay valid. Magnetometer values are NaN where the frame lacks ``HAS_MAG``, has
    ``MAG_STALE``, the HELLO lists no magnetometer, or the value is marked. IMU slots the HELLO lists
    but the data lack are invalid; data beyond the HELLO's slots are ignored (a HELLO and SAMPLES
    from different configurations: the layout is the HELLO's).

    ``samples`` is one ``Samples`` message (live) or a ``NodeSamples`` (replay); all its rows are
    mapped with ``clock``, so split a replay's rows at a reboot (device time jumping back) first.
    """
    t_us = samples.t_us() if isinstance(samples, Samples) else samples.t_us
    k = int(t_us.shape[0])
    n = hello.n_imus
    width = min(n, int(samples.accel.shape[1]))
    accel_scale, gyro_scale, mag_scale, any_mag = _scales(hello)
    accel_counts = samples.accel[:, :width]
    gyro_counts = samples.gyro[:, :width]

    ok = ~((accel_counts == INVALID_SAMPLE).any(axis=2) | (gyro_counts == INVALID_SAMPLE).any(axis=2))
    accel = accel_counts * accel_scale[:width]
    gyro = gyro_counts * gyro_scale[:width]
    if not ok.all():
        accel[~ok] = np.nan
        gyro[~ok] = np.nan
    status = np.asarray(samples.status)[..., :width]
    if any_mag and (status & _HAS_MAG).any():
        mag_counts = samples.mag[:, :width]
        mag = mag_counts * mag_scale[:width]
        mag_ok = (((status & (_HAS_MAG | _MAG_STALE)) == _HAS_MAG) & (mag_scale[:width, 0] > 0.0)
                  & ~(mag_counts == INVALID_SAMPLE).any(axis=2))  # status (n,) or (k, n): broadcasts
        mag[~np.broadcast_to(mag_ok, ok.shape)] = np.nan
    else:
        mag = np.full((k, width, _AXES), np.nan)
    if width < n:  # slots the HELLO lists but the data lack: invalid
        pad = ((0, 0), (0, n - width), (0, 0))
        accel = np.pad(accel, pad, constant_values=np.nan)
        gyro = np.pad(gyro, pad, constant_values=np.nan)
        mag = np.pad(mag, pad, constant_values=np.nan)
        ok = np.pad(ok, ((0, 0), (0, n - width)), constant_values=False)
    t_host_s = np.asarray(clock.to_host_s(t_us), dtype=np.float64)
    return NodeArrays(t_host_s, accel, gyro, mag, ok)


_HAS_MAG = int(StatusBit.HAS_MAG)
_MAG_STALE = int(StatusBit.MAG_STALE)
# per HELLO (kept alive here so its id is not reused): scale factors as (n, 1) columns
_scale_cache: dict[int, tuple[Hello, np.ndarray, np.ndarray, np.ndarray, bool]] = {}


def _scales(hello: Hello) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    hit = _scale_cache.get(id(hello))
    if hit is not None and hit[0] is hello:
        return hit[1], hit[2], hit[3], hit[4]
    accel = np.array([imu.accel_scale for imu in hello.imus], dtype=np.float64).reshape(-1, 1)
    gyro = np.array([imu.gyro_scale for imu in hello.imus], dtype=np.float64).reshape(-1, 1)
    mag = np.array([imu.mag_scale if imu.mag_chip else 0.0 for imu in hello.imus], dtype=np.float64).reshape(-1, 1)
    any_mag = bool((mag > 0.0).any())
    if len(_scale_cache) >= 256:
        _scale_cache.clear()
    _scale_cache[id(hello)] = (hello, accel, gyro, mag, any_mag)
    return accel, gyro, mag, any_mag


class _NodeBuffer:
    """Recent samples of one node, sorted by host time, in a growable array with a moving start."""

    def __init__(self, node_id: int, hello: Hello, max_gap_periods: float) -> None:
        self.node_id = node_id
        self.n_imus = hello.n_imus
        self.sites = tuple(imu.site for imu in hello.imus)
        self.set_rate(hello.rate_hz, max_gap_periods)
        cap = 256
        self.t = np.empty(cap)
        self.vals = np.empty((cap, self.n_imus, _CHANNELS))
        self.ok = np.empty((cap, self.n_imus), dtype=bool)
        self.start = self.end = 0

    def set_rate(self, rate_hz: int, max_gap_periods: float) -> None:
        period_s = 1.0 / rate_hz if rate_hz > 0 else math.inf
        self.max_gap_s = max_gap_periods * period_s

    @property
    def latest_t(self) -> float:
        return float(self.t[self.end - 1]) if self.end > self.start else -math.inf

    @property
    def first_t(self) -> float:
        return float(self.t[self.start]) if self.end > self.start else math.inf

    def append(self, t: np.ndarray, vals: np.ndarray, ok: np.ndarray) -> None:
        k = t.shape[0]
        if k == 0:
            return
        if self.end > self.start and t[0] <= self.t[self.end - 1]:
            # overlap (a reboot mapped by a fresh clock fit, a replayed batch): the newest data win
            self.end = self.start + int(np.searchsorted(self.t[self.start:self.end], t[0], side="left"))
        live = self.end - self.start
        if self.end + k > self.t.shape[0]:
            cap = self.t.shape[0]
            if live + k > cap // 2:
                cap = max(2 * (live + k), 256)
                self.t, self.vals, self.ok = self._moved(np.empty(cap), np.empty((cap, self.n_imus, _CHANNELS)),
                                                         np.empty((cap, self.n_imus), dtype=bool), live)
            else:
                self.t, self.vals, self.ok = self._moved(self.t, self.vals, self.ok, live)
            self.start, self.end = 0, live
        self.t[self.end:self.end + k] = t
        self.vals[self.end:self.end + k] = vals
        self.ok[self.end:self.end + k] = ok
        self.end += k

    def _moved(self, t: np.ndarray, vals: np.ndarray, ok: np.ndarray,
               live: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s, e = self.start, self.end
        # copy() first: source and target may be the same array
        t[:live] = self.t[s:e].copy()
        vals[:live] = self.vals[s:e].copy()
        ok[:live] = self.ok[s:e].copy()
        return t, vals, ok

    def trim(self, t_next: float) -> None:
        """Forget samples no later frame can use: keep the last one at or before ``t_next``."""
        ts = self.t[self.start:self.end]
        drop = int(np.searchsorted(ts, t_next, side="right")) - 1
        if drop > 0:
            self.start += drop

    def sample(self, ft: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Interpolate at frame times ``ft`` (m,): values (m, n, 9) and validity (m, n)."""
        m = ft.shape[0]
        count = self.end - self.start
        if count == 0:
            return np.full((m, self.n_imus, _CHANNELS), np.nan), np.zeros((m, self.n_imus), dtype=bool)
        ts = self.t[self.start:self.end]
        if m == 1:
            return self._sample_one(ts, float(ft[0]))
        right = np.searchsorted(ts, ft, side="right")  # first sample after the frame time
        left = right - 1
        li = np.maximum(left, 0)
        ri = np.minimum(right, count - 1)
        tl, tr = ts[li], ts[ri]
        exact = (left >= 0) & (tl == ft)  # a sample right on the frame time needs no right neighbour
        ri = np.where(exact, li, ri)
        span = tr - tl
        bracketed = (left >= 0) & (right < count) & (span <= self.max_gap_s)
        usable = exact | bracketed
        # where the frame is not usable, w is some finite number and the result is masked below
        w = (ft - tl) / np.where(span > 0.0, span, 1.0)
        w[exact] = 0.0
        vals_l = self.vals[self.start + li]
        vals_r = self.vals[self.start + ri]
        out = vals_l + (vals_r - vals_l) * w[:, None, None]
        ok = self.ok[self.start + li] & self.ok[self.start + ri] & usable[:, None]
        return out, ok

    def _sample_one(self, ts: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
        """``sample`` for one frame time (the live case), the same rule with scalars."""
        count = ts.shape[0]
        right = int(ts.searchsorted(t, side="right"))
        left = right - 1
        if left >= 0 and ts[left] == t:
            i = self.start + left
            return self.vals[i][None].copy(), self.ok[i][None].copy()
        if left < 0 or right >= count or ts[right] - ts[left] > self.max_gap_s:
            return np.full((1, self.n_imus, _CHANNELS), np.nan), np.zeros((1, self.n_imus), dtype=bool)
        tl = float(ts[left])
        w = (t - tl) / (float(ts[right]) - tl)
        i = self.start + left
        pair = self.vals[i:i + 2]
        out = pair[0] + (pair[1] - pair[0]) * w
        ok = self.ok[i] & self.ok[i + 1]
        return out[None], ok[None]


class Aligner:
    """Samples of many nodes on the host timeline -> frames at ``t = k / rate_hz``, in order.

    Frame k is emitted by ``pop_frames(now_host_s)`` once every node has a sample at or after its
    time, or once ``now_host_s`` is more than ``max_latency_s`` past it; in the latter case the
    IMUs of nodes without data past it are invalid in it, and their samples that arrive later are
    not used for it (frames are never emitted twice). The first frame is the first grid time at or
    after the earliest sample. ``flush()`` emits every frame up to the newest sample of any node.
    Live, frames more than ``max_backlog_s`` behind the deadline are skipped, not emitted (the frame
    times jump): a safety valve against a huge backlog, e.g. a node whose first samples were
    mapped far into the past by a bad clock fit, or a caller that stopped popping for a long time.

    An IMU is valid in a frame when the samples of its node right before and right after the frame
    time are both valid and less than ``max_gap_periods`` sample periods apart (default 1.5: they
    are neighbours, so a single lost sample already makes the frames around it invalid rather than
    interpolated across). A sample exactly on the frame time is used alone.

    Assumptions about the input: host times within one ``add_samples`` call are sorted (they are
    sorted here if not, duplicates keep the last); a batch that starts at or before the node's newest
    buffered sample replaces the buffered samples from that time on (a node that rebooted and is
    mapped by a fresh clock fit overlaps its old boot slightly: the new boot wins). Device times are
    not used here at all, so a device clock that jumps back is the clock fit's business.

    Not thread-safe: callers serialise access (the session holds one lock around it).
    """

    def __init__(self, rate_hz: float = 60.0, max_latency_s: float = 0.1, max_gap_periods: float = 1.5,
                 max_backlog_s: float = 10.0) -> None:
        if not rate_hz > 0:
            raise ValueError(f"frame rate must be positive, got {rate_hz}")
        self.rate_hz = float(rate_hz)
        self.max_latency_s = float(max_latency_s)
        self.max_backlog_s = float(max_backlog_s)
        self.max_gap_periods = float(max_gap_periods)
        self._nodes: dict[int, _NodeBuffer] = {}
        self._next_k: int | None = None
        self._relayout()

    # --- layout --------------------------------------------------------------------------------

    def add_node(self, node_id: int, hello: Hello) -> None:
        """Add a node, or update it after a new HELLO (a rate change keeps its buffered samples; a
        changed IMU list starts it afresh and changes the frame layout from the next frame on)."""
        old = self._nodes.get(node_id)
        if old is not None and old.n_imus == hello.n_imus and old.sites == tuple(i.site for i in hello.imus):
            old.set_rate(hello.rate_hz, self.max_gap_periods)
            return
        self._nodes[node_id] = _NodeBuffer(node_id, hello, self.max_gap_periods)
        self._relayout()

    def remove_node(self, node_id: int) -> None:
        """Forget a node (its link is gone for good): frames stop waiting for it."""
        if self._nodes.pop(node_id, None) is not None:
            self._relayout()

    def _relayout(self) -> None:
        self._order = [self._nodes[i] for i in sorted(self._nodes)]
        self.sites: tuple[str, ...] = tuple(s for node in self._order for s in node.sites)
        self.node_ids: tuple[int, ...] = tuple(node.node_id for node in self._order for _ in node.sites)
        self._slices = []
        at = 0
        for node in self._order:
            self._slices.append(slice(at, at + node.n_imus))
            at += node.n_imus
        self.n_imus = at

    # --- input ---------------------------------------------------------------------------------

    def add_samples(self, node_id: int, t_host_s: np.ndarray, accel_mps2: np.ndarray, gyro_rads: np.ndarray,
                    mag_uT: np.ndarray, valid: np.ndarray) -> None:
        """Add k samples of one node: shapes (k,), (k, n, 3) x 3, (k, n) with n its HELLO's IMU count."""
        node = self._nodes.get(node_id)
        if node is None:
            raise ValueError(f"node {node_id} has not been added (add_node with its HELLO first)")
        t = np.asarray(t_host_s, dtype=np.float64)
        k, n = t.shape[0], node.n_imus
        for name, arr, shape in (("accel_mps2", accel_mps2, (k, n, 3)), ("gyro_rads", gyro_rads, (k, n, 3)),
                                 ("mag_uT", mag_uT, (k, n, 3)), ("valid", valid, (k, n))):
            if np.shape(arr) != shape:
                raise ValueError(f"node {node_id}: {name} has shape {np.shape(arr)}, expected {shape}")
        if k == 0:
            return
        vals = np.concatenate((accel_mps2, gyro_rads, mag_uT), axis=2)
        ok = np.asarray(valid, dtype=bool)
        if k > 1 and not (t[1:] > t[:-1]).all():
            order = np.argsort(t, kind="stable")
            t, vals, ok = t[order], vals[order], ok[order]
            last = np.append(t[1:] != t[:-1], True)  # the last of equal times
            t, vals, ok = t[last], vals[last], ok[last]
        node.append(t, vals, ok)

    # --- output --------------------------------------------------------------------------------

    def pop_frames(self, now_host_s: float) -> list[Frame]:
        """Frames that are due at host time ``now_host_s`` (see the class docstring), in order."""
        block = self.pop_block(now_host_s)
        return block.frames() if block is not None else []

    def flush(self) -> list[Frame]:
        """Every remaining frame up to the newest sample of any node (the end of a replay)."""
        block = self.flush_block()
        return block.frames() if block is not None else []

    def pop_block(self, now_host_s: float) -> FrameBlock | None:
        """Like ``pop_frames``, as one ``FrameBlock`` (None when no frame is due)."""
        if not self._order:
            return None
        deadline_t = now_host_s - self.max_latency_s
        due_t = max(min(node.latest_t for node in self._order), deadline_t)
        return self._emit_until(due_t, skip_before_t=deadline_t - self.max_backlog_s)

    def flush_block(self) -> FrameBlock | None:
        if not self._order:
            return None
        return self._emit_until(max(node.latest_t for node in self._order))

    def _emit_until(self, due_t: float, skip_before_t: float = -math.inf) -> FrameBlock | None:
        """Emit frames k from the next one while k / rate_hz <= due_t, skipping those before
        ``skip_before_t``."""
        if not math.isfinite(due_t):
            return None
        rate = self.rate_hz
        if self._next_k is None:
            first = min(node.first_t for node in self._order)
            if not math.isfinite(first):
                return None
            k0 = math.ceil(first * rate)
            while k0 / rate < first:
                k0 += 1
            while (k0 - 1) / rate >= first:
                k0 -= 1
            self._next_k = k0
        if self._next_k / rate < skip_before_t:
            self._next_k = math.ceil(skip_before_t * rate)
        k_last = math.floor(due_t * rate)
        while (k_last + 1) / rate <= due_t:
            k_last += 1
        while k_last / rate > due_t:
            k_last -= 1
        k0 = self._next_k
        if k_last < k0:
            return None
        ft = np.arange(k0, k_last + 1, dtype=np.float64) / rate
        m = ft.shape[0]
        accel = np.empty((m, self.n_imus, _AXES))
        gyro = np.empty((m, self.n_imus, _AXES))
        mag = np.empty((m, self.n_imus, _AXES))
        valid = np.empty((m, self.n_imus), dtype=bool)
        for node, sl in zip(self._order, self._slices):
            vals, ok = node.sample(ft)
            vals[~ok] = np.nan  # never let an invalid IMU carry numbers, magnetometer included
            accel[:, sl] = vals[..., _ACCEL]
            gyro[:, sl] = vals[..., _GYRO]
            mag[:, sl] = vals[..., _MAG]
            valid[:, sl] = ok
        self._next_k = k_last + 1
        t_next = self._next_k / rate
        for node in self._order:
            node.trim(t_next)
        for arr in (ft, accel, gyro, mag, valid):
            arr.flags.writeable = False
        return FrameBlock(ft, accel, gyro, mag, valid, self.sites, self.node_ids)
