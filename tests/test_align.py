"""imusic.align on synthetic signals: sinusoids sampled at 200 Hz on nodes with different clocks
come out on the frame grid matching the true signal; gaps are NaN and masked exactly where samples
were missing; frames come in order, once; deadline and flush; the SAMPLES -> SI conversion."""

from __future__ import annotations

import numpy as np
import pytest
from imusic.align import Aligner, Frame, NodeArrays, samples_to_arrays
from imusic.protocol import (
    INVALID_SAMPLE,
    Hello,
    ImuInfo,
    MsgType,
    Samples,
    StatusBit,
    encode_frame,
    encode_samples_payload,
)
from imusic.protocol.bulk import decode_samples_bulk

RATE_HZ = 200
PERIOD_US = 1_000_000 // RATE_HZ
FRAME_HZ = 60.0


def make_hello(node_id: int, n_imus: int, rate_hz: int = RATE_HZ, mag_slots: tuple[int, ...] = ()) -> Hello:
    imus = tuple(
        ImuInfo(chip=1, mag_chip=1 if slot in mag_slots else 0, bus=0, mux_addr=0x70, mux_channel=slot, addr=0x6B,
                mag_addr=0x2C if slot in mag_slots else 0, site=f"site_{node_id}_{slot}", accel_range_g=8,
                gyro_range_dps=2048, mag_range_gauss=8 if slot in mag_slots else 0,
                accel_scale=0.0023942 * (slot + 1), gyro_scale=0.00106526 * (slot + 1),
                mag_scale=0.0333 if slot in mag_slots else 0.0)
        for slot in range(n_imus))
    return Hello(node_id=node_id, seq=0, flags=0, fw_major=1, fw_minor=0, fw_patch=0, protocol_version=1,
                 board="emulated", uid=bytes(8), boot_id=7, rate_hz=rate_hz, samples_per_frame=4, link=0, imus=imus)


class SimNode:
    """A node's samples: device sample grid mapped to host time by a true offset and drift, and a
    smooth signal per IMU and channel (a sinusoid of known amplitude and frequency)."""

    def __init__(self, node_id: int, n_imus: int, offset_s: float, drift_ppm: float, n_samples: int,
                 start_us: int = 0) -> None:
        self.node_id = node_id
        self.n_imus = n_imus
        t_us = start_us + PERIOD_US * np.arange(n_samples, dtype=np.int64)
        self.t_host_s = offset_s + t_us / 1e6 * (1.0 + drift_ppm * 1e-6)
        self.valid = np.ones((n_samples, n_imus), dtype=bool)
        self.present = np.ones(n_samples, dtype=bool)  # False: the sample never arrived (lost frame)
        self.freq_hz = 1.0 + 0.5 * np.arange(n_imus * 9).reshape(n_imus, 9) / 9
        self.phase = np.arange(n_imus * 9).reshape(n_imus, 9) * 0.7

    def signal(self, t: np.ndarray) -> np.ndarray:
        """(len(t), n_imus, 9) true accel|gyro|mag at host times t."""
        return np.sin(2 * np.pi * self.freq_hz * np.asarray(t)[:, None, None] + self.phase)

    def batch(self, lo: int, hi: int) -> NodeArrays:
        idx = np.arange(lo, hi)[self.present[lo:hi]]
        vals = self.signal(self.t_host_s[idx])
        ok = self.valid[idx]
        vals[~ok] = np.nan
        return NodeArrays(self.t_host_s[idx], vals[..., 0:3], vals[..., 3:6], vals[..., 6:9], ok)

    def expected_valid(self, t: float) -> np.ndarray:
        """By the rule, from the full sample grid: both grid neighbours arrived and are valid."""
        right = int(np.searchsorted(self.t_host_s, t, side="right"))
        if self.t_host_s[right - 1] == t:
            return self.present[right - 1] & self.valid[right - 1]
        if right == 0 or right == len(self.t_host_s):
            return np.zeros(self.n_imus, dtype=bool)
        return self.present[right - 1] & self.present[right] & self.valid[right - 1] & self.valid[right]


def three_nodes(n_samples: int = 2400) -> list[SimNode]:
    # 11 IMUs over three nodes, clocks mapped with different offsets and drifts
    return [SimNode(1, 4, 10.0003, 180.0, n_samples), SimNode(2, 4, 10.0021, -200.0, n_samples),
            SimNode(3, 3, 10.0047, 35.0, n_samples)]


def make_aligner(nodes: list[SimNode], **kwargs: float) -> Aligner:
    aligner = Aligner(rate_hz=FRAME_HZ, **kwargs)
    for node in nodes:
        aligner.add_node(node.node_id, make_hello(node.node_id, node.n_imus))
    return aligner


def stream(nodes: list[SimNode], aligner: Aligner, per_call: int = 4) -> list[Frame]:
    """Feed SAMPLES-frame-sized batches, node after node, popping at each arrival's time."""
    frames: list[Frame] = []
    n = len(nodes[0].t_host_s)
    for lo in range(0, n, per_call):
        for node in nodes:
            batch = node.batch(lo, min(lo + per_call, n))
            aligner.add_samples(node.node_id, *batch)
            if len(batch.t_host_s):
                frames += aligner.pop_frames(float(batch.t_host_s[-1]))
    return frames + aligner.flush()


def stacked(frames: list[Frame]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.array([f.t_host_s for f in frames])
    vals = np.stack([np.concatenate([f.accel_mps2, f.gyro_rads, f.mag_uT], axis=1) for f in frames])
    valid = np.stack([f.valid for f in frames])
    return t, vals, valid


def assert_on_grid_in_order(t: np.ndarray) -> None:
    k = np.round(t * FRAME_HZ).astype(np.int64)
    assert np.array_equal(t, k / FRAME_HZ)  # exactly k / rate
    assert np.array_equal(np.diff(k), np.ones(len(k) - 1, dtype=np.int64))  # in order, none twice, none skipped


def test_sinusoids_on_three_clocks_come_out_on_the_grid_matching_the_truth() -> None:
    nodes = three_nodes()
    frames = stream(nodes, make_aligner(nodes))
    t, vals, valid = stacked(frames)
    assert_on_grid_in_order(t)
    assert frames[0].sites == ("site_1_0", "site_1_1", "site_1_2", "site_1_3", "site_2_0", "site_2_1", "site_2_2",
                               "site_2_3", "site_3_0", "site_3_1", "site_3_2")
    assert frames[0].node_ids == (1,) * 4 + (2,) * 4 + (3,) * 3
    at = 0
    for node in nodes:
        sl = slice(at, at + node.n_imus)
        at += node.n_imus
        inside = (t >= node.t_host_s[0]) & (t <= node.t_host_s[-1])
        assert np.array_equal(valid[:, sl], np.repeat(inside[:, None], node.n_imus, axis=1))
        # linear interpolation of a sinusoid: error <= h^2 / 8 * max|f''| with h the sample spacing
        h = float(np.max(np.diff(node.t_host_s)))
        bound = h * h / 8 * (2 * np.pi * node.freq_hz) ** 2
        err = np.abs(vals[inside][:, sl] - node.signal(t[inside]))
        assert (err <= bound * 1.0001 + 1e-12).all()
        assert np.isnan(vals[~inside][:, sl]).all()
        assert (err.max(axis=0) > bound / 10).all()  # not vacuous: the interpolation error shows


def test_gaps_are_nan_and_masked_exactly_where_samples_were_missing() -> None:
    nodes = three_nodes(1200)
    nodes[1].present[300:308] = False  # two lost SAMPLES frames
    nodes[1].present[500] = False  # one lost sample: the frames around it are not interpolated across it
    nodes[0].valid[100:103, 2] = False  # an IMU the node could not read (-32768)
    nodes[2].valid[700, :] = False
    frames = stream(nodes, make_aligner(nodes))
    t, vals, valid = stacked(frames)
    assert_on_grid_in_order(t)
    expected = np.stack([np.concatenate([node.expected_valid(ti) for node in nodes]) for ti in t])
    assert np.array_equal(valid, expected)
    assert (~expected).sum() >= 12  # the gaps above did make frames invalid
    assert np.isnan(vals[~valid]).all()
    assert np.isfinite(vals[valid]).all()


def test_chunking_does_not_change_the_frames() -> None:
    rng = np.random.default_rng(3)
    nodes = three_nodes(1000)
    nodes[0].present[400:420] = False
    whole = make_aligner(nodes)
    for node in nodes:
        whole.add_samples(node.node_id, *node.batch(0, 1000))
    reference = whole.flush()

    chunked = make_aligner(nodes, max_latency_s=1e9)  # no deadline: only data releases frames
    frames: list[Frame] = []
    at = {node.node_id: 0 for node in nodes}
    while any(a < 1000 for a in at.values()):
        node = nodes[int(rng.integers(len(nodes)))]
        lo = at[node.node_id]
        hi = min(1000, lo + int(rng.integers(1, 40)))
        at[node.node_id] = hi
        chunked.add_samples(node.node_id, *node.batch(lo, hi))
        frames += chunked.pop_frames(0.0)
    frames += chunked.flush()
    t, vals, valid = stacked(frames)
    t_ref, vals_ref, valid_ref = stacked(reference)
    assert_on_grid_in_order(t)
    assert np.array_equal(t, t_ref)
    assert np.array_equal(valid, valid_ref)
    assert np.array_equal(vals, vals_ref, equal_nan=True)
    assert chunked.flush() == [] and chunked.pop_frames(1e9) == []


def test_frames_wait_for_every_node_until_the_deadline() -> None:
    nodes = [SimNode(1, 2, 0.0, 0.0, 201), SimNode(2, 1, 0.0, 0.0, 201)]  # samples at k / 200 s, 0 .. 1 s
    aligner = make_aligner(nodes, max_latency_s=0.1)
    aligner.add_samples(1, *nodes[0].batch(0, 201))  # node 1 up to 1.0 s
    aligner.add_samples(2, *nodes[1].batch(0, 101))  # node 2 up to 0.5 s
    first = aligner.pop_frames(0.55)
    assert [round(f.t_host_s * 60) for f in first] == list(range(31))  # up to 0.5 s: node 2's newest
    assert all(f.valid.all() for f in first)  # 0.5 s is a sample time of both: used as it is
    late = aligner.pop_frames(0.75)  # deadline: frames up to 0.65 s go out without node 2
    assert [round(f.t_host_s * 60) for f in late] == list(range(31, 40))
    assert all(f.valid.tolist() == [True, True, False] for f in late)
    assert all(np.isnan(f.accel_mps2[2]).all() and np.isfinite(f.accel_mps2[:2]).all() for f in late)
    aligner.add_samples(2, *nodes[1].batch(101, 201))  # node 2's late data: too late for those frames
    rest = aligner.pop_frames(0.76)
    assert [round(f.t_host_s * 60) for f in rest] == list(range(40, 61))
    assert all(f.valid.all() for f in rest)
    assert aligner.pop_frames(0.9) == [] and aligner.flush() == []


def test_flush_emits_up_to_the_newest_sample_of_any_node() -> None:
    nodes = [SimNode(1, 1, 0.0, 0.0, 101), SimNode(2, 1, 0.0, 0.0, 41)]  # to 0.5 s and 0.2 s
    aligner = make_aligner(nodes, max_latency_s=10.0)
    for node in nodes:
        aligner.add_samples(node.node_id, *node.batch(0, len(node.t_host_s)))
    popped = aligner.pop_frames(0.3)  # node 2 ends at 0.2 s; the deadline is far
    assert [round(f.t_host_s * 60) for f in popped] == list(range(13))
    flushed = aligner.flush()
    assert [round(f.t_host_s * 60) for f in flushed] == list(range(13, 31))
    assert all(f.valid.tolist() == [True, False] for f in flushed)
    assert aligner.flush() == []


def test_a_rebooted_node_overlapping_its_old_samples_wins_and_frames_stay_in_order() -> None:
    node = SimNode(1, 1, 0.0, 0.0, 201)
    aligner = make_aligner([node])
    aligner.add_samples(1, *node.batch(0, 101))  # old boot, 0 .. 0.5 s
    frames = aligner.pop_frames(0.5)
    aligner.add_samples(1, *node.batch(101, 201))  # 0.5 .. 1 s
    # the new boot's samples, mapped by a fresh fit, start 2.5 ms before the old boot's last
    t_new = 0.9975 + np.arange(100) / RATE_HZ
    ones = np.ones((100, 1, 3))
    aligner.add_samples(1, t_new, 2 * ones, 2 * ones, 2 * ones, np.ones((100, 1), dtype=bool))
    frames += aligner.flush()
    t, vals, valid = stacked(frames)
    assert_on_grid_in_order(t)
    after = t > t_new[0]
    assert valid[after].all() and (vals[after] == 2.0).all()
    before = t < 0.99
    assert np.isfinite(vals[before]).all() and not (vals[before] == 2.0).any()


def test_unsorted_batches_are_sorted_and_duplicate_times_keep_the_last() -> None:
    node = SimNode(1, 2, 0.0, 0.0, 400)
    reference = make_aligner([node])
    reference.add_samples(1, *node.batch(0, 400))
    expected = stacked(reference.flush())
    batch = node.batch(0, 400)
    order = np.random.default_rng(1).permutation(400)
    dup = np.concatenate([[order[0]], order])  # the same sample twice: first a corrupt copy, then the real one
    corrupt = [np.asarray(a)[dup].copy() for a in batch]
    corrupt[1][0] = 99.0  # accel of the first copy
    shuffled = make_aligner([node])
    shuffled.add_samples(1, *corrupt)
    t, vals, valid = stacked(shuffled.flush())
    assert np.array_equal(t, expected[0]) and np.array_equal(valid, expected[2])
    assert np.array_equal(vals, expected[1], equal_nan=True)


def test_layout_and_input_checks() -> None:
    aligner = Aligner()
    aligner.add_node(3, make_hello(3, 1))
    aligner.add_node(1, make_hello(1, 2))
    assert aligner.sites == ("site_1_0", "site_1_1", "site_3_0") and aligner.node_ids == (1, 1, 3)
    assert aligner.pop_frames(100.0) == []  # no samples yet: no grid to emit on
    with pytest.raises(ValueError, match="node 2 has not been added"):
        aligner.add_samples(2, np.zeros(1), np.zeros((1, 1, 3)), np.zeros((1, 1, 3)), np.zeros((1, 1, 3)),
                            np.ones((1, 1), dtype=bool))
    with pytest.raises(ValueError, match=r"gyro_rads has shape \(1, 1, 3\), expected \(1, 2, 3\)"):
        aligner.add_samples(1, np.zeros(1), np.zeros((1, 2, 3)), np.zeros((1, 1, 3)), np.zeros((1, 2, 3)),
                            np.ones((1, 2), dtype=bool))
    aligner.remove_node(3)
    assert aligner.sites == ("site_1_0", "site_1_1")


class ExactClock:
    """Device time + 5 s, no drift."""

    def to_host_s(self, device_us: np.ndarray) -> np.ndarray:
        return np.asarray(device_us, dtype=np.float64) * 1e-6 + 5.0


def wire_samples() -> tuple[Hello, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Counts of one SAMPLES frame of 3 IMUs (slot 1 with a magnetometer), with marked samples."""
    rng = np.random.default_rng(2)
    hello = make_hello(4, 3, mag_slots=(1,))
    accel = rng.integers(-30000, 30000, size=(4, 3, 3)).astype(np.int16)
    gyro = rng.integers(-30000, 30000, size=(4, 3, 3)).astype(np.int16)
    mag = np.zeros((4, 3, 3), dtype=np.int16)
    mag[:, 1] = rng.integers(-3000, 3000, size=(4, 3))
    accel[2, 0] = gyro[2, 0] = INVALID_SAMPLE  # slot 0, sample 2 could not be read
    status = np.array([StatusBit.STALE, StatusBit.HAS_MAG, 0], dtype=np.uint8)
    return hello, status, accel, gyro, mag


def check_converted(arrays: NodeArrays, hello: Hello, accel: np.ndarray, gyro: np.ndarray, mag: np.ndarray,
                    t_first_us: int) -> None:
    assert np.allclose(arrays.t_host_s, (t_first_us + PERIOD_US * np.arange(4)) * 1e-6 + 5.0, rtol=0, atol=1e-9)
    expected_valid = np.ones((4, 3), dtype=bool)
    expected_valid[2, 0] = False  # only the marked sample: the STALE bit does not void the frame
    assert np.array_equal(arrays.valid, expected_valid)
    for slot, imu in enumerate(hello.imus):
        ok = expected_valid[:, slot]
        assert np.allclose(arrays.accel_mps2[ok, slot], accel[ok, slot] * np.float64(imu.accel_scale))
        assert np.allclose(arrays.gyro_rads[ok, slot], gyro[ok, slot] * np.float64(imu.gyro_scale))
        assert np.isnan(arrays.accel_mps2[~ok, slot]).all() and np.isnan(arrays.gyro_rads[~ok, slot]).all()
    assert np.allclose(arrays.mag_uT[:, 1], mag[:, 1] * np.float64(hello.imus[1].mag_scale))
    assert np.isnan(arrays.mag_uT[:, [0, 2]]).all()  # no magnetometer


def test_samples_to_arrays_live_message_and_replay_batch_agree() -> None:
    hello, status, accel, gyro, mag = wire_samples()
    live = Samples(node_id=4, seq=0, flags=0, t_first_us=1_000_000, period_us=PERIOD_US, n_samples=4, n_imus=3,
                   status=status, accel=accel, gyro=gyro, mag=mag)
    from_live = samples_to_arrays(live, hello, ExactClock())
    check_converted(from_live, hello, accel, gyro, mag, 1_000_000)
    # the replay path: the same frame through the bulk decoder
    wire = encode_frame(MsgType.SAMPLES, encode_samples_payload(1_000_000, PERIOD_US, status, accel, gyro, mag),
                        node_id=4, seq=0)
    from_replay = samples_to_arrays(decode_samples_bulk(wire).nodes[4], hello, ExactClock())
    for a, b in zip(from_live, from_replay):
        assert np.array_equal(a, b, equal_nan=True)


def test_samples_to_arrays_marks_stale_magnetometer_and_missing_slots() -> None:
    hello, status, accel, gyro, mag = wire_samples()
    status = status.copy()
    status[1] |= StatusBit.MAG_STALE
    two_slots = Samples(node_id=4, seq=0, flags=0, t_first_us=0, period_us=PERIOD_US, n_samples=4, n_imus=2,
                        status=status[:2], accel=accel[:, :2], gyro=gyro[:, :2], mag=mag[:, :2])
    arrays = samples_to_arrays(two_slots, hello, ExactClock())
    assert arrays.accel_mps2.shape == (4, 3, 3)  # laid out as the HELLO says
    assert np.isnan(arrays.mag_uT).all()  # MAG_STALE: the magnetometer reading is not used
    assert not arrays.valid[:, 2].any() and np.isnan(arrays.accel_mps2[:, 2]).all()  # slot the data lack
    assert arrays.valid[:, 1].all()


def test_a_live_backlog_beyond_max_backlog_is_skipped_not_emitted() -> None:
    # node 2's first samples were mapped an hour into the past (a bad fit): no hour of empty frames
    far = SimNode(2, 1, -3600.0, 0.0, 40)
    near = SimNode(1, 1, 0.0, 0.0, 40)
    aligner = make_aligner([near, far], max_latency_s=0.1, max_backlog_s=5.0)
    for node in (near, far):
        aligner.add_samples(node.node_id, *node.batch(0, 40))
    frames = aligner.pop_frames(0.3)
    t = np.array([f.t_host_s for f in frames])
    assert_on_grid_in_order(t)
    assert t[0] >= 0.2 - 5.0 - 1 / FRAME_HZ and t[-1] <= 0.2
    assert not np.stack([f.valid for f in frames])[:, 1].any()
    # offline, flush has no deadline and no backlog: every frame from the first sample
    offline = make_aligner([near, far])
    for node in (near, far):
        offline.add_samples(node.node_id, *node.batch(0, 40))
    block = offline.flush_block()
    assert block is not None and len(block) == round(3600 * FRAME_HZ) + 12  # k = -216000 .. 11 (newest: 0.195 s)
