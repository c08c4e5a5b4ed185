"""imusic.timesync on synthetic exchanges whose truth is known: a node clock with an offset and a
drift, links with random asymmetric delays. Seeded, so every run sees the same numbers."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from imusic.protocol import TimeSyncReply
from imusic.timesync import ClockFit, Probe, group_bursts, probes_from_replies


class NodeClock:
    """The truth: host_s = offset_s + device_s * (1 + drift_ppm * 1e-6)."""

    def __init__(self, offset_s: float, drift_ppm: float) -> None:
        self.offset_s = offset_s
        self.b = 1.0 + drift_ppm * 1e-6

    def host_s(self, device_us: float | np.ndarray) -> float | np.ndarray:
        return self.offset_s + np.asarray(device_us, dtype=np.float64) * 1e-6 * self.b

    def device_us(self, host_s: float) -> int:
        return round((host_s - self.offset_s) / self.b * 1e6)


Delay = Callable[[np.random.Generator], float]


def uniform_jitter(rng: np.random.Generator) -> float:
    return 0.0003 + rng.uniform(0.0, 0.005)


def exchange(clock: NodeClock, t0_host_s: float, rng: np.random.Generator, up: Delay, down: Delay) -> Probe:
    t1 = clock.device_us(t0_host_s + up(rng))
    t2 = t1 + int(rng.integers(30, 300))  # the node's own processing time
    t3 = float(clock.host_s(t2)) + down(rng)
    return Probe(t0_host_s, t1, t2, t3)


def burst(clock: NodeClock, t_host_s: float, rng: np.random.Generator, n: int = 8,
          up: Delay = uniform_jitter, down: Delay = uniform_jitter) -> list[Probe]:
    return [exchange(clock, t_host_s + i * 0.002, rng, up, down) for i in range(n)]


def test_probe_rtt_and_offset_follow_the_protocol_formulas() -> None:
    # device = host + 2.5 s; 3 ms up, 1 ms down, 200 us in the node
    p = Probe(t0_host_s=10.0, t1_device_us=12_503_000, t2_device_us=12_503_200, t3_host_s=10.0042)
    assert p.rtt_s == pytest.approx(0.004, abs=1e-12)
    # ((t1 - t0) + (t2 - t3)) / 2: device minus host, off by half the asymmetry (1 ms)
    assert p.offset_s == pytest.approx(2.5 + 0.001, abs=1e-9)


@pytest.mark.parametrize("offset_s, drift_ppm, seed", [(3.7, 200.0, 1), (-1234.5, -200.0, 2), (86_400.25, 57.0, 3)])
def test_fit_recovers_offset_and_drift_over_ten_minutes(offset_s: float, drift_ppm: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    clock = NodeClock(offset_s, drift_ppm)
    fit = ClockFit()
    errors = []
    t = 5000.0
    while t < 5000.0 + 600.0:
        fit.add_burst(burst(clock, t, rng))
        # mapping error between this burst and the next, as the session would use the fit
        for h in t + 0.05 + np.arange(10) * 0.1:
            dev = clock.device_us(h)
            errors.append(fit.to_host_s(dev) - float(clock.host_s(dev)))
        t += 1.0
    err = np.asarray(errors)
    assert np.sqrt(np.mean(err ** 2)) < 0.25e-3
    assert np.abs(err[len(err) // 10:]).max() < 0.5e-3  # after the first minute
    assert fit.drift_ppm == pytest.approx(drift_ppm, abs=10.0)
    assert fit.offset_s == pytest.approx(float(clock.host_s(clock.device_us(t))) - clock.device_us(t) * 1e-6, abs=0.5e-3)
    assert fit.source == "probes"


def test_min_rtt_selection_beats_averaging_on_skewed_delays() -> None:
    # uplink queues often (long exponential tail), downlink rarely: averaging every probe's offset
    # carries half the mean asymmetry; the fastest exchange of a burst carries almost none
    rng = np.random.default_rng(7)
    clock = NodeClock(-42.0, 0.0)

    def up(r: np.random.Generator) -> float:
        return 0.0005 + r.exponential(0.004)

    def down(r: np.random.Generator) -> float:
        return 0.0005 + r.exponential(0.0003)

    fit = ClockFit()
    all_probes = []
    for i in range(120):
        probes = burst(clock, 100.0 + i, rng, n=8, up=up, down=down)
        fit.add_burst(probes)
        all_probes += probes
    # host minus device, the sign ClockFit uses; the truth is clock.offset_s (no drift)
    averaged = np.mean([-p.offset_s for p in all_probes])
    error_averaged = abs(averaged - clock.offset_s)
    error_fit = abs(fit.offset_s - clock.offset_s)
    assert error_averaged > 1e-3  # the skew really biases the average
    assert error_fit < error_averaged / 4


def test_an_outlier_burst_does_not_pull_the_fit() -> None:
    rng = np.random.default_rng(11)
    clock = NodeClock(1.5, 120.0)
    fit = ClockFit()
    for i in range(40):
        fit.add_burst(burst(clock, 50.0 + i, rng))

    def stalled(r: np.random.Generator) -> float:  # every request of this burst queued 40 ms
        return 0.040 + r.uniform(0.0, 0.002)

    fit.add_burst(burst(clock, 90.0, rng, up=stalled))
    dev = clock.device_us(90.5)
    assert abs(fit.to_host_s(dev) - float(clock.host_s(dev))) < 0.5e-3
    assert fit.n_points == 40  # the stalled burst's point is rejected


def test_fallback_envelope_of_arrivals_is_offset_plus_min_latency() -> None:
    rng = np.random.default_rng(5)
    clock = NodeClock(7.25, -150.0)
    fit = ClockFit()
    assert not fit.ready and fit.source is None
    min_latency_s = 0.002
    for i in range(60 * 50):  # 60 s of frames at 50 per second
        dev = 1_000_000 + i * 20_000
        latency = min_latency_s + rng.exponential(0.003)
        if 1000 <= i < 1100:
            latency += 0.25  # a two-second link stall
        fit.add_arrival(dev, float(clock.host_s(dev)) + latency)
    assert fit.source == "arrivals"
    for dev in (2_000_000, 30_000_000, 61_000_000):
        assert fit.to_host_s(dev) - float(clock.host_s(dev)) == pytest.approx(min_latency_s, abs=0.5e-3)
    assert fit.drift_ppm == pytest.approx(-150.0, abs=20.0)
    # probes take over as soon as there are any
    fit.add_burst(burst(clock, float(clock.host_s(61_000_000)), rng))
    assert fit.source == "probes" and fit.n_points == 1


def test_readiness_single_point_and_scalar_array_agreement() -> None:
    fit = ClockFit()
    assert not fit.ready and fit.n_points == 0
    with pytest.raises(RuntimeError, match="no clock fit"):
        fit.to_host_s(0)
    clock = NodeClock(3.0, 80.0)
    rng = np.random.default_rng(3)
    fit.add_burst(burst(clock, 100.0, rng))
    assert fit.ready and fit.n_points == 1 and fit.drift_ppm == 0.0  # one point: offset only
    fit.add_burst(burst(clock, 130.0, rng))
    assert fit.n_points == 2 and fit.drift_ppm != 0.0
    # 100 days of uptime: array and scalar paths agree to a few ulps of host seconds (2 ns here)
    dev = np.array([8_640_000_000_000, 8_640_000_000_001, 8_640_000_500_000], dtype=np.int64)
    arr = fit.to_host_s(dev)
    assert isinstance(arr, np.ndarray) and arr.shape == (3,)
    for d, h in zip(dev.tolist(), arr.tolist()):
        assert fit.to_host_s(d) == pytest.approx(h, abs=1e-8)
    assert arr[1] - arr[0] == pytest.approx(1e-6, rel=1e-3)


def test_device_time_going_back_forgets_the_old_boot() -> None:
    rng = np.random.default_rng(9)
    old = NodeClock(0.0, 100.0)
    fit = ClockFit()
    for i in range(20):
        fit.add_burst(burst(old, 1000.0 + i, rng))
    new = NodeClock(1025.0, -100.0)  # rebooted at host 1025: device time restarts at 0
    fit.add_burst(burst(new, 1030.0, rng))
    assert fit.n_points == 1
    dev = new.device_us(1030.5)
    assert abs(fit.to_host_s(dev) - float(new.host_s(dev))) < 3e-3
    fit.reset()
    assert not fit.ready


def test_window_keeps_only_recent_points() -> None:
    rng = np.random.default_rng(4)
    clock = NodeClock(0.0, 0.0)
    fit = ClockFit(window_s=10.0)
    for i in range(30):
        fit.add_burst(burst(clock, 10.0 + i, rng))
    assert fit.n_points <= 11


def reply(probe_id: int, t1_us: int, t2_us: int) -> TimeSyncReply:
    return TimeSyncReply(node_id=1, seq=0, flags=0, probe_id=probe_id, t0_host_us=0, t1_rx_us=t1_us, t2_tx_us=t2_us)


def test_probes_from_replies_pairs_by_id_and_skips_the_impossible() -> None:
    sent = {1: 10.000, 2: 10.002, 3: 10.004}
    replies = [
        (reply(1, 5_000_000, 5_000_100), 10.0021),
        (reply(9, 5_000_000, 5_000_100), 10.0030),  # never sent
        (reply(2, 5_002_000, 5_001_000), 10.0050),  # t2 before t1
        (reply(3, 5_004_000, 5_009_000), 10.0060),  # node time longer than the round trip
        (reply(3, 5_004_000, 5_004_050), 10.0065),
    ]
    probes = probes_from_replies(sent, replies)
    assert probes == [Probe(10.000, 5_000_000, 5_000_100, 10.0021), Probe(10.004, 5_004_000, 5_004_050, 10.0065)]
    assert probes_from_replies({}, replies) == []


def test_group_bursts_splits_on_gaps() -> None:
    times = [0.0, 0.002, 0.004, 1.0, 1.002, 5.0]
    probes = [Probe(t, 0, 0, t + 0.001) for t in times]
    assert [[p.t0_host_s for p in b] for b in group_bursts(probes)] == [[0.0, 0.002, 0.004], [1.0, 1.002], [5.0]]
    assert group_bursts([]) == []
