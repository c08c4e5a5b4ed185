"""The emulator's clock truth (EmulatedNode.clock_truth()) and the session's clock fit against it.

The truth is checked without any timing threshold: every TIME_SYNC exchange brackets the device's
reading times between the host's send and receive times, so the truth must map t1 and t2 inside
[t0, t3]. With a drift of +-2 % a truth with the wrong drift, sign, offset or epoch leaves that
bracket within a second. The fit is then held to a loose bound against that truth.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from imusic.emulation.launcher import ClockTruth, EmulatedNode
from imusic.session import Session
from imusic.timesync import Probe

WAIT_S = 20.0  # a guard against a hung node, not a timing requirement
ROUNDING_S = 2e-6  # the truth is exact to a microsecond of integer rounding either way


@contextmanager
def emulated_session(clocks: dict[int, tuple[int, int]], jitter_ms: float = 0.0
                     ) -> Iterator[tuple[Session, dict[int, EmulatedNode]]]:
    """Nodes by id with (drift_ppm, offset_us), on ptys, in one live session."""
    with ExitStack() as stack:
        nodes = {node_id: stack.enter_context(EmulatedNode(imus=1, rate_hz=100, node_id=node_id, seed=node_id,
                                                           drift_ppm=drift_ppm, offset_us=offset_us,
                                                           jitter_ms=jitter_ms))
                 for node_id, (drift_ppm, offset_us) in clocks.items()}
        deadline = time.monotonic() + WAIT_S
        while any(n.pty_path is None for n in nodes.values()):
            assert time.monotonic() < deadline, "no pty"
            time.sleep(0.01)
        session = stack.enter_context(Session.open([str(n.port_path) for n in nodes.values()]))
        yield session, nodes


def truth_of(node: EmulatedNode) -> ClockTruth:
    deadline = time.monotonic() + WAIT_S
    while (truth := node.clock_truth()) is None:
        assert time.monotonic() < deadline, f"no clock line on the emulator's stderr:\n{node.stderr_text()}"
        time.sleep(0.01)
    return truth


def test_truth_maps_every_sync_exchange_inside_its_round_trip() -> None:
    clocks = {1: (20_000, 250_000_000), 2: (-20_000, 0)}
    with emulated_session(clocks) as (session, nodes):
        # The session's first bursts come a quarter second apart: four span most of a second, in
        # which a 2 % drift moves the device clock by far more than a round trip.
        bursts: dict[int, list[list[Probe]]] = {node_id: [] for node_id in nodes}
        deadline = time.monotonic() + WAIT_S
        while any(len(b) < 4 for b in bursts.values()):
            assert time.monotonic() < deadline, f"too few TIME_SYNC bursts: {bursts}"
            for node_id, client in session.nodes.items():
                burst = client.last_burst
                if burst and (not bursts[node_id] or bursts[node_id][-1] is not burst):
                    bursts[node_id].append(burst)
            time.sleep(0.01)
        for node_id, node in nodes.items():
            truth = truth_of(node)
            assert (truth.drift_ppm, truth.offset_us) == clocks[node_id]
            probes = [p for burst in bursts[node_id] for p in burst]
            for p in probes:
                assert p.t0_host_s - ROUNDING_S <= truth.host_s(p.t1_device_us), (node_id, p)
                assert truth.host_s(p.t2_device_us) <= p.t3_host_s + ROUNDING_S, (node_id, p)


def test_session_fit_tracks_the_truth_within_the_link_jitter() -> None:
    jitter_ms = 5.0
    clocks = {1: (200, 3_700_000), 2: (-200, 0)}
    with emulated_session(clocks, jitter_ms=jitter_ms) as (session, nodes):
        deadline = time.monotonic() + WAIT_S
        while not all(f.ready and f.n_points >= 4 for f in session.clock_fits().values()) \
                or len(session.clock_fits()) < len(nodes):
            assert time.monotonic() < deadline, "the session never fitted both clocks"
            time.sleep(0.05)
        now_s = time.monotonic()
        errors_s = {}
        for node_id, fit in session.clock_fits().items():
            truth = truth_of(nodes[node_id])
            device_us = truth.device_us(now_s)
            assert abs(truth.host_s(device_us) - now_s) < ROUNDING_S  # the truth's two ways agree
            errors_s[node_id] = fit.to_host_s(device_us) - truth.host_s(device_us)
        # Loose: a working fit is far better than one exchange's worst asymmetry (the jitter);
        # a broken mapping (wrong sign, unit or clock) is off by seconds.
        for node_id, error_s in errors_s.items():
            assert abs(error_s) < jitter_ms * 1e-3, (node_id, errors_s)
        assert abs(errors_s[1] - errors_s[2]) < jitter_ms * 1e-3, errors_s
