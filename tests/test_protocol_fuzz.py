"""Property tests of the stream decoder and the bulk path on streams built with known damage:
garbage between frames, bit flips, truncations, duplicated, reordered and lost frames, arbitrary
chunking. Every counter is predicted from what was injected."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import imusic.protocol as P
from imusic.protocol.bulk import decode_samples_bulk

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
GARBAGE_BYTES = bytes(b for b in range(256) if b not in P.SYNC)  # garbage never forms a sync word


@dataclass
class Frame:
    data: bytes
    msg: P.Message


def _random_message(rng: random.Random, node_id: int, seq: int) -> P.Message:
    kind = rng.random()
    if kind < 0.6:
        n_samples, n_imus = rng.randint(1, 4), rng.randint(0, 4)
        status = np.array([rng.choice([0, 0, P.StatusBit.HAS_MAG, P.StatusBit.STALE | P.StatusBit.HAS_MAG, 1]) for _ in range(n_imus)], np.uint8)
        values = np.random.default_rng(rng.getrandbits(32)).integers(-32768, 32768, size=(3, n_samples, n_imus, 3), dtype=np.int16)
        values[2][:, (status & P.StatusBit.HAS_MAG) == 0] = 0
        return P.Samples(node_id, seq, 0, rng.getrandbits(40), 5000, n_samples, n_imus, status, *values)
    if kind < 0.75:
        n = rng.randint(0, 3)
        return P.Status(node_id, seq, 0, rng.getrandbits(40), rng.getrandbits(20), 0, 0, -32768,
                        tuple(rng.getrandbits(16) for _ in range(n)), tuple(rng.getrandbits(16) for _ in range(n)))
    if kind < 0.9:
        return P.Log(node_id, seq, 0, 20, "".join(rng.choice("abcdé ") for _ in range(rng.randint(0, 30))))
    return P.Ack(node_id, seq, 0, rng.getrandbits(16), rng.randint(1, 8))


def make_frames(seed: int, count: int, nodes: int = 2, first_seq: int | None = None) -> list[Frame]:
    """Frames from ``nodes`` nodes, each numbering its frames consecutively; no frame holds the sync
    word anywhere but at its start (so a rejected frame cannot hide a false one)."""
    rng = random.Random(seed)
    next_seq = {n: (rng.getrandbits(16) if first_seq is None else first_seq) for n in range(1, nodes + 1)}
    frames = []
    while len(frames) < count:
        node = rng.randint(1, nodes)
        msg = _random_message(rng, node, next_seq[node])
        data = P.encode(msg)
        if data.find(P.SYNC, 1) >= 0:
            continue  # try other content for the same number
        frames.append(Frame(data, msg))
        next_seq[node] = (next_seq[node] + 1) % 65536
    return frames


def sync_positions(data: bytes) -> list[int]:
    out, p = [], data.find(P.SYNC)
    while p >= 0:
        out.append(p)
        p = data.find(P.SYNC, p + 1)
    return out


def decode(data: bytes, chunks: list[int] | None = None) -> tuple[list, P.StreamDecoder]:
    decoder = P.StreamDecoder()
    out: list = []
    if chunks is None:
        out += decoder.feed(data)
    else:
        at = 0
        for size in chunks:
            out += decoder.feed(data[at:at + size])
            at += size
        out += decoder.feed(data[at:])
    out += decoder.flush()
    return out, decoder


def counters(decoder: P.StreamDecoder) -> tuple[dict, dict]:
    return decoder.stats.as_dict(), {k: v.as_dict() for k, v in decoder.nodes.items()}


def assert_bulk_matches_stream(data: bytes, out: list, decoder: P.StreamDecoder) -> None:
    batch = decode_samples_bulk(data)
    assert batch.stats == decoder.stats
    assert {k: v.as_dict() for k, v in batch.node_stats.items()} == {k: v.as_dict() for k, v in decoder.nodes.items()}
    assert batch.messages == [m for m in out if not (isinstance(m, P.Samples) and not m.flags & P.Flag.HOST)]
    for node_id in set(batch.nodes) | {m.node_id for m in out if isinstance(m, P.Samples)}:
        mine = [m for m in out if isinstance(m, P.Samples) and m.node_id == node_id and not m.flags & P.Flag.HOST]
        got = batch.nodes[node_id]
        width = max(m.n_imus for m in mine)
        assert got.accel.shape == (sum(m.n_samples for m in mine), width, 3)
        assert got.t_us.tolist() == [int(t) for m in mine for t in m.t_us()]
        assert got.seq.tolist() == [m.seq for m in mine for _ in range(m.n_samples)]
        row = 0
        for m in mine:
            rows = slice(row, row + m.n_samples)
            for name in ("accel", "gyro", "mag"):
                block = getattr(got, name)[rows]
                assert np.array_equal(block[:, :m.n_imus], getattr(m, name))
                assert (block[:, m.n_imus:] == P.INVALID_SAMPLE).all()
            assert (got.status[rows, :m.n_imus] == m.status).all() and (got.status[rows, m.n_imus:] == 0).all()
            row += m.n_samples


# --- never raises --------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(0, 600), max_size=8))
def test_random_bytes_never_raise(data, chunks):
    out, decoder = decode(data, chunks)
    s = decoder.stats
    assert s.bytes == len(data)
    assert decoder.pending_bytes == 0
    assert s.garbage_bytes + P.FRAME_OVERHEAD * s.frames <= len(data)
    assert s.messages == len(out) <= s.frames
    assert decode_samples_bulk(data).stats == s


@st.composite
def sync_rich_bytes(draw):
    """Bytes full of sync words and plausible headers, so every branch of the decoder is reached."""
    parts = []
    for _ in range(draw(st.integers(0, 12))):
        choice = draw(st.integers(0, 3))
        if choice == 0:
            parts.append(draw(st.binary(max_size=40)))
        elif choice == 1:
            parts.append(P.SYNC + bytes([draw(st.sampled_from([0, 1, 2])), draw(st.integers(0, 12))]) + draw(st.binary(max_size=60)))
        else:
            # a frame with a right CRC around an arbitrary payload of any type: payload decoders meet junk
            payload = draw(st.binary(max_size=80))
            parts.append(P.encode_frame(draw(st.integers(0, 12)), payload, node_id=draw(st.integers(0, 3)),
                                        seq=draw(st.integers(0, 5)), flags=draw(st.integers(0, 3)),
                                        version=draw(st.sampled_from([1, 1, 1, 2]))))
    return b"".join(parts)


@settings(max_examples=400, deadline=None)
@given(sync_rich_bytes(), st.lists(st.integers(0, 100), max_size=6))
def test_sync_rich_junk_never_raises_and_bulk_agrees(data, chunks):
    out, decoder = decode(data, chunks)
    s = decoder.stats
    # every intact frame ends as exactly one of these
    dropped = sum(n.duplicates for n in decoder.nodes.values())
    bad_in_frames = s.frames - s.version_mismatch - dropped - s.unknown_type - s.messages
    assert 0 <= bad_in_frames <= s.bad_length + s.bad_payload
    assert_bulk_matches_stream(data, out, decoder)


# --- garbage between intact frames ---------------------------------------------------------------

@SETTINGS
@given(st.integers(0, 2**32), st.integers(1, 25), st.data())
def test_garbage_between_frames_is_counted_exactly(seed, count, data):
    frames = make_frames(seed, count)
    rng = random.Random(seed + 1)
    parts, injected = [], 0
    for f in frames + [None]:
        n = data.draw(st.sampled_from([0, 0, 1, 7, 300]))
        junk = bytes(rng.choice(GARBAGE_BYTES) for _ in range(n))
        parts.append(junk)
        injected += n
        if f is not None:
            parts.append(f.data)
    stream = b"".join(parts)
    out, decoder = decode(stream)
    s = decoder.stats
    assert out == [f.msg for f in frames]
    assert (s.garbage_bytes, s.frames, s.messages) == (injected, count, count)
    assert s.crc_errors == s.bad_length == s.truncated == s.bad_payload == 0
    assert all(n.lost_frames == n.duplicates == n.out_of_order == n.seq_resets == 0 for n in decoder.nodes.values())
    assert sum(n.samples for n in decoder.nodes.values()) == sum(f.msg.n_samples * f.msg.n_imus for f in frames if isinstance(f.msg, P.Samples))
    assert_bulk_matches_stream(stream, out, decoder)


# --- bit flips -----------------------------------------------------------------------------------

def _reject_kind(stream: bytes, p: int) -> str | None:
    """What the spec says happens to the damaged frame starting at ``p`` (None: its sync is gone)."""
    if stream[p:p + 2] != P.SYNC:
        return None
    if len(stream) - p < P.HEADER_SIZE:
        return "truncated"
    length = int.from_bytes(stream[p + 8:p + 10], "little")
    if length > P.MAX_PAYLOAD:
        return "bad_length"
    if p + P.FRAME_OVERHEAD + length > len(stream):
        return "truncated"
    return "crc_errors"


def _expected_node_counts(frames: list[Frame], damaged: dict[int, bytes], starts: list[int], stream: bytes):
    """Per node: lost frames and attributed rejections, from which frames were damaged."""
    expected: dict[int, dict[str, int]] = {}
    delivered_seq_idx: dict[int, list[int]] = {}
    for i, f in enumerate(frames):
        node = f.msg.node_id
        if i in damaged:
            kind = _reject_kind(stream, starts[i])
            header_node = damaged[i][5] if len(damaged[i]) > 5 and kind is not None else None
            if kind in ("crc_errors", "bad_length") and header_node in expected:
                expected[header_node][kind] += 1
            continue
        expected.setdefault(node, {"crc_errors": 0, "bad_length": 0, "lost_frames": 0})
        delivered_seq_idx.setdefault(node, []).append(i)
    for node, idx in delivered_seq_idx.items():
        mine = [i for i, f in enumerate(frames) if f.msg.node_id == node]
        first, last = mine.index(idx[0]), mine.index(idx[-1])
        expected[node]["lost_frames"] = (last - first + 1) - len(idx)
    return expected


@SETTINGS
@given(st.integers(0, 2**32), st.integers(2, 20), st.data())
def test_bit_flips_reject_only_the_damaged_frames(seed, count, data):
    frames = make_frames(seed, count, first_seq=data.draw(st.sampled_from([0, 65530, None])))
    flipped = data.draw(st.sets(st.integers(0, count - 1), min_size=1, max_size=max(1, count // 3)))
    damaged: dict[int, bytes] = {}
    for i in flipped:
        raw = bytearray(frames[i].data)
        bit = data.draw(st.integers(0, len(raw) * 8 - 1))
        raw[bit // 8] ^= 1 << (bit % 8)
        damaged[i] = bytes(raw)
    pieces = [damaged.get(i, f.data) for i, f in enumerate(frames)]
    starts = np.cumsum([0] + [len(x) for x in pieces[:-1]]).tolist()
    stream = b"".join(pieces)
    # the flip must not have made a new sync word (then the spec's outcome needs the junk after it)
    assume(sync_positions(stream) == [s for i, s in enumerate(starts) if pieces[i][:2] == P.SYNC])

    out, decoder = decode(stream)
    s = decoder.stats
    kinds = [_reject_kind(stream, starts[i]) for i in sorted(damaged)]
    assert out == [f.msg for i, f in enumerate(frames) if i not in damaged]
    assert s.crc_errors == kinds.count("crc_errors")
    assert s.bad_length == kinds.count("bad_length")
    assert s.truncated == kinds.count("truncated")
    assert s.garbage_bytes == sum(len(damaged[i]) for i in damaged)
    expected = _expected_node_counts(frames, damaged, starts, stream)
    got = {n: {k: getattr(ns, k) for k in ("crc_errors", "bad_length", "lost_frames")} for n, ns in decoder.nodes.items()}
    assert got == expected
    assert_bulk_matches_stream(stream, out, decoder)


# --- truncations ---------------------------------------------------------------------------------

@SETTINGS
@given(st.integers(0, 2**32), st.integers(1, 15), st.data())
def test_truncated_frames_cost_only_themselves(seed, count, data):
    frames = make_frames(seed, count)
    cut = data.draw(st.sets(st.integers(0, count - 1), min_size=1, max_size=max(1, count // 2)))
    pieces, kept = [], []
    rejections = 0
    for i, f in enumerate(frames):
        if i in cut:
            k = data.draw(st.integers(1, len(f.data) - 1))
            pieces.append(f.data[:k])
            rejections += k >= 2  # a lone 0xA5 is no sync word
        else:
            pieces.append(f.data)
            kept.append(f)
    stream = b"".join(pieces)
    decoder = P.StreamDecoder()
    out = decoder.feed(stream)
    assert out == [f.msg for f in kept][:len(out)]  # what is out already is right; the rest may wait
    out += decoder.flush()
    s = decoder.stats
    assert out == [f.msg for f in kept]
    assert s.crc_errors + s.bad_length + s.truncated == rejections
    assert s.garbage_bytes == sum(len(pieces[i]) for i in cut)
    assert_bulk_matches_stream(stream, out, decoder)


# --- duplicates, reordering, loss ----------------------------------------------------------------

def _expected_sequence(order: list[int]) -> tuple[list[int], int, int, int]:
    """Spec outcome for frames arriving in ``order`` (indices of one node's consecutive frames, all
    within the 1024 window): delivered indices, duplicates, out_of_order, lost_frames."""
    delivered, seen, dups, late = [], set(), 0, 0
    for i in order:
        if i in seen:
            dups += 1
            continue
        if delivered and i < max(delivered):
            late += 1
        seen.add(i)
        delivered.append(i)
    first = delivered[0]
    lost = sum(1 for i in range(first, max(delivered) + 1) if i not in seen)
    return delivered, dups, late, lost


@SETTINGS
@given(st.integers(0, 2**32), st.integers(2, 60), st.data())
def test_duplicates_reordering_and_loss_are_accounted(seed, count, data):
    frames = make_frames(seed, count, nodes=1, first_seq=data.draw(st.sampled_from([0, 65500, None])))
    order = list(range(count))
    ops = data.draw(st.lists(st.tuples(st.sampled_from(["drop", "dup", "move"]), st.integers(0, count - 1), st.integers(1, 8)), max_size=10))
    for op, i, shift in ops:
        if i not in order:
            continue
        at = order.index(i)
        if op == "drop" and len(order) > 1:
            order.remove(i)
        elif op == "dup":
            order.insert(min(len(order), at + shift), i)
        elif op == "move":
            order.remove(i)
            order.insert(min(len(order), at + shift), i)
    stream = b"".join(frames[i].data for i in order)
    delivered, dups, late, lost = _expected_sequence(order)
    chunks = data.draw(st.lists(st.integers(0, 200), max_size=5))
    out, decoder = decode(stream, chunks)
    node = decoder.nodes[1]
    assert out == [frames[i].msg for i in delivered]
    assert (node.duplicates, node.out_of_order, node.lost_frames, node.seq_resets) == (dups, late, lost, 0)
    assert node.frames == len(delivered)
    assert decoder.stats.garbage_bytes == 0
    assert_bulk_matches_stream(stream, out, decoder)


# --- chunking ------------------------------------------------------------------------------------

@SETTINGS
@given(st.integers(0, 2**32), st.integers(1, 12), st.lists(st.integers(0, 300), max_size=30), st.data())
def test_any_chunking_gives_the_same_result(seed, count, chunks, data):
    frames = make_frames(seed, count, nodes=3)
    rng = random.Random(seed)
    pieces = []
    for f in frames:
        raw = bytearray(f.data)
        if rng.random() < 0.2:
            raw[rng.randrange(len(raw))] ^= 0x10
        pieces.append(bytes(raw))
        if rng.random() < 0.3:
            pieces.append(rng.randbytes(rng.randint(1, 20)))
    stream = b"".join(pieces)
    whole_out, whole = decode(stream)
    split_out, split = decode(stream, chunks)
    assert split_out == whole_out
    assert counters(split) == counters(whole)
    if len(stream) < 1500:
        byte_out, byte_dec = decode(stream, [1] * len(stream))
        assert byte_out == whole_out and counters(byte_dec) == counters(whole)
    assert_bulk_matches_stream(stream, whole_out, whole)


def test_pending_bytes_wait_for_the_rest_of_a_frame():
    frame = make_frames(3, 1)[0]
    decoder = P.StreamDecoder()
    assert decoder.feed(frame.data[:-1]) == []
    assert decoder.pending_bytes == len(frame.data) - 1
    assert decoder.feed(frame.data[-1:]) == [frame.msg]
    assert decoder.pending_bytes == 0 and decoder.stats.garbage_bytes == 0


def test_bulk_pads_a_node_whose_imu_count_changes():
    frames = []
    for k, n_imus in enumerate([2, 2, 3, 1]):
        status = np.array([P.StatusBit.HAS_MAG] + [0] * (n_imus - 1), np.uint8)
        values = np.full((3, 2, n_imus, 3), k + 1, np.int16)
        values[2][:, 1:] = 0
        frames.append(P.encode(P.Samples(5, k, 0, 1000 * k, 100, 2, n_imus, status, *values)))
    stream = b"".join(frames)
    out, decoder = decode(stream)
    batch = decode_samples_bulk(stream)
    assert batch.nodes[5].accel.shape == (8, 3, 3)
    assert batch.nodes[5].accel[0:2, 2].tolist() == [[P.INVALID_SAMPLE] * 3] * 2
    assert batch.node_stats[5].imus == 1
    assert_bulk_matches_stream(stream, out, decoder)


def test_bulk_keeps_extreme_device_times_exact():
    empty = np.zeros((1, 0, 3), np.int16)
    stream = b"".join(P.encode(P.Samples(1, k, 0, (1 << 64) - 1 - k, 0xFFFFFFFF, 1, 0, np.zeros(0, np.uint8), empty, empty, empty)) for k in range(3))
    out, decoder = decode(stream)
    assert decoder.nodes[1].first_us == (1 << 64) - 3
    assert decode_samples_bulk(stream).node_stats[1].as_dict() == decoder.nodes[1].as_dict()
    assert_bulk_matches_stream(stream, out, decoder)  # the times wrap alike on both paths
