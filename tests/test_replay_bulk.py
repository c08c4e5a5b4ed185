"""The replay of a recording (imusic.replay.replay_blocks, what a Session on a file:// URL and
`imusic stats/export` use) against the live session that made the recording, with emulated nodes:
the same node report, the same frame grid, the same numbers up to the small time shifts between
the live session's causal clock fits and the replay's segment fits."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imusic.align import samples_to_arrays
from imusic.emulation.launcher import EmulatedNode
from imusic.protocol import (Hello, ImuInfo, MsgType, TimeSyncReply, decode_samples_bulk, encode, encode_frame,
                             encode_samples_payload)
from imusic.recording import ChunkKind, RecordingError, RecordingReader, RecordingWriter
from imusic.replay import ReplayResult, replay_blocks
from imusic.session import Session
from imusic.timesync import group_bursts, probes_from_replies

EXACT_KEYS = ("imus", "samples", "lost_frames", "crc_errors", "rate_hz", "clock_source", "reboots", "source")


class Live:
    """What the live session saw while it recorded: its frames as stacked arrays and its node
    report, taken after it closed (then it has counted exactly the bytes it recorded)."""

    def __init__(self, frames: list[Any], report: dict[str, dict[str, Any]]) -> None:
        self.report = report
        self.t_host_s = np.array([f.t_host_s for f in frames])
        self.valid = np.array([f.valid for f in frames])
        self.accel = np.array([f.accel_mps2 for f in frames])
        self.gyro = np.array([f.gyro_rads for f in frames])


def _record(path: Path, urls: list[str], seconds: float, n_nodes: int) -> tuple[Path, Live]:
    with Session.open(urls, record=path) as session:
        deadline = time.monotonic() + 10
        for _ in session.frames(timeout_s=0.5):
            if len(session.nodes) >= n_nodes or time.monotonic() > deadline:
                break
        frames, t_end = [], time.monotonic() + seconds
        for frame in session.frames(timeout_s=2.0):
            frames.append(frame)
            if time.monotonic() >= t_end:
                break
    return path, Live(frames, session.node_report())


def _bulk_arrays(result: ReplayResult) -> tuple[np.ndarray, ...]:
    blocks = result.blocks
    return tuple(np.concatenate([getattr(b, name) for b in blocks])
                 for name in ("t_host_s", "valid", "accel_mps2", "gyro_rads"))


class _DeviceSeconds:
    def to_host_s(self, device_us: np.ndarray) -> np.ndarray:
        return device_us * 1e-6


def _largest_steps(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per IMU and axis (session layout: nodes by id), the largest change between consecutive
    samples of accel and gyro in the recording."""
    reader = RecordingReader(path)
    per_node: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for link_id in reader.links:
        data = b"".join(c.payload for c in reader.chunks(kinds=(ChunkKind.DATA,)) if c.link_id == link_id)
        batch = decode_samples_bulk(data)
        hello = next((m for m in batch.messages if isinstance(m, Hello)), None)
        if hello is None or hello.node_id not in batch.nodes:
            continue
        arrays = samples_to_arrays(batch.nodes[hello.node_id], hello, _DeviceSeconds())
        per_node[hello.node_id] = (np.nanmax(np.abs(np.diff(arrays.accel_mps2, axis=0)), axis=0),
                                   np.nanmax(np.abs(np.diff(arrays.gyro_rads, axis=0)), axis=0))
    order = sorted(per_node)
    return (np.concatenate([per_node[n][0] for n in order]), np.concatenate([per_node[n][1] for n in order]))


def _probe_fits_in_use_s(path: Path) -> float:
    """Host time from which both the live session and the replay map every node with a probe fit
    (conservatively: from the second burst's first reply; before, the live session used arrivals)."""
    reader = RecordingReader(path)
    start = -np.inf
    for link_id in reader.links:
        chunks = [c for c in reader.chunks(kinds=(ChunkKind.DATA,)) if c.link_id == link_id]
        messages = [(m, c.t_host_s) for c in chunks for m in decode_samples_bulk(c.payload).messages]
        if not any(isinstance(m, Hello) for m, _ in messages):
            continue  # a UDP port's own link: its peers are recorded as links of their own
        replies = [(m, t) for m, t in messages if isinstance(m, TimeSyncReply)]
        probes = probes_from_replies({r.probe_id: r.t0_host_us * 1e-6 for r, _ in replies}, replies)
        bursts = group_bursts(probes)
        assert len(bursts) >= 2, "the recording should hold several TIME_SYNC bursts per node"
        start = max(start, bursts[1][0].t3_host_s)
    return float(start)


def _assert_same_report(bulk: ReplayResult, streamed: Live) -> None:
    assert sorted(bulk.nodes) == sorted(streamed.report)
    for node_id, want in streamed.report.items():
        got = bulk.nodes[node_id]
        assert set(got) == set(want)
        assert {k: got[k] for k in EXACT_KEYS} == {k: want[k] for k in EXACT_KEYS}, node_id


def _assert_frames_agree(path: Path, bulk: ReplayResult, streamed: Live) -> None:
    """Same grid; where both are valid, once the fits rest on probes, every
    value within a quarter of that channel's largest sample-to-sample step.

    Why that bound: both replays interpolate the same samples; only the host times given to them
    differ, by the change of a node's clock fit between the moment the live session mapped a
    frame and the end of the bulk replay's segment (drift of ~100 ppm refined over seconds: well
    under a millisecond). A time shift below a quarter sample period (1.25 ms at 200 Hz) moves an
    interpolated value by less than a quarter of one sample step."""
    t_b, valid_b, accel_b, gyro_b = _bulk_arrays(bulk)
    k_s = np.round(streamed.t_host_s * 60.0)
    k_b = np.round(t_b * 60.0)
    assert np.allclose(streamed.t_host_s, k_s / 60.0, rtol=0, atol=1e-9)  # the grid k / rate
    assert np.allclose(t_b, k_b / 60.0, rtol=0, atol=1e-9)
    assert (np.diff(k_b) == 1).all()  # every frame once, in order
    common, i_s, i_b = np.intersect1d(k_s, k_b, return_indices=True)
    assert common.size >= 0.95 * k_s.size  # the live frames are in the replay (which runs to the end)
    settled = streamed.t_host_s[i_s] > _probe_fits_in_use_s(path) + 0.05
    assert settled.sum() > 60
    i_s, i_b = i_s[settled], i_b[settled]
    valid_s = streamed.valid[i_s]
    both = valid_s & valid_b[i_b]
    assert (valid_s == valid_b[i_b]).mean() > 0.95 and both.mean() > 0.8
    step_accel, step_gyro = _largest_steps(path)
    d_accel = np.abs(streamed.accel[i_s] - accel_b[i_b])[both]  # (k, 3) against steps (n, 3)
    d_gyro = np.abs(streamed.gyro[i_s] - gyro_b[i_b])[both]
    imu = np.nonzero(both)[1]
    assert (d_accel <= 0.25 * step_accel[imu]).all(), (d_accel / step_accel[imu]).max()
    assert (d_gyro <= 0.25 * step_gyro[imu]).all(), (d_gyro / step_gyro[imu]).max()
    # invalid stays NaN in the bulk frames too
    assert np.isnan(accel_b[~valid_b]).all() and not np.isnan(accel_b[valid_b]).any()


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Live]:
    return _record(tmp_path_factory.mktemp("rec") / "two.imu",
                   ["emu://?imus=3&rate=100&node_id=1&drift_ppm=150", "emu://?imus=2&rate=200&node_id=2&seed=2&drift_ppm=-100"],
                   3.0, 2)


@pytest.fixture(scope="module")
def reboot_and_loss(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Live]:
    return _record(tmp_path_factory.mktemp("rec") / "faults.imu",
                   ["emu://?imus=2&rate=100&node_id=1&reboot_after=1.5", "emu://?imus=2&rate=100&node_id=2&seed=2&loss=0.1"],
                   3.5, 2)


@pytest.fixture(scope="module")
def udp_node(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Live]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with EmulatedNode(imus=2, rate_hz=100, node_id=3, seed=3, link=f"udp:127.0.0.1:{port}"):
        return _record(tmp_path_factory.mktemp("rec") / "udp.imu", [f"udp://127.0.0.1:{port}"], 3.0, 1)


def test_two_nodes_give_the_live_sessions_report_and_frames(two_nodes: tuple[Path, Live]) -> None:
    path, live = two_nodes
    bulk = replay_blocks(path)
    _assert_same_report(bulk, live)
    for node_id, want in live.report.items():
        got = bulk.nodes[node_id]
        assert want["samples"] > 300 and want["clock_source"] == "probes"
        # both fits end up fed the same bursts (the replay rebuilds them from the recorded replies)
        assert got["clock_offset_ms"] == pytest.approx(want["clock_offset_ms"], abs=0.05)
        assert got["clock_drift_ppm"] == pytest.approx(want["clock_drift_ppm"], abs=1.0)
    _assert_frames_agree(path, bulk, live)


def test_short_segments_give_the_same_frames_as_one_segment(two_nodes: tuple[Path, Live]) -> None:
    path, _ = two_nodes
    whole = replay_blocks(path, segment_s=1e6)
    pieces = replay_blocks(path, segment_s=0.5)
    assert len(pieces.blocks) > len(whole.blocks) + 2  # frames come out segment by segment
    t_w, valid_w, accel_w, _ = _bulk_arrays(whole)
    t_p, valid_p, accel_p, _ = _bulk_arrays(pieces)
    assert np.array_equal(t_w, t_p)
    assert (valid_w == valid_p).mean() > 0.95
    both = valid_w & valid_p
    step_accel, _ = _largest_steps(path)
    imu = np.nonzero(both)[1]
    assert (np.abs(accel_w - accel_p)[both] <= 0.25 * step_accel[imu]).all()


def test_reboot_and_loss_are_counted_as_the_live_session_counted_them(reboot_and_loss: tuple[Path, Live]) -> None:
    path, live = reboot_and_loss
    bulk = replay_blocks(path)
    _assert_same_report(bulk, live)
    assert bulk.nodes["1"]["reboots"] == 1
    # the new boot's fit holds only its own probes (one mixing both boots' clocks is off by ~10^5 ppm)
    assert abs(bulk.nodes["1"]["clock_drift_ppm"]) < 1000
    assert bulk.nodes["2"]["lost_frames"] == live.report["2"]["lost_frames"] > 0
    # the new boot's samples are mapped with a fit of their own: node 1 is valid again after it
    t, valid, _, _ = _bulk_arrays(bulk)
    late = t > t[-1] - 0.8
    assert valid[late][:, :2].mean() > 0.9


def test_udp_node(udp_node: tuple[Path, Live]) -> None:
    path, live = udp_node
    bulk = replay_blocks(path)
    _assert_same_report(bulk, live)
    report = bulk.nodes["3"]
    assert report["source"].startswith("udp://") and report["samples"] > 300
    assert report["clock_offset_ms"] == pytest.approx(live.report["3"]["clock_offset_ms"], abs=0.05)
    _assert_frames_agree(path, bulk, live)


# ---- without emulated nodes


def _hello(node_id: int = 1, boot_id: int = 7) -> Hello:
    imu = ImuInfo(1, 0, 0, 0x70, 0, 0x6B, 0, "cheek", 8, 512, 0, 8 * 9.80665 / 32768, 0.001, 0.0)
    return Hello(node_id, 0, 0, 0, 1, 0, 1, "test", bytes(8), boot_id, 100, 2, 0, (imu,))


def _samples_frame(k: int, node_id: int = 1) -> bytes:
    counts = np.full((2, 1, 3), k, dtype=np.int16)
    payload = encode_samples_payload(k * 20_000, 10_000, np.zeros(1, dtype=np.uint8), counts, counts)
    return encode_frame(MsgType.SAMPLES, payload, node_id=node_id, seq=k + 1)


def test_bulk_decoder_tells_where_each_frame_ends() -> None:
    hello = encode(_hello())
    frames = [_samples_frame(k) for k in range(5)]
    garbage = b"\x00\xa5junk" + encode_frame(MsgType.HELLO, b"\x01", node_id=9, seq=0)  # a payload too short
    stream = garbage + hello + b"".join(frames)
    batch = decode_samples_bulk(stream)
    assert batch.stats.bad_length + batch.stats.bad_payload == 1
    assert batch.message_ends == [len(garbage) + len(hello)]  # parallel to the messages delivered
    ends = len(garbage) + len(hello) + np.cumsum([len(f) for f in frames])
    assert np.array_equal(batch.nodes[1].frame_end, np.repeat(ends, 2))  # two instants per frame


def test_arrival_fit_when_no_probes_and_one_chunk_many_frames(tmp_path: Path) -> None:
    """No TIME_SYNC at all: the arrival fallback maps samples; a frame split over two chunks is
    received with the second (its last byte)."""
    path = tmp_path / "arrivals.imu"
    with RecordingWriter(path) as writer:
        link = writer.add_link("serial:///dev/ttyX")
        writer.data(link, 10.0, encode(_hello()))
        for k in range(200):
            frame = _samples_frame(k)
            t_s = 10.0 + (k + 1) * 0.02 + 0.003  # 3 ms after its last sample
            writer.data(link, t_s - 0.001, frame[:7])
            writer.data(link, t_s, frame[7:])
    result = replay_blocks(path)
    report = result.nodes["1"]
    assert report["clock_source"] == "arrivals" and report["samples"] == 400 and report["lost_frames"] == 0
    # frame k's newest sample (device k * 20 ms + 10 ms) comes in at host 10 s + (k + 1) * 20 ms + 3 ms
    assert report["clock_offset_ms"] == pytest.approx(10_000.0 + 20.0 + 3.0 - 10.0, abs=1e-3)
    t, valid, _, _ = _bulk_arrays(result)
    assert valid.mean() > 0.95 and np.allclose(np.diff(t), 1 / 60)


def test_links_without_hello_are_listed_not_replayed_and_foreign_files_fail(tmp_path: Path) -> None:
    path = tmp_path / "mute.imu"
    with RecordingWriter(path) as writer:
        writer.data(writer.add_link("serial:///dev/ttyMute"), 1.0, _samples_frame(0))
    result = replay_blocks(path)
    assert result.nodes == {} and result.blocks == [] and result.unknown_links == ["serial:///dev/ttyMute"]
    assert result.duration_s == 0.0
    foreign = tmp_path / "foreign.imu"
    foreign.write_bytes(b"not a recording at all")
    with pytest.raises(RecordingError):
        replay_blocks(foreign)
