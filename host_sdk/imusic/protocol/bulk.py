"""Bulk decoding of a whole recording: SAMPLES into per-node numpy arrays, vectorised over frames.

``decode_samples_bulk(data)`` gives exactly what ``StreamDecoder`` gives for ``feed(data)`` then
``flush()``: the same counters, the same non-SAMPLES messages, and the same sample values, but with
the SAMPLES of each node joined into arrays. One Python step per frame remains (finding it and its
CRC-32); the rest (sequence accounting when no frame came back, payload checks, grouping frames of
one shape and reading their int16 blocks) is done with numpy over all frames at once.
"""

from __future__ import annotations

import zlib
from array import array
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import numpy as np

from imusic.protocol.constants import (
    AXES,
    FRAME_OVERHEAD,
    HEADER_SIZE,
    INVALID_SAMPLE,
    MAX_IMUS,
    MAX_PAYLOAD,
    MAX_SAMPLES_PER_FRAME,
    PROTOCOL_VERSION,
    SAMPLES_HEADER_SIZE,
    SEQ_MODULO,
    SYNC,
    VALUES_6AXIS,
    Flag,
    MsgType,
    StatusBit,
)
from imusic.protocol.decoder import KNOWN_TYPES, DecoderStats, NodeStats, PayloadError, decode_payload
from imusic.protocol.messages import FRAME_HEADER_DTYPE, SAMPLE_VALUE_DTYPE, SAMPLES_HEADER_DTYPE
from imusic.protocol.records import Message
from imusic.protocol.samples import SampleShape, sample_shape, split_values

_HAS_MAG_BIT = 7
assert 1 << _HAS_MAG_BIT == StatusBit.HAS_MAG
_CRC_DTYPE = np.dtype("<u4")
# where the counts sit in a SAMPLES payload
_N_SAMPLES_AT: int = SAMPLES_HEADER_DTYPE.fields["n_samples"][1]  # type: ignore[index]
_N_IMUS_AT: int = SAMPLES_HEADER_DTYPE.fields["n_imus"][1]  # type: ignore[index]


@dataclass
class NodeSamples:
    """All SAMPLES of one node, one row per sample instant, in arrival order (sort by ``t_us`` if
    frames came out of order). When a node's IMU count changed mid-recording the arrays are as wide
    as its largest frame; slots a frame did not carry hold ``INVALID_SAMPLE`` and status 0."""

    node_id: int
    t_us: np.ndarray  # int64 (N,) device time
    seq: np.ndarray  # uint16 (N,) sequence number of the frame each instant came in
    status: np.ndarray  # uint8 (N, n_imus) status bits of that frame
    accel: np.ndarray  # int16 (N, n_imus, 3) counts
    gyro: np.ndarray  # int16 (N, n_imus, 3) counts
    mag: np.ndarray  # int16 (N, n_imus, 3) counts, 0 where the IMU has no HAS_MAG
    # int64 (N,) byte offset just past the frame each instant came in (where its receive time is
    # decided: a frame is received with its last byte); None when not built by the bulk decoder
    frame_end: np.ndarray | None = None

    @property
    def n_imus(self) -> int:
        return int(self.accel.shape[1])

    def __len__(self) -> int:
        return int(self.t_us.shape[0])


@dataclass
class SamplesBatch:
    nodes: dict[int, NodeSamples]
    messages: list[Message]  # every other message, and SAMPLES sent with the HOST flag, in stream order
    stats: DecoderStats
    node_stats: dict[int, NodeStats] = field(default_factory=dict)
    message_ends: list[int] = field(default_factory=list)  # byte offset just past each of ``messages``


# CRC-32 of any message followed by its own CRC (little-endian): checking a frame's CRC is then one
# call over header, payload and CRC together.
CRC_RESIDUE = 0x2144DF1C


def _scan_frames(data: bytes) -> tuple[np.ndarray, list[tuple[int, int, str]]]:
    """Start offsets of every intact frame, and every rejected sync word as (start, node_id or -1,
    counter), by the stream decoder's rules (``flush`` included)."""
    n = len(data)
    view = memoryview(data)
    crc32 = zlib.crc32
    startswith = data.startswith
    find = data.find
    starts = array("q")
    append = starts.append
    rejected: list[tuple[int, int, str]] = []
    pos = 0
    while True:
        # frames usually follow each other: look right here before searching
        if startswith(SYNC, pos):
            p = pos
        else:
            p = find(SYNC, pos)
            if p < 0:
                break
        if n - p < HEADER_SIZE:
            rejected.append((p, -1, "truncated"))
            pos = p + 2
            continue
        length = data[p + 8] | (data[p + 9] << 8)
        end = p + FRAME_OVERHEAD + length
        if length <= MAX_PAYLOAD and end <= n and crc32(view[p + 2:end]) == CRC_RESIDUE:
            append(p)
            pos = end
            continue
        if length > MAX_PAYLOAD:
            rejected.append((p, data[p + 5], "bad_length"))
        elif end > n:
            rejected.append((p, -1, "truncated"))
        else:
            rejected.append((p, data[p + 5], "crc_errors"))
        pos = p + 2
    view.release()
    return np.frombuffer(starts, dtype=np.int64) if len(starts) else np.zeros(0, dtype=np.int64), rejected


def _seq_keep(node: NodeStats, seqs: np.ndarray, crcs: np.ndarray) -> np.ndarray:
    """Sequence accounting over one node's frames in order; which frames are kept (not repeats)."""
    steps = np.diff(seqs.astype(np.int64)) % SEQ_MODULO
    if steps.size == 0 or (steps.min() >= 1 and steps.max() < SEQ_MODULO // 2):
        # only steps forward: the sequential rules reduce to counting the gaps
        node.lost_frames += int((steps - 1).sum())
        return np.ones(seqs.shape[0], dtype=bool)
    return np.fromiter((node.accept_seq(int(s), int(c)) for s, c in zip(seqs, crcs)), dtype=bool, count=seqs.shape[0])


def decode_samples_bulk(data: bytes | bytearray | memoryview) -> SamplesBatch:
    """Decode a whole byte stream at once; see the module docstring. Never raises on any bytes."""
    data = bytes(data)
    n = len(data)
    stats = DecoderStats(bytes=n)
    start, rejected = _scan_frames(data)
    arr = np.frombuffer(data, dtype=np.uint8)
    header = _rows(arr, start + len(SYNC), FRAME_HEADER_DTYPE)
    version = header["version"]
    msg_type = header["type"].astype(np.int64)
    flags = header["flags"]
    node_id = header["node_id"].astype(np.int64)
    seq = header["seq"].astype(np.int64)
    length = header["length"].astype(np.int64)
    crc = _rows(arr, start + HEADER_SIZE + length, _CRC_DTYPE).astype(np.int64)
    stats.frames = int(start.shape[0])
    stats.garbage_bytes = n - int((length + FRAME_OVERHEAD).sum())

    ok_version = version == PROTOCOL_VERSION
    stats.version_mismatch = int((~ok_version).sum())
    host = ok_version & ((flags & Flag.HOST) != 0)
    stats.host_frames = int(host.sum())
    from_node = ok_version & ~host

    # nodes, in order of their first frame; a rejected frame counts for a node already known then
    node_stats: dict[int, NodeStats] = {}
    keep = from_node.copy()
    node_first_pos: dict[int, int] = {}
    for node in dict.fromkeys(node_id[from_node].tolist()):
        mine = np.flatnonzero(from_node & (node_id == node))
        ns = node_stats[node] = NodeStats()
        node_first_pos[node] = int(start[mine[0]])
        kept = _seq_keep(ns, seq[mine], crc[mine])
        keep[mine[~kept]] = False
        ns.frames = int(kept.sum())
    for p, node, counter in rejected:
        setattr(stats, counter, getattr(stats, counter) + 1)
        if node in node_first_pos and p > node_first_pos[node]:
            ns = node_stats[node]
            setattr(ns, counter, getattr(ns, counter) + 1)

    delivered = keep | host
    known = np.isin(msg_type, np.fromiter(KNOWN_TYPES, dtype=np.int64))
    unknown = delivered & ~known
    stats.unknown_type = int(unknown.sum())
    for node, count in zip(*np.unique(node_id[unknown & keep], return_counts=True)):
        node_stats[int(node)].unknown_type += int(count)

    def count_bad(i: int, bad_length: bool) -> None:
        counter = "bad_length" if bad_length else "bad_payload"
        setattr(stats, counter, getattr(stats, counter) + 1)
        if keep[i]:
            ns = node_stats[int(node_id[i])]
            setattr(ns, counter, getattr(ns, counter) + 1)

    # every message but a node's SAMPLES: one by one, with the stream decoder's own code
    messages: list[Message] = []
    message_ends: list[int] = []
    samples_mask = keep & (msg_type == MsgType.SAMPLES)
    for i in np.flatnonzero(delivered & known & ~samples_mask).tolist():
        p, size = int(start[i]), int(length[i])
        try:
            messages.append(decode_payload(int(msg_type[i]), int(node_id[i]), int(seq[i]), int(flags[i]),
                                           data[p + HEADER_SIZE:p + HEADER_SIZE + size]))
        except PayloadError as exc:
            count_bad(i, exc.bad_length)
            continue
        message_ends.append(p + FRAME_OVERHEAD + size)

    nodes = _bulk_samples(data, np.flatnonzero(samples_mask), start, length, node_id, seq, node_stats, count_bad)
    stats.messages = len(messages) + sum(ns.frames_delivered for ns in nodes.values())
    return SamplesBatch(nodes={k: v.samples for k, v in nodes.items()}, messages=messages, stats=stats,
                        node_stats=node_stats, message_ends=message_ends)


@dataclass
class _NodeResult:
    samples: NodeSamples
    frames_delivered: int


def _bulk_samples(data: bytes, idx: np.ndarray, start: np.ndarray, length: np.ndarray, node_id: np.ndarray,
                  seq: np.ndarray, node_stats: dict[int, NodeStats],
                  count_bad: Callable[[int, bool], None]) -> dict[int, _NodeResult]:
    arr = np.frombuffer(data, dtype=np.uint8)
    payload_at = start[idx] + HEADER_SIZE
    size = length[idx]
    # checks in the stream decoder's order: header present, counts in range, status present, size
    too_short = size < SAMPLES_HEADER_SIZE
    safe_at = np.where(too_short, 0, payload_at)  # never read past a short payload
    n_samples = np.where(too_short, 0, arr[safe_at + _N_SAMPLES_AT]).astype(np.int64)
    n_imus = np.where(too_short, 0, arr[safe_at + _N_IMUS_AT]).astype(np.int64)
    bad_counts = ~too_short & ((n_samples < 1) | (n_samples > MAX_SAMPLES_PER_FRAME) | (n_imus > MAX_IMUS))
    no_status = ~too_short & ~bad_counts & (size < SAMPLES_HEADER_SIZE + n_imus)
    usable = ~(too_short | bad_counts | no_status)
    # HAS_MAG bits of each IMU slot as one integer per frame
    mag_mask = np.zeros(idx.shape[0], dtype=np.int64)
    for k in range(MAX_IMUS):
        has = usable & (n_imus > k)
        if not has.any():
            break
        bit = (arr[payload_at[has] + SAMPLES_HEADER_SIZE + k] >> _HAS_MAG_BIT) & 1
        mag_mask[has] |= bit.astype(np.int64) << k
    n_mag = np.zeros_like(mag_mask)
    for k in range(MAX_IMUS):
        n_mag += (mag_mask >> k) & 1
    expected = SAMPLES_HEADER_SIZE + n_imus + 2 * n_samples * (VALUES_6AXIS * n_imus + AXES * n_mag)
    wrong_size = usable & (size != expected)
    good = usable & ~wrong_size
    for j in np.flatnonzero(~good).tolist():
        count_bad(int(idx[j]), bool(too_short[j] or no_status[j] or wrong_size[j]))

    g = np.flatnonzero(good)
    if g.size == 0:
        return {}
    g_at, g_ns, g_ni, g_mask = payload_at[g], n_samples[g], n_imus[g], mag_mask[g]
    g_node, g_seq = node_id[idx[g]], seq[idx[g]]
    # one key per payload shape; frames of one shape are read as rows of one structured array
    keys = g_ns * (1 << 40) + g_ni * (1 << 32) + g_mask

    results: dict[int, _NodeResult] = {}
    for node in dict.fromkeys(g_node.tolist()):
        mine = np.flatnonzero(g_node == node)  # in stream order
        ns = node_stats[node]
        m_ns, m_ni = g_ns[mine], g_ni[mine]
        rows = int(m_ns.sum())
        width = int(m_ni.max())
        m_keys = keys[mine]
        unique_keys = np.unique(m_keys).tolist()
        t_first = np.empty(mine.shape[0], dtype=np.uint64)
        period = np.empty(mine.shape[0], dtype=np.uint32)
        if len(unique_keys) == 1:
            # the usual case: one shape for the whole recording, no padding, no scatter
            k_ns, k_ni = int(m_ns[0]), int(m_ni[0])
            shape = _shape_of(k_ni, int(m_keys[0]))
            rec = _rows(arr, g_at[mine], _payload_dtype(shape, k_ns))
            t_first[:] = rec["header"]["t_first_us"]
            period[:] = rec["header"]["period_us"]
            accel, gyro, mag = _instants(rec["values"], shape, rows)
            status = np.repeat(rec["status"], k_ns, axis=0)
        else:
            row0 = np.concatenate([[0], np.cumsum(m_ns)[:-1]])
            status = np.zeros((rows, width), dtype=np.uint8)
            accel = np.full((rows, width, AXES), INVALID_SAMPLE, dtype=np.int16)
            gyro = accel.copy()
            mag = accel.copy()
            for key in unique_keys:
                sel = np.flatnonzero(m_keys == key)
                k_ns, k_ni = int(m_ns[sel[0]]), int(m_ni[sel[0]])
                shape = _shape_of(k_ni, key)
                rec = _rows(arr, g_at[mine[sel]], _payload_dtype(shape, k_ns))
                t_first[sel] = rec["header"]["t_first_us"]
                period[sel] = rec["header"]["period_us"]
                a, gy, mg = _instants(rec["values"], shape, sel.shape[0] * k_ns)
                target = (row0[sel][:, None] + np.arange(k_ns)).reshape(-1)
                accel[target, :k_ni] = a
                gyro[target, :k_ni] = gy
                mag[target, :k_ni] = mg
                status[target, :k_ni] = np.repeat(rec["status"], k_ns, axis=0)
        t_first_i = t_first.astype(np.int64)
        period_i = period.astype(np.int64)
        row0 = np.concatenate([[0], np.cumsum(m_ns)[:-1]])
        k_in_frame = np.arange(rows) - np.repeat(row0, m_ns)
        t_us = np.repeat(t_first_i, m_ns) + np.repeat(period_i, m_ns) * k_in_frame
        if int(t_first.max()) < 1 << 62:
            ns.first_us = int(t_first_i.min())
            ns.last_us = int((t_first_i + (m_ns - 1) * period_i).max())
        else:  # absurd device times (a u64 near its top): exact in Python ints, as the stream decoder has them
            ns.first_us = min(t_first.tolist())
            ns.last_us = max(t + (k - 1) * p for t, k, p in zip(t_first.tolist(), m_ns.tolist(), period.tolist()))
        ns.samples = int((m_ns * m_ni).sum())
        ns.instants = rows
        ns.imus = int(m_ni[-1])
        ns.period_us = int(period_i[-1])
        frame_end = np.repeat(start[idx[g[mine]]] + FRAME_OVERHEAD + length[idx[g[mine]]], m_ns)
        results[node] = _NodeResult(
            NodeSamples(node, t_us, np.repeat(g_seq[mine], m_ns).astype(np.uint16), status, accel, gyro, mag,
                        frame_end),
            frames_delivered=int(mine.shape[0]),
        )
    return results


def _shape_of(n_imus: int, key: int) -> SampleShape:
    return sample_shape(n_imus, bytes((key >> slot) & 1 for slot in range(n_imus)))


@lru_cache(maxsize=1024)
def _payload_dtype(shape: SampleShape, n_samples: int) -> np.dtype:
    """A SAMPLES payload of one shape as one packed numpy record (header, status, values)."""
    return np.dtype([
        ("header", SAMPLES_HEADER_DTYPE),
        ("status", np.uint8, (shape.n_imus,)),
        ("values", SAMPLE_VALUE_DTYPE, (n_samples, shape.values_per_instant)),
    ])


def _rows(arr: np.ndarray, at: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The records of ``dtype`` at byte offsets ``at`` copied into one array (one numpy call)."""
    if at.shape[0] == 0:
        return np.zeros(0, dtype=dtype)
    windows = np.lib.stride_tricks.sliding_window_view(arr, dtype.itemsize)
    return np.ascontiguousarray(windows[at]).view(dtype).reshape(-1)


def _instants(values: np.ndarray, shape: SampleShape, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames, n_samples, values_per_instant) wire values -> accel, gyro, mag, each (rows, n_imus, 3)."""
    if shape.six_axis_only:
        rec = values.reshape(rows, shape.n_imus, VALUES_6AXIS)
        return (np.ascontiguousarray(rec[..., 0:AXES]), np.ascontiguousarray(rec[..., AXES:2 * AXES]),
                np.zeros((rows, shape.n_imus, AXES), dtype=np.int16))
    a, g, m = split_values(values.reshape(rows, shape.values_per_instant), shape)
    return np.ascontiguousarray(a), np.ascontiguousarray(g), np.ascontiguousarray(m)
