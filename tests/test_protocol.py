"""Wire protocol v1: layouts, round trips, the numpy SAMPLES path against the construct definition,
and the decoder's counters on hand-built streams."""

from __future__ import annotations

import zlib
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import imusic.protocol as P
from imusic.protocol.constants import MAX_STR8
from imusic.protocol.bulk import decode_samples_bulk
from imusic.protocol.messages import (
    Frame,
    FrameHeader,
    SAMPLES_HEADER_DTYPE,
    SamplesHeaderLayout,
    SamplesLayout,
    SetRangesArgs,
)

# --- strategies for every message --------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, (1 << 64) - 1)
i16 = st.integers(-32768, 32767)
f32 = st.floats(width=32, allow_nan=False)
str8 = st.text(max_size=20).filter(lambda s: len(s.encode()) <= MAX_STR8)
frame_ids = dict(node_id=u8, seq=u16, flags=u8)

imu_infos = st.builds(P.ImuInfo, chip=u8, mag_chip=u8, bus=u8, mux_addr=u8, mux_channel=u8, addr=u8, mag_addr=u8,
                      site=str8, accel_range_g=u8, gyro_range_dps=u16, mag_range_gauss=u8,
                      accel_scale=f32, gyro_scale=f32, mag_scale=f32)


@st.composite
def samples_messages(draw, node_id=u8, seq=u16, flags=u8, max_imus=P.MAX_IMUS, max_samples=8):
    n_samples = draw(st.integers(1, max_samples))
    n_imus = draw(st.integers(0, max_imus))
    status = np.array(draw(st.lists(u8, min_size=n_imus, max_size=n_imus)), dtype=np.uint8)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    accel, gyro, mag = rng.integers(-32768, 32768, size=(3, n_samples, n_imus, 3), dtype=np.int16)
    mag[:, (status & P.StatusBit.HAS_MAG) == 0] = 0
    return P.Samples(draw(node_id), draw(seq), draw(flags), draw(st.integers(0, (1 << 62))), draw(u32),
                     n_samples, n_imus, status, accel, gyro, mag)


messages = st.one_of(
    st.builds(P.Hello, **frame_ids, fw_major=u8, fw_minor=u8, fw_patch=u8, protocol_version=u8, board=str8,
              uid=st.binary(min_size=8, max_size=8), boot_id=st.integers(0, 2**32 - 1), rate_hz=u16, samples_per_frame=u8, link=u8,
              imus=st.lists(imu_infos, max_size=4).map(tuple)),
    samples_messages(),
    st.integers(0, P.MAX_IMUS).flatmap(lambda n: st.builds(
        P.Status, **frame_ids, uptime_us=u64, free_heap=u32, frames_dropped=u32, ticks_missed=u32, temp_cdeg=i16,
        fifo_overflows=st.lists(u16, min_size=n, max_size=n).map(tuple),
        i2c_errors=st.lists(u16, min_size=n, max_size=n).map(tuple))),
    st.builds(P.TimeSyncRequest, **frame_ids, probe_id=u32, t0_host_us=u64),
    st.builds(P.TimeSyncReply, **frame_ids, probe_id=u32, t0_host_us=u64, t1_rx_us=u64, t2_tx_us=u64),
    st.builds(P.Command, **frame_ids, command=u8, args=st.binary(max_size=16)),
    st.builds(P.Ack, **frame_ids, cmd_seq=u16, command=u8),
    st.builds(P.Nack, **frame_ids, cmd_seq=u16, command=u8, error=u8),
    st.builds(P.Log, **frame_ids, level=u8, text=st.text(max_size=60)),
)


def decode_all(data: bytes) -> tuple[list, P.StreamDecoder]:
    decoder = P.StreamDecoder()
    out = decoder.feed(data)
    out += decoder.flush()
    return out, decoder


# --- constants and layouts -----------------------------------------------------------------------

def test_crc_is_zlib_crc32_with_the_standard_check_value():
    assert zlib.crc32(b"123456789") == 0xCBF43926


def test_frame_constants_agree_with_the_layouts():
    assert P.SYNC == b"\xa5\x5a"
    assert P.HEADER_SIZE == len(P.SYNC) + FrameHeader.sizeof() == 10
    assert P.FRAME_OVERHEAD == 14
    assert SamplesHeaderLayout.sizeof() == SAMPLES_HEADER_DTYPE.itemsize == P.constants.SAMPLES_HEADER_SIZE
    assert [int(c) for c in P.Cmd] == list(range(1, 9))
    assert P.StatusBit.HAS_MAG == 0x80 and P.StatusBit.REINIT == 0x20


def test_frame_bytes_follow_the_spec_offsets():
    frame = P.encode(P.Ack(node_id=7, seq=0x1234, flags=0, cmd_seq=0xBEEF, command=P.Cmd.SET_RATE))
    assert frame[:2] == P.SYNC
    assert frame[2:10] == bytes([1, P.MsgType.ACK, 0, 7, 0x34, 0x12, 3, 0])
    assert frame[10:13] == bytes([0xEF, 0xBE, 3])
    assert frame[13:] == zlib.crc32(frame[2:13]).to_bytes(4, "little")
    parsed = Frame.parse(frame)  # the construct definition of a whole frame agrees
    assert parsed.body.value.header.seq == 0x1234 and parsed.body.value.payload == frame[10:13]


def test_spec_wire_cost_example():
    # docs/protocol.md: 11 six-axis IMUs x 4 samples = 569 bytes per frame
    zeros = np.zeros((4, 11, 3), dtype=np.int16)
    payload = P.encode_samples_payload(0, 5000, np.zeros(11, np.uint8), zeros, zeros)
    assert len(P.encode_frame(P.MsgType.SAMPLES, payload, node_id=1, seq=0)) == 569


def test_host_encoders():
    frame = P.encode_command(3, 9, P.Cmd.SET_RANGES, SetRangesArgs.build(dict(accel_range_g=8, gyro_range_dps=1000, mag_range_gauss=8)))
    (cmd,), _ = decode_all(frame)
    assert cmd == P.Command(node_id=3, seq=9, flags=P.Flag.HOST, command=P.Cmd.SET_RANGES, args=bytes([8, 0xE8, 0x03, 8]))
    (req,), _ = decode_all(P.encode_time_sync_request(255, 10, probe_id=77, t0_host_us=123456789012))
    assert req == P.TimeSyncRequest(node_id=255, seq=10, flags=P.Flag.HOST, probe_id=77, t0_host_us=123456789012)


def test_encoders_refuse_what_the_wire_cannot_carry():
    with pytest.raises(ValueError):
        P.encode_frame(P.MsgType.LOG, bytes(P.MAX_PAYLOAD + 1), node_id=1, seq=0)
    with pytest.raises(ValueError):
        P.encode(P.Hello(1, 0, 0, 1, 0, 0, 1, "x" * 65, bytes(8), 0, 200, 4, 0, ()))
    with pytest.raises(ValueError):
        P.encode(P.Status(1, 0, 0, 0, 0, 0, 0, 0, (1, 2), (3,)))


# --- round trips ---------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_every_message_round_trips(msg):
    frame = P.encode(msg)
    out, decoder = decode_all(frame)
    assert out == [msg]
    assert decoder.stats.frames == 1 and decoder.stats.garbage_bytes == 0


@settings(max_examples=150, deadline=None)
@given(samples_messages())
def test_numpy_samples_path_matches_the_construct_definition(msg):
    payload = P.encode(msg)[P.HEADER_SIZE:-4]
    parsed = SamplesLayout.parse(payload)
    assert (parsed.t_first_us, parsed.period_us, parsed.n_samples, parsed.n_imus) == (msg.t_first_us, msg.period_us, msg.n_samples, msg.n_imus)
    assert list(parsed.status) == msg.status.tolist()
    for k in range(msg.n_samples):
        for i in range(msg.n_imus):
            rec = parsed.data[k][i]
            assert list(rec.accel) == msg.accel[k, i].tolist()
            assert list(rec.gyro) == msg.gyro[k, i].tolist()
            assert (list(rec.mag) if rec.mag is not None else [0, 0, 0]) == msg.mag[k, i].tolist()
    # and the construct definition builds the same bytes as the numpy encoder
    assert SamplesLayout.build(parsed) == payload


def test_samples_arrays_and_times():
    rng = np.random.default_rng(0)
    accel, gyro, mag = rng.integers(-100, 100, size=(3, 4, 2, 3), dtype=np.int16)
    status = np.array([P.StatusBit.HAS_MAG | P.StatusBit.STALE, 0], dtype=np.uint8)
    mag[:, 1] = 0
    msg = P.Samples(1, 0, 0, 1_000_000, 5000, 4, 2, status, accel, gyro, mag)
    (out,), _ = decode_all(P.encode(msg))
    assert out.accel.dtype == np.int16 and out.accel.shape == (4, 2, 3)
    assert out.status.dtype == np.uint8 and out.status.shape == (2,)
    assert out.t_us().tolist() == [1_000_000, 1_005_000, 1_010_000, 1_015_000]
    assert out.has_mag.tolist() == [True, False]
    assert out == msg and out != replace(msg, t_first_us=1)


# --- payloads that do not fit their layout are counted, not raised -------------------------------

def _frame(msg_type, payload, node_id=1, seq=0, flags=0, version=P.PROTOCOL_VERSION):
    return P.encode_frame(msg_type, payload, node_id=node_id, seq=seq, flags=flags, version=version)


def test_malformed_payloads_are_counted_by_kind():
    good = P.encode(P.Ack(1, 0, 0, 5, 1))
    samples = P.encode(P.Samples(1, 0, 0, 0, 5000, 1, 1, np.zeros(1, np.uint8), *np.zeros((3, 1, 1, 3), np.int16)))
    stream = b"".join([
        good,
        _frame(P.MsgType.ACK, b"\x05\x00", seq=1),  # one byte short: bad length
        _frame(P.MsgType.ACK, b"\x05\x00\x01\x00", seq=2),  # one byte over: bad length
        _frame(P.MsgType.SAMPLES, samples[P.HEADER_SIZE:-4] + b"\x00\x00", seq=3),  # size off the formula
        _frame(P.MsgType.SAMPLES, bytes(16), seq=4),  # n_samples 0: breaks the layout
        _frame(P.MsgType.HELLO, bytes([1, 0, 0, 1, 70]) + b"x" * 70 + bytes(14), seq=5),  # str8 over 64 bytes
        _frame(P.MsgType.HELLO, bytes([1, 0, 0, 1, 2]) + b"\xff\xfe" + bytes(13), seq=6),  # not UTF-8
        _frame(0x42, b"future", seq=7),  # unknown type
        _frame(P.MsgType.ACK, b"\x05\x00\x01", seq=8, version=2),  # other protocol version
        _frame(P.MsgType.LOG, bytes([20]) + "é".encode()[:1], seq=9),  # text cut mid-character: still a LOG
    ])
    out, decoder = decode_all(stream)
    s, node = decoder.stats, decoder.nodes[1]
    assert [type(m).__name__ for m in out] == ["Ack", "Log"]
    assert out[1].text == "\ufffd"
    assert (s.frames, s.bad_length, s.bad_payload, s.unknown_type, s.version_mismatch) == (10, 3, 3, 1, 1)
    assert (node.frames, node.bad_length, node.bad_payload, node.unknown_type) == (9, 3, 3, 1)
    assert s.garbage_bytes == 0 and s.crc_errors == 0
    assert node.lost_frames == 1  # seq 8 was never seen by the node's accounting (other version)
    assert decode_samples_bulk(stream).stats == s


def test_header_length_over_the_maximum_is_a_bad_length_and_the_next_frame_survives():
    bad = bytearray(P.encode(P.Ack(1, 0, 0, 5, 1)))
    bad[8:10] = (P.MAX_PAYLOAD + 1).to_bytes(2, "little")
    good = P.encode(P.Ack(1, 1, 0, 6, 1))
    out, decoder = decode_all(bytes(bad) + good)
    assert out == [P.Ack(1, 1, 0, 6, 1)]
    assert decoder.stats.bad_length == 1 and decoder.stats.garbage_bytes == len(bad)


def test_host_frames_are_decoded_but_stay_out_of_node_accounting():
    stream = P.encode_command(1, 500, P.Cmd.START) + P.encode(P.Ack(1, 0, 0, 500, P.Cmd.START)) + P.encode_command(1, 501, P.Cmd.STOP) + P.encode(P.Ack(1, 1, 0, 501, P.Cmd.STOP))
    out, decoder = decode_all(stream)
    assert len(out) == 4 and decoder.stats.host_frames == 2
    assert decoder.nodes[1].frames == 2 and decoder.nodes[1].lost_frames == 0


# --- sequence accounting ---------------------------------------------------------------------------

def _acks(node_id, seqs, salt=0):
    return [P.encode(P.Ack(node_id, s, 0, (s + salt) & 0xFFFF, 1)) for s in seqs]


def test_gap_then_late_frame_then_duplicate():
    f = _acks(1, range(6))
    out, d = decode_all(b"".join([f[0], f[1], f[3], f[4], f[2], f[4], f[5]]))
    n = d.nodes[1]
    assert [m.seq for m in out] == [0, 1, 3, 4, 2, 5]
    assert (n.lost_frames, n.out_of_order, n.duplicates, n.seq_resets, n.frames) == (0, 1, 1, 0, 6)


def test_lost_frames_across_the_wrap():
    out, d = decode_all(b"".join(_acks(2, [65533, 65534, 1, 2])))
    assert d.nodes[2].lost_frames == 2 and len(out) == 4  # 65535 and 0 missing


def test_restart_by_a_jump_back_and_by_reused_numbers():
    # jump back by more than 1024: a restart
    _, d = decode_all(b"".join(_acks(1, [5000, 5001, 0, 1])))
    assert (d.nodes[1].seq_resets, d.nodes[1].lost_frames, d.nodes[1].duplicates) == (1, 0, 0)
    # a node that reboots early reuses numbers with new content: a restart, not duplicates
    _, d = decode_all(b"".join(_acks(1, range(10)) + _acks(1, range(3), salt=100)))
    assert (d.nodes[1].seq_resets, d.nodes[1].duplicates, d.nodes[1].frames) == (1, 0, 13)


def test_frames_per_node_are_accounted_separately():
    a, b = _acks(1, range(4)), _acks(2, [10, 12])
    out, d = decode_all(b"".join([a[0], b[0], a[1], a[3], b[1]]))
    assert (d.nodes[1].lost_frames, d.nodes[2].lost_frames) == (1, 1)
    assert d.nodes[1].frames == 3 and d.nodes[2].frames == 2


def test_sample_counts_times_and_rate():
    zeros = np.zeros((4, 3, 3), np.int16)
    frames = [P.encode(P.Samples(1, k, 0, 10_000 + 20_000 * k, 5000, 4, 3, np.zeros(3, np.uint8), zeros, zeros, zeros)) for k in range(10)]
    _, d = decode_all(b"".join(frames))
    n = d.nodes[1]
    assert (n.samples, n.imus, n.first_us, n.last_us) == (120, 3, 10_000, 10_000 + 20_000 * 9 + 15_000)
    assert n.rate_hz == pytest.approx(200.0)
