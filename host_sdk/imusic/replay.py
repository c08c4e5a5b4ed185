"""Bulk replay: a whole recording decoded and aligned with numpy, not message by message.

``replay_blocks(path)`` gives what replaying ``file://path`` through a ``Session`` gives (the same
frame grid, the same per-node counters, clocks refitted from the recorded TIME_SYNC exchanges) in a
fraction of the time, for offline work (``imusic stats``, ``imusic export``):

1. The recording's DATA chunks are grouped by link (one link per node, or per UDP peer), each
   link's bytes joined, keeping every chunk's end offset and receive time.
2. Each link is decoded at once (``decode_samples_bulk``); a frame's receive time is that of the
   chunk holding its last byte. As a session admits a recorded link only with the chunk that holds
   its first HELLO, decoding starts at that chunk (so the counters match a session's).
3. Per node: every HELLO whose ``boot_id`` differs from the one before starts a new boot (its
   samples get a fresh clock fit); the TIME_SYNC replies become probes, grouped into bursts that
   feed a ``ClockFit``. A boot without any probe is fitted from arrival times instead.
4. Samples are mapped onto the host timeline in segments of ``segment_s`` seconds of receive time,
   in time order over all nodes: every burst received by a segment's end is fed to the fit first,
   then the segment's samples are mapped with it and handed to the ``Aligner``, which gives frame
   blocks as it goes.

One node per link, as a ``NodeClient`` has it: frames of other node ids on a link are ignored, and
the counters (samples, lost frames, CRC errors) are those of the link's decoder, as a session's.
Reboots are the ``boot_id`` changes, or the decoder's sequence restarts when more of those (a
reboot whose HELLO was lost).
A live session maps each frame with the fit of that moment (which lags the newest burst); here a
segment is mapped with the fit of its end, so frame times may differ from a session's replay by
the change of the fit over a segment (microseconds for a settled clock).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imusic.align import Aligner, Frame, FrameBlock, samples_to_arrays
from imusic.protocol import PROTOCOL_VERSION, Flag, Hello, NodeSamples, TimeSyncReply, decode_samples_bulk
from imusic.protocol.decoder import NodeStats
from imusic.recording import ChunkKind, RecordingReader
from imusic.timesync import ClockFit, Probe, group_bursts, probes_from_replies

__all__ = ["ReplayResult", "replay_blocks"]

BURST_GAP_S = 0.25  # recorded probes further apart than this belong to different bursts (as Session)
SEGMENT_S = 30.0  # seconds of receive time mapped with one clock fit (its window is 60 s)


@dataclass
class ReplayResult:
    """Frame blocks of a replay and what ``imusic stats`` reports about it."""

    blocks: list[FrameBlock]
    nodes: dict[str, dict[str, Any]]  # by node id: the keys of ``Session.node_report()``
    frames_aligned: int = 0
    frames_with_gaps: int = 0
    first_frame_t_s: float | None = None
    last_frame_t_s: float | None = None
    unknown_links: list[str] = field(default_factory=list)  # links that never said HELLO: not replayed

    @property
    def duration_s(self) -> float:
        if self.first_frame_t_s is None or self.last_frame_t_s is None:
            return 0.0
        return self.last_frame_t_s - self.first_frame_t_s

    def frames(self) -> Iterator[Frame]:
        """Every frame, in order (one ``Frame`` object each: slower than reading the blocks)."""
        for block in self.blocks:
            yield from block.frames()


@dataclass
class _Source:
    """One recorded link: its bytes joined, each chunk's end offset and receive time."""

    url: str
    payloads: list[bytes] = field(default_factory=list)
    times_s: list[float] = field(default_factory=list)


@dataclass(eq=False)
class _Clock:
    """One boot of a node: its clock fit and what feeds it."""

    fit: ClockFit = field(default_factory=ClockFit)
    bursts: list[tuple[float, list[Probe]]] = field(default_factory=list)  # (receive time of its last reply, probes)
    replies: list[tuple[TimeSyncReply, float]] = field(default_factory=list)  # (reply, receive time)
    fed: int = 0  # bursts fed so far; without bursts, index of the next frame for the arrival fit


@dataclass
class _Boot:
    """A stretch of one node's stream under one HELLO layout (a new boot, or a changed IMU list)."""

    start_offset: int  # byte offset just past its HELLO: its samples' frames end after it
    start_t_s: float  # receive time of that HELLO
    hello: Hello
    clock: _Clock  # shared by the stretches of one boot
    row_start: int = 0
    row_stop: int = 0
    mapped: int = 0  # rows before this are on the aligner


@dataclass
class _Node:
    node_id: int
    source: str
    samples: NodeSamples | None
    row_t_s: np.ndarray  # receive time of each row's frame, made non-decreasing
    boots: list[_Boot]
    stats: NodeStats
    crc_errors: int
    reboots: int
    # frames for the arrival fallback: index of each frame's last row
    frame_last_row: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    added: int = 0  # stretches announced to the aligner


def replay_blocks(path: str | Path, rate_hz: float = 60.0, *, segment_s: float = SEGMENT_S,
                  max_gap_periods: float = 1.5) -> ReplayResult:
    """Decode and align the recording at ``path``; see the module docstring. A missing or foreign
    file raises ``RecordingError`` (one clear line)."""
    if not segment_s > 0:
        raise ValueError(f"segment_s must be positive, got {segment_s}")
    reader = RecordingReader(path)
    sources: dict[int, _Source] = {}
    for chunk in reader.chunks(kinds=(ChunkKind.DATA,)):
        src = sources.get(chunk.link_id)
        if src is None:
            src = sources[chunk.link_id] = _Source("")
        src.payloads.append(chunk.payload)
        src.times_s.append(chunk.t_host_s)
    links = reader.links
    nodes: list[_Node] = []
    unknown: list[str] = []
    for link_id, src in sources.items():
        src.url = links.get(link_id) or f"file://{Path(path)}#link{link_id}"
        node = _decode_source(src)
        if node is None:
            unknown.append(src.url)
        else:
            nodes.append(node)

    aligner = Aligner(rate_hz=rate_hz, max_gap_periods=max_gap_periods)
    result = ReplayResult(blocks=[], nodes={}, unknown_links=unknown)
    starts = [n.boots[0].start_t_s for n in nodes]
    ends = [float(n.row_t_s[-1]) if n.row_t_s.shape[0] else n.boots[-1].start_t_s for n in nodes]
    if nodes:
        t0, t_last = min(starts), max(ends)
        n_segments = max(1, math.ceil((t_last - t0) / segment_s + 1e-9))
        for s in range(n_segments):
            seg_end = math.inf if s == n_segments - 1 else t0 + (s + 1) * segment_s
            for node in nodes:
                _map_segment(node, seg_end, aligner)
            _take(result, aligner.pop_block(-math.inf))
    _take(result, aligner.flush_block())
    for node in sorted(nodes, key=lambda n: n.node_id):
        result.nodes[str(node.node_id)] = _report(node)
    return result


def _take(result: ReplayResult, block: FrameBlock | None) -> None:
    if block is None or len(block) == 0:
        return
    result.blocks.append(block)
    result.frames_aligned += len(block)
    result.frames_with_gaps += int((~block.valid.all(axis=1)).sum())
    if result.first_frame_t_s is None:
        result.first_frame_t_s = float(block.t_host_s[0])
    result.last_frame_t_s = float(block.t_host_s[-1])


def _decode_source(src: _Source) -> _Node | None:
    """Decode one link from the chunk holding its first HELLO on; None if it never says HELLO."""
    data = b"".join(src.payloads)
    chunk_end = np.cumsum(np.fromiter((len(p) for p in src.payloads), dtype=np.int64, count=len(src.payloads)))
    chunk_t = np.asarray(src.times_s, dtype=np.float64)
    batch = decode_samples_bulk(data)
    first = next((end for msg, end in zip(batch.messages, batch.message_ends)
                  if isinstance(msg, Hello) and not msg.flags & Flag.HOST), None)
    if first is None:
        return None
    c = int(np.searchsorted(chunk_end, first, side="left"))
    if c > 0:
        # what a session admits: everything from the chunk with the HELLO (that chunk included)
        skip = int(chunk_end[c - 1])
        batch = decode_samples_bulk(data[skip:])
        chunk_end, chunk_t = chunk_end[c:] - skip, chunk_t[c:]

    def received_s(end_offsets: np.ndarray) -> np.ndarray:
        at = np.searchsorted(chunk_end, end_offsets, side="left")
        return chunk_t[np.minimum(at, chunk_t.shape[0] - 1)]

    own = [(m, e) for m, e in zip(batch.messages, batch.message_ends) if not m.flags & Flag.HOST]
    hellos = [(m, e) for m, e in own if isinstance(m, Hello)]
    node_id = hellos[0][0].node_id
    hellos = [(m, e) for m, e in hellos if m.node_id == node_id]
    replies = [(m, e) for m, e in own if isinstance(m, TimeSyncReply) and m.node_id == node_id]
    reply_t = received_s(np.array([e for _, e in replies], dtype=np.int64))

    # stretches under one HELLO: a new boot_id starts a new fit, a new layout only a new stretch
    boots: list[_Boot] = []
    boot_changes = 0
    hello_t = received_s(np.array([e for _, e in hellos], dtype=np.int64))
    for (hello, end), t_s in zip(hellos, hello_t.tolist()):
        prev = boots[-1] if boots else None
        if prev is not None and hello.boot_id == prev.hello.boot_id:
            if hello.imus != prev.hello.imus:  # the same boot, a new layout (as Session: IMUs only)
                boots.append(_Boot(end, t_s, hello, prev.clock))
            continue
        if prev is not None:
            boot_changes += 1
        boots.append(_Boot(end, t_s, hello, _Clock()))
    # each boot's probes (the reply echoes its request's send time), bursts in the order they completed
    boot_of_reply = np.searchsorted(np.array([b.start_offset for b in boots]),
                                    np.array([e for _, e in replies], dtype=np.int64), side="right") - 1
    for (reply, _), b, t3 in zip(replies, boot_of_reply.tolist(), reply_t.tolist()):
        if b >= 0:
            boots[b].clock.replies.append((reply, t3))
    for clock in dict.fromkeys(b.clock for b in boots):
        probes = probes_from_replies({r.probe_id: r.t0_host_us * 1e-6 for r, _ in clock.replies}, clock.replies)
        clock.bursts = [(max(p.t3_host_s for p in burst), burst) for burst in group_bursts(probes, BURST_GAP_S)]

    samples = batch.nodes.get(node_id)
    stats = batch.node_stats.get(node_id, NodeStats())
    if samples is not None and samples.frame_end is not None and len(samples):
        row_t = np.maximum.accumulate(received_s(samples.frame_end))
        bounds = np.searchsorted(samples.frame_end, [b.start_offset for b in boots], side="right")
        for i, boot in enumerate(boots):
            boot.row_start = int(bounds[i])
            boot.row_stop = int(bounds[i + 1]) if i + 1 < len(boots) else len(samples)
        fe = samples.frame_end
        last_rows = np.flatnonzero(np.append(fe[1:] != fe[:-1], True))
    else:
        samples, row_t, last_rows = None, np.zeros(0), np.zeros(0, dtype=np.int64)
    return _Node(node_id, src.url, samples, row_t, boots, stats, crc_errors=batch.stats.crc_errors,
                 reboots=max(boot_changes, stats.seq_resets), frame_last_row=last_rows)


def _map_segment(node: _Node, seg_end_s: float, aligner: Aligner) -> None:
    """Map the node's samples received before ``seg_end_s`` that are not mapped yet."""
    while node.added < len(node.boots) and node.boots[node.added].start_t_s < seg_end_s:
        boot = node.boots[node.added]
        prev = node.boots[node.added - 1] if node.added else None
        if prev is None or prev.hello.imus != boot.hello.imus:
            aligner.add_node(node.node_id, boot.hello)
        node.added += 1
    samples = node.samples
    if samples is None:
        return
    row_stop = int(np.searchsorted(node.row_t_s, seg_end_s, side="left")) if math.isfinite(seg_end_s) else len(samples)
    for boot in node.boots[:node.added]:
        if boot.hello.protocol_version > PROTOCOL_VERSION:
            continue  # a node speaking a newer protocol is refused, as by a session
        lo = max(boot.row_start, boot.mapped)
        hi = min(boot.row_stop, row_stop)
        if hi <= lo:
            continue
        boot.mapped = hi
        clock = boot.clock
        fit = clock.fit
        if clock.bursts:
            # every burst received by the segment's end; at least the first, so the boot can be mapped
            n_due = max(1, bisect_right(clock.bursts, seg_end_s, key=lambda b: b[0]))
            for _, burst in clock.bursts[clock.fed:n_due]:
                fit.add_burst(burst)
            clock.fed = max(clock.fed, n_due)
        else:
            # a boot without probes: the arrival fallback, one point per frame received by then
            last = node.frame_last_row
            f_lo = max(int(np.searchsorted(last, lo, side="left")), clock.fed)
            f_hi = int(np.searchsorted(last, hi, side="left"))
            rows = last[f_lo:f_hi]
            for dev_us, t_s in zip(samples.t_us[rows].tolist(), node.row_t_s[rows].tolist()):
                fit.add_arrival(dev_us, t_s)
            clock.fed = max(clock.fed, f_hi)
        if not fit.ready:
            continue
        part = NodeSamples(samples.node_id, samples.t_us[lo:hi], samples.seq[lo:hi], samples.status[lo:hi],
                           samples.accel[lo:hi], samples.gyro[lo:hi], samples.mag[lo:hi])
        aligner.add_samples(node.node_id, *samples_to_arrays(part, boot.hello, fit))


def _report(node: _Node) -> dict[str, Any]:
    st = node.stats
    last = node.boots[-1]
    fit = last.clock.fit
    ready = fit.ready
    return {
        "imus": last.hello.n_imus,
        "samples": st.samples,
        "lost_frames": st.lost_frames,
        "crc_errors": node.crc_errors,
        "rate_hz": round(st.rate_hz, 3),
        "clock_offset_ms": round(fit.offset_s * 1e3, 3) if ready else None,
        "clock_drift_ppm": round(fit.device_drift_ppm, 3) if ready else None,
        "clock_source": fit.source,
        "reboots": node.reboots,
        "source": node.source,
    }
