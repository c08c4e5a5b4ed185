"""Clock sync: map a node's device microseconds onto the host timeline (seconds).

The method is NTP's probe and the Lab Streaming Layer's fit. The host sends TIME_SYNC_REQ at host
time t0; the node notes t1 when it reads the request and t2 just before it writes the reply; the
host receives the reply at t3. The device time (t1 + t2) / 2 then corresponds to host time about
(t0 + t3) / 2, off by at most half the round trip (the unknown split between the two directions).
Of each burst only the probe with the smallest round trip is kept: it met the least queueing, so
its asymmetry is smallest. A least-squares line through the kept probes of a sliding window gives
offset and drift.

Nodes that never answer TIME_SYNC (a replayed raw stream, an old firmware) fall back to arrival
times: every frame's host receive time minus the device time of its newest sample is the offset
plus that frame's latency; the lower envelope of that cloud (the minimum per bucket of device time,
fitted by a line) estimates offset + minimum latency, which keeps nodes usable, only late by that
minimum latency.

Pure computation: no I/O, no threads of its own.
"""

from __future__ import annotations

import functools
import math
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, TypeVar, overload

import numpy as np

from imusic.protocol import TimeSyncReply

__all__ = ["ClockFit", "Probe", "group_bursts", "probes_from_replies"]

US = 1e-6  # seconds per microsecond


@dataclass(frozen=True)
class Probe:
    """One TIME_SYNC exchange: host times in seconds, device times in microseconds."""

    t0_host_s: float  # request sent
    t1_device_us: int  # request read by the node
    t2_device_us: int  # reply about to be written
    t3_host_s: float  # reply received

    @property
    def rtt_s(self) -> float:
        """Round trip minus the node's own processing time."""
        return (self.t3_host_s - self.t0_host_s) - (self.t2_device_us - self.t1_device_us) * US

    @property
    def offset_s(self) -> float:
        """Device clock minus host clock (the protocol's sign), assuming a symmetric link."""
        return (self.t1_device_us + self.t2_device_us) / 2 * US - (self.t0_host_s + self.t3_host_s) / 2

    @property
    def device_mid_us(self) -> float:
        return (self.t1_device_us + self.t2_device_us) / 2

    @property
    def host_mid_s(self) -> float:
        return (self.t0_host_s + self.t3_host_s) / 2


def probes_from_replies(sent_host_s: Mapping[int, float],
                        replies: Iterable[tuple[TimeSyncReply, float]]) -> list[Probe]:
    """Pair TIME_SYNC_REPLYs with the requests they answer.

    ``sent_host_s`` maps probe_id to the host time the request was written; ``replies`` are
    (reply, host receive time) pairs. A reply whose probe_id was never sent (a stale reply, another
    host's probe) or whose times are impossible (negative round trip, t2 before t1) is skipped.
    The live session and the recording replay both build their probes here.
    """
    probes = []
    for reply, t3_host_s in replies:
        t0_host_s = sent_host_s.get(reply.probe_id)
        if t0_host_s is None or reply.t2_tx_us < reply.t1_rx_us:
            continue
        probe = Probe(float(t0_host_s), int(reply.t1_rx_us), int(reply.t2_tx_us), float(t3_host_s))
        if probe.rtt_s >= 0.0:
            probes.append(probe)
    return probes


def group_bursts(probes: Sequence[Probe], max_gap_s: float = 0.25) -> list[list[Probe]]:
    """Split probes (in send order) into bursts where consecutive sends are more than
    ``max_gap_s`` apart: for a replay, which sees one long list of exchanges."""
    bursts: list[list[Probe]] = []
    last_t0 = -math.inf
    for probe in probes:
        if not bursts or probe.t0_host_s - last_t0 > max_gap_s:
            bursts.append([])
        bursts[-1].append(probe)
        last_t0 = probe.t0_host_s
    return bursts


_F = TypeVar("_F", bound=Callable[..., Any])


def _locked(method: _F) -> _F:
    """Run under the fit's lock: a session's sync thread adds bursts while a reading thread maps
    samples with the same fit."""
    @functools.wraps(method)
    def wrapper(self: "ClockFit", *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)
    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True)
class _Point:
    device_us: float  # device time of the point
    host_s: float  # host time matching it
    rtt_s: float  # round trip of the probe (arrival points: 0)


class _Line:
    """host_s = ref_host_s + a + b * (device_us - ref_device_us) * 1e-6, referenced near the data so
    that float64 keeps sub-microsecond precision for any clock values."""

    __slots__ = ("a", "b", "ref_device_us", "ref_host_s")

    def __init__(self, ref_device_us: float, ref_host_s: float, a: float, b: float) -> None:
        self.ref_device_us = ref_device_us
        self.ref_host_s = ref_host_s
        self.a = a
        self.b = b

    def at(self, device_us: float) -> float:
        return self.ref_host_s + self.a + self.b * (device_us - self.ref_device_us) * US


def _fit_line(points: Sequence[_Point], inv_var: np.ndarray, slope_prior_var: float) -> _Line:
    """Weighted least squares host = a + b * device through ``points``.

    ``inv_var`` is each point's inverse variance (s^-2). The drift b - 1 gets a zero-mean prior of
    variance ``slope_prior_var``: with few points close together the slope is noise, and the prior
    keeps it near zero until the data outweigh it (ridge regression on the slope only)."""
    ref = points[-1]
    x = np.array([(p.device_us - ref.device_us) * US for p in points])
    y = np.array([p.host_s - ref.host_s for p in points])
    # fit the offset r = y - x, whose slope is the drift: keeps b - 1 well conditioned
    r = y - x
    w = inv_var
    wsum = w.sum()
    xm, rm = float((w * x).sum() / wsum), float((w * r).sum() / wsum)
    dx = x - xm
    slope = float((w * dx * (r - rm)).sum() / ((w * dx * dx).sum() + 1.0 / slope_prior_var))
    # r = rm + slope * (x - xm), so y = (rm - slope * xm) + (1 + slope) * x
    return _Line(ref.device_us, ref.host_s, rm - slope * xm, 1.0 + slope)


class ClockFit:
    """One node's device clock on the host timeline: host_s = a + b * device_s.

    Probe points: one per burst (its minimum-round-trip probe). The fit uses the points of the last
    ``window_s`` seconds of device time (at most ``max_points``) minus outliers: points whose round
    trip exceeds the window's smallest by more than ``max(rtt_slack_s, 3 * (median - smallest))``
    (a burst that met a congested link). It is a weighted least-squares line: a point's offset
    error lies within half its round trip above the window's smallest, so its weight is
    12 / (excess^2 + rtt_floor_s^2). The drift has a zero-mean prior of ``drift_prior_ppm``
    (standard deviation): one point gives an offset, two close points barely move the drift, and
    after a few seconds the data decide.

    Arrival points (``add_arrival``) are used only while there are no probe points: the minimum of
    (host arrival - device time) per ``arrival_bucket_s`` of device time, a line through those
    minima, refitted once without the buckets far above it (stalls).

    Device time going backwards (by more than ``reboot_backstep_s``) means the node restarted: the
    old points are forgotten. The session should still call ``reset()`` when it sees a new boot_id,
    so samples of the new boot are never mapped with the old boot's fit.

    Thread-safe: a session's sync thread adds bursts while a reading thread maps samples (the fit
    is recomputed lazily, under the lock, on the next read).
    """

    def __init__(self, window_s: float = 60.0, max_points: int = 120, rtt_slack_s: float = 0.001,
                 rtt_floor_s: float = 0.0005,
                 drift_prior_ppm: float = 200.0, arrival_bucket_s: float = 1.0, arrival_noise_s: float = 0.0005,
                 reboot_backstep_s: float = 1.0) -> None:
        self.window_s = window_s
        self.max_points = max_points
        self.rtt_slack_s = rtt_slack_s
        self.rtt_floor_s = rtt_floor_s
        self.drift_prior_ppm = drift_prior_ppm
        self._slope_prior_var = (drift_prior_ppm * 1e-6) ** 2
        self.arrival_noise_s = arrival_noise_s
        self.arrival_bucket_s = arrival_bucket_s
        self.reboot_backstep_s = reboot_backstep_s
        self._lock = threading.RLock()
        self.reset()

    @_locked
    def reset(self) -> None:
        """Forget everything (the node rebooted: its device clock restarted)."""
        self._probes: deque[_Point] = deque()
        self._arrivals: deque[_Point] = deque()  # completed buckets' minima
        self._bucket: _Point | None = None  # minimum of the bucket being filled
        self._bucket_start_us = 0.0
        self._line: _Line | None = None
        self._used = 0
        self._dirty = False

    # --- input -------------------------------------------------------------------------------

    @_locked
    def add_burst(self, probes: Sequence[Probe]) -> Probe | None:
        """Keep the burst's fastest exchange as a fit point; returns it (None for an empty burst)."""
        valid = [p for p in probes if p.rtt_s >= 0.0 and p.t2_device_us >= p.t1_device_us]
        if not valid:
            return None
        best = min(valid, key=lambda p: p.rtt_s)
        point = _Point(best.device_mid_us, best.host_mid_s, best.rtt_s)
        if self._probes and point.device_us < self._probes[-1].device_us - self.reboot_backstep_s / US:
            self.reset()
        self._probes.append(point)
        self._trim(self._probes, point.device_us)
        self._dirty = True
        return best

    @_locked
    def add_arrival(self, device_us: int, t_host_s: float) -> None:
        """A frame received at host time ``t_host_s`` whose newest sample has device time ``device_us``."""
        dev_us = float(device_us)
        bucket = self._bucket
        if bucket is not None and dev_us < bucket.device_us - self.reboot_backstep_s / US:
            self._arrivals.clear()
            bucket = self._bucket = None
        if bucket is None or dev_us - self._bucket_start_us >= self.arrival_bucket_s / US:
            if bucket is not None:
                self._arrivals.append(bucket)
                self._trim(self._arrivals, dev_us)
            self._bucket = _Point(dev_us, t_host_s, 0.0)
            self._bucket_start_us = dev_us
        elif t_host_s - dev_us * US < bucket.host_s - bucket.device_us * US:
            self._bucket = _Point(dev_us, t_host_s, 0.0)
        else:
            return
        if not self._probes:
            self._dirty = True

    def _trim(self, points: deque[_Point], newest_us: float) -> None:
        oldest_us = newest_us - self.window_s / US
        while points and (points[0].device_us < oldest_us or len(points) > self.max_points):
            points.popleft()

    # --- fit -----------------------------------------------------------------------------------

    @_locked
    def _fit(self) -> _Line | None:
        if not self._dirty:
            return self._line
        self._dirty = False
        if self._probes:
            points = list(self._probes)
            rtt = np.array([p.rtt_s for p in points])
            rtt_min = rtt.min()
            limit = rtt_min + max(self.rtt_slack_s, 3.0 * (float(np.median(rtt)) - rtt_min))
            keep = rtt <= limit
            kept = [p for p, k in zip(points, keep) if k]
            # a probe's offset error lies within +-half its extra round trip (uniform: variance s^2 / 12)
            excess = rtt[keep] - rtt_min
            inv_var = 12.0 / (excess * excess + self.rtt_floor_s ** 2)
            self._line = _fit_line(kept, inv_var, self._slope_prior_var)
            self._used = len(kept)
        else:
            points = list(self._arrivals) + ([self._bucket] if self._bucket is not None else [])
            if not points:
                self._line = None
                self._used = 0
                return None
            inv_var = np.full(len(points), 1.0 / self.arrival_noise_s ** 2)
            line = _fit_line(points, inv_var, self._slope_prior_var)
            if len(points) >= 4:
                # drop buckets whose minimum is far above the envelope (a link stall), refit
                resid = np.array([p.host_s - line.at(p.device_us) for p in points])
                spread = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
                keep = resid <= np.median(resid) + max(3.0 * spread, 0.0005)
                if not keep.all():
                    points = [p for p, k in zip(points, keep) if k]
                    line = _fit_line(points, inv_var[keep], self._slope_prior_var)
            self._line = line
            self._used = len(points)
        return self._line

    @property
    def ready(self) -> bool:
        return self._fit() is not None

    @property
    def source(self) -> str | None:
        """"probes", "arrivals" or None: what the current fit rests on."""
        if self._probes:
            return "probes"
        return "arrivals" if self._bucket is not None else None

    @property
    def n_points(self) -> int:
        """Points the current fit uses (after outlier rejection)."""
        self._fit()
        return self._used

    @property
    def drift_ppm(self) -> float:
        """How much faster the host clock runs than the device's: (b - 1) * 1e6."""
        line = self._require()
        return (line.b - 1.0) * 1e6

    @property
    def device_drift_ppm(self) -> float:
        """How much faster the device's clock runs than the host's, in ppm (positive: the node's
        crystal is fast): what a user means by a node's drift, and what the emulator injects."""
        line = self._require()
        return (1.0 / line.b - 1.0) * 1e6

    @property
    def offset_s(self) -> float:
        """Host time minus device time at the newest fit point, seconds (the offset now; the
        intercept at device time 0 would carry the drift of the whole uptime)."""
        line = self._require()
        return line.ref_host_s + line.a - line.ref_device_us * US

    @property
    def rtt_min_s(self) -> float | None:
        """Smallest round trip in the window (the link latency floor), None without probes."""
        return min(p.rtt_s for p in self._probes) if self._probes else None

    def _require(self) -> _Line:
        line = self._fit()
        if line is None:
            raise RuntimeError("no clock fit yet: add a TIME_SYNC burst or an arrival first")
        return line

    @overload
    def to_host_s(self, device_us: float) -> float: ...
    @overload
    def to_host_s(self, device_us: np.ndarray) -> np.ndarray: ...

    def to_host_s(self, device_us: float | np.ndarray) -> float | np.ndarray:
        """Device microseconds (scalar or array) -> host seconds."""
        line = self._require()
        if isinstance(device_us, np.ndarray):
            # float64 holds integer microseconds exactly up to 2**53 us (285 years of uptime)
            rel = device_us.astype(np.float64) - line.ref_device_us
            return (line.ref_host_s + line.a) + (line.b * US) * rel
        return line.at(float(device_us))
