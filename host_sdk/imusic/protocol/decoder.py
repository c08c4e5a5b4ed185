"""Stream decoder: bytes in any chunking -> messages, with exact counters.

Framing (docs/protocol.md): look for the sync word, read the header, reject ``length > 4096``
(``bad_length``), wait for the whole frame, check the CRC (``crc_errors``). After any rejection the
search resumes right after the rejected sync word, so a corrupt or truncated frame never hides
the intact frame behind it.

Counters (``DecoderStats``), all exact:

- ``bytes``: every byte fed.
- ``frames``: intact frames: sync, ``length <= 4096``, whole, CRC right. Counted before any look at
  version, type or payload.
- ``garbage_bytes``: every fed byte that is not part of an intact frame. This includes the bytes
  of frames rejected for their CRC, their length or truncation. So at any time
  ``bytes == garbage_bytes + (bytes of intact frames) + pending_bytes``, where ``pending_bytes``
  are the bytes held back waiting for more input (a partial frame, or a last ``0xA5``); ``flush()``
  settles them.
- ``crc_errors``, ``bad_length`` (header length over 4096, or an intact frame whose payload size
  does not fit its type's layout), ``truncated`` (a frame still incomplete at ``flush()``),
  ``bad_payload`` (an intact frame of the right size whose content breaks its layout: a count out of
  range, a bad string), ``unknown_type``, ``version_mismatch`` (intact, but not version 1: not
  decoded, no sequence accounting), ``host_frames`` (intact frames with the ``HOST`` flag: decoded and
  returned, but outside every node's sequence accounting, since the host numbers its own frames),
  ``messages`` (messages returned).

Per node (``nodes[node_id]``, created by its first intact version-1 node-to-host frame): ``frames``
(its intact frames, duplicates excluded), ``samples`` (IMU-samples delivered: one IMU at one
instant), ``imus`` (IMU slots of its latest SAMPLES), ``lost_frames``, ``duplicates``,
``out_of_order``, ``seq_resets`` (sequence rules below), ``first_us``/``last_us`` (earliest first and
latest last sample time of its SAMPLES), and its share of ``crc_errors``/``bad_length``/
``unknown_type``/``bad_payload``. A rejected frame is attributed to the node id in its header only when
that node is already known, so noise never invents nodes.

Sequence rules, per node, on ``d = (seq - last) mod 65536`` where ``last`` is the highest seq seen:
``1 <= d < 32768`` is a step forward that counts ``d - 1`` lost frames; a frame up to 1024 behind
that fills a counted gap takes one off ``lost_frames`` and counts ``out_of_order``; one up to 1024
behind that was received before is an exact repeat (same seq and same CRC: counted in
``duplicates`` and dropped) or, with a different CRC, a restart of the node (``seq_resets``); one up
to 1024 behind that was neither seen nor counted lost (it predates the first frame seen) counts
``out_of_order``; anything further behind is a restart (``seq_resets``).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

import numpy as np
from construct import StreamError, TerminatedError

from imusic.protocol.constants import (
    CRC_SIZE,
    FRAME_OVERHEAD,
    HEADER_SIZE,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    SAMPLES_HEADER_SIZE,
    SEQ_MODULO,
    SEQ_REORDER_WINDOW,
    SYNC,
    Flag,
    MsgType,
)
from imusic.protocol.messages import HEADER_STRUCT, LAYOUTS, SAMPLES_HEADER_STRUCT
from imusic.protocol.records import (
    Ack,
    Command,
    Hello,
    ImuInfo,
    Log,
    Message,
    Nack,
    Samples,
    Status,
    TimeSyncReply,
    TimeSyncRequest,
)
from imusic.protocol.samples import HAS_MAG_TABLE, sample_shape, shape_error, split_values, values_view

_CRC_STRUCT = struct.Struct("<I")
_SYNC_FIRST = SYNC[0]
_HOST = int(Flag.HOST)
_SAMPLES = int(MsgType.SAMPLES)
_HALF_SEQ = SEQ_MODULO // 2


@dataclass
class DecoderStats:
    """Counters over everything fed; see the module docstring for their exact meaning."""

    bytes: int = 0
    frames: int = 0
    messages: int = 0
    garbage_bytes: int = 0
    crc_errors: int = 0
    bad_length: int = 0
    truncated: int = 0
    bad_payload: int = 0
    unknown_type: int = 0
    version_mismatch: int = 0
    host_frames: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class NodeStats:
    """Counters of one node (node-to-host frames only); see the module docstring."""

    frames: int = 0
    samples: int = 0
    imus: int = 0
    crc_errors: int = 0
    bad_length: int = 0
    bad_payload: int = 0
    unknown_type: int = 0
    lost_frames: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    seq_resets: int = 0
    first_us: int | None = None
    last_us: int | None = None
    instants: int = 0  # sample instants delivered (samples per IMU)
    period_us: int = 0  # of the latest SAMPLES
    # sequence tracking state
    _last_seq: int = field(default=-1, repr=False, compare=False)
    _crc_by_seq: dict[int, int] = field(default_factory=dict, repr=False, compare=False)
    _missing: set[int] = field(default_factory=set, repr=False, compare=False)

    @property
    def rate_hz(self) -> float:
        """Sample instants received per second of device time (the nominal rate when nothing is lost)."""
        if self.first_us is None or self.last_us is None or self.instants == 0:
            return 0.0
        span_us = self.last_us - self.first_us + self.period_us
        return self.instants * 1e6 / span_us if span_us > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        d["rate_hz"] = self.rate_hz
        return d

    def accept_seq(self, seq: int, crc: int) -> bool:
        """Sequence accounting for one intact frame; False for an exact repeat (to be dropped)."""
        last = self._last_seq
        if last < 0:
            self._last_seq = seq
            self._crc_by_seq[seq] = crc
            return True
        d = (seq - last) % SEQ_MODULO
        if d == 1:  # the common case
            self._advance(last, seq, 1)
            self._crc_by_seq[seq] = crc
            return True
        if 0 < d < _HALF_SEQ:
            self.lost_frames += d - 1
            self._advance(last, seq, d)
            self._crc_by_seq[seq] = crc
            return True
        if (SEQ_MODULO - d) % SEQ_MODULO <= SEQ_REORDER_WINDOW:  # d == 0 or up to 1024 behind
            seen = self._crc_by_seq.get(seq)
            if seen is not None:
                if seen == crc:
                    self.duplicates += 1
                    return False
                self._restart(seq, crc)  # same number, other content: the node started over
                return True
            if seq in self._missing:
                self._missing.discard(seq)
                self.lost_frames -= 1
            self.out_of_order += 1
            self._crc_by_seq[seq] = crc
            return True
        self._restart(seq, crc)
        return True

    def _advance(self, last: int, seq: int, d: int) -> None:
        crcs, missing = self._crc_by_seq, self._missing
        if d > SEQ_REORDER_WINDOW:
            crcs.clear()
            missing.clear()
            gap_from = d - SEQ_REORDER_WINDOW
        else:
            # forget what falls out of the window behind the new last
            for k in range(last - SEQ_REORDER_WINDOW, last - SEQ_REORDER_WINDOW + d):
                k %= SEQ_MODULO
                crcs.pop(k, None)
                missing.discard(k)
            gap_from = 1
        for k in range(gap_from, d):
            missing.add((last + k) % SEQ_MODULO)
        self._last_seq = seq

    def _restart(self, seq: int, crc: int) -> None:
        self.seq_resets += 1
        self._crc_by_seq.clear()
        self._missing.clear()
        self._last_seq = seq
        self._crc_by_seq[seq] = crc

    def add_samples(self, t_first_us: int, period_us: int, n_samples: int, n_imus: int) -> None:
        t_last_us = t_first_us + (n_samples - 1) * period_us
        if self.first_us is None or t_first_us < self.first_us:
            self.first_us = t_first_us
        if self.last_us is None or t_last_us > self.last_us:
            self.last_us = t_last_us
        self.samples += n_samples * n_imus
        self.instants += n_samples
        self.imus = n_imus
        self.period_us = period_us


class PayloadError(Exception):
    """A payload that does not match its type's layout; ``bad_length`` tells which counter."""

    def __init__(self, bad_length: bool) -> None:
        super().__init__("payload size does not fit the layout" if bad_length else "payload breaks the layout")
        self.bad_length = bad_length


def _compiled(layout: Any) -> Any:
    # Measured (construct 2.10.70, one core): HELLO with 11 IMUs 247 -> 69 us per parse compiled,
    # STATUS 85 -> 17 us, ACK 7.9 -> 2.5 us. SAMPLES never goes through construct here (numpy path),
    # and the frame header uses HEADER_STRUCT (0.15 us against 3.0 us for the compiled FrameHeader).
    try:
        return layout.compile()
    except Exception:  # layouts with lambdas (If, validators) stay interpreted
        return layout


_PARSERS: dict[int, Any] = {t: _compiled(layout) for t, layout in LAYOUTS.items() if t != MsgType.SAMPLES}


def _imu_info(c: Any) -> ImuInfo:
    return ImuInfo(c.chip, c.mag_chip, c.bus, c.mux_addr, c.mux_channel, c.addr, c.mag_addr, c.site,
                   c.accel_range_g, c.gyro_range_dps, c.mag_range_gauss, c.accel_scale, c.gyro_scale, c.mag_scale)


_BUILDERS: dict[int, Callable[[int, int, int, Any], Message]] = {
    MsgType.HELLO: lambda n, s, f, c: Hello(
        n, s, f, c.fw_major, c.fw_minor, c.fw_patch, c.protocol_version, c.board, bytes(c.uid), c.boot_id, c.rate_hz,
        c.samples_per_frame, c.link, tuple(_imu_info(i) for i in c.imus)),
    MsgType.STATUS: lambda n, s, f, c: Status(
        n, s, f, c.uptime_us, c.free_heap, c.frames_dropped, c.ticks_missed, c.temp_cdeg,
        tuple(i.fifo_overflows for i in c.imus), tuple(i.i2c_errors for i in c.imus)),
    MsgType.TIME_SYNC_REQ: lambda n, s, f, c: TimeSyncRequest(n, s, f, c.probe_id, c.t0_host_us),
    MsgType.TIME_SYNC_REPLY: lambda n, s, f, c: TimeSyncReply(n, s, f, c.probe_id, c.t0_host_us, c.t1_rx_us, c.t2_tx_us),
    MsgType.COMMAND: lambda n, s, f, c: Command(n, s, f, c.command, bytes(c.args)),
    MsgType.ACK: lambda n, s, f, c: Ack(n, s, f, c.cmd_seq, c.command),
    MsgType.NACK: lambda n, s, f, c: Nack(n, s, f, c.cmd_seq, c.command, c.error),
    MsgType.LOG: lambda n, s, f, c: Log(n, s, f, c.level, c.text),
}

KNOWN_TYPES = frozenset(int(t) for t in MsgType)


def decode_samples(node_id: int, seq: int, flags: int, payload: bytes) -> Samples:
    """A SAMPLES payload -> ``Samples`` (numpy path); ``PayloadError`` when it breaks the layout."""
    if len(payload) < SAMPLES_HEADER_SIZE:
        raise PayloadError(bad_length=True)
    t_first_us, period_us, n_samples, n_imus, _reserved = SAMPLES_HEADER_STRUCT.unpack_from(payload)
    if shape_error(n_samples, n_imus):
        raise PayloadError(bad_length=False)
    status_bytes = payload[SAMPLES_HEADER_SIZE:SAMPLES_HEADER_SIZE + n_imus]
    if len(status_bytes) < n_imus:
        raise PayloadError(bad_length=True)
    shape = sample_shape(n_imus, status_bytes.translate(HAS_MAG_TABLE))
    if len(payload) != shape.payload_size(n_samples):
        raise PayloadError(bad_length=True)
    accel, gyro, mag = split_values(values_view(payload, n_samples, shape), shape)
    status = np.frombuffer(payload, dtype=np.uint8, count=n_imus, offset=SAMPLES_HEADER_SIZE)
    return Samples(node_id, seq, flags, t_first_us, period_us, n_samples, n_imus, status, accel, gyro, mag)


def decode_payload(msg_type: int, node_id: int, seq: int, flags: int, payload: bytes) -> Message:
    """One payload -> its message. ``PayloadError`` when it does not match its layout, ``KeyError`` for
    an unknown type. Never anything else, whatever the bytes."""
    if msg_type == _SAMPLES:
        return decode_samples(node_id, seq, flags, payload)
    builder = _BUILDERS[msg_type]
    try:
        parsed = _PARSERS[msg_type].parse(payload)
    except (StreamError, TerminatedError, struct.error) as exc:
        # ran out of bytes (struct.error from the compiled parsers), or bytes left over
        raise PayloadError(bad_length=True) from exc
    except Exception as exc:  # ConstructError, UnicodeDecodeError, ...: any other misfit of the layout
        raise PayloadError(bad_length=False) from exc
    return builder(node_id, seq, flags, parsed)


class StreamDecoder:
    """Incremental decoder of one byte stream (a serial port, a file, a stream of datagrams).

    ``feed(data)`` returns the messages completed by ``data``; the result does not depend on how the
    stream is cut into chunks. ``flush()`` ends the stream: a frame still incomplete is counted as
    ``truncated`` and whatever intact frames its bytes hid are decoded. ``feed`` never raises.
    """

    def __init__(self) -> None:
        self.stats = DecoderStats()
        self.nodes: dict[int, NodeStats] = {}
        self._buf = bytearray()

    @property
    def pending_bytes(self) -> int:
        """Bytes held back until more input decides them."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        self.stats.bytes += len(data)
        self._buf += data
        return self._scan(final=False)

    def flush(self) -> list[Message]:
        return self._scan(final=True)

    def _scan(self, final: bool) -> list[Message]:
        out: list[Message] = []
        buf = self._buf
        n = len(buf)
        stats = self.stats
        nodes = self.nodes
        pos = 0
        garbage = 0
        unpack_header = HEADER_STRUCT.unpack_from
        unpack_crc = _CRC_STRUCT.unpack_from
        crc32 = zlib.crc32
        view = memoryview(buf)
        try:
            while True:
                p = buf.find(SYNC, pos)
                if p < 0:
                    # a last 0xA5 may be the first half of a sync word
                    keep = 1 if (not final and n > pos and buf[n - 1] == _SYNC_FIRST) else 0
                    garbage += n - keep - pos
                    pos = n - keep
                    break
                garbage += p - pos
                pos = p
                if n - p < HEADER_SIZE:
                    if not final:
                        break
                    stats.truncated += 1
                    garbage += 2
                    pos = p + 2
                    continue
                version, msg_type, flags, node_id, seq, length = unpack_header(buf, p + 2)
                if length > MAX_PAYLOAD:
                    stats.bad_length += 1
                    if node_id in nodes:
                        nodes[node_id].bad_length += 1
                    garbage += 2
                    pos = p + 2
                    continue
                end = p + FRAME_OVERHEAD + length
                if end > n:
                    if not final:
                        break
                    stats.truncated += 1
                    garbage += 2
                    pos = p + 2
                    continue
                crc = crc32(view[p + 2:end - CRC_SIZE])
                if crc != unpack_crc(buf, end - CRC_SIZE)[0]:
                    stats.crc_errors += 1
                    if node_id in nodes:
                        nodes[node_id].crc_errors += 1
                    garbage += 2
                    pos = p + 2
                    continue
                stats.frames += 1
                pos = end
                if version != PROTOCOL_VERSION:
                    stats.version_mismatch += 1
                    continue
                payload = bytes(view[p + HEADER_SIZE:end - CRC_SIZE])
                if flags & _HOST:
                    stats.host_frames += 1
                    node = None
                else:
                    node = nodes.get(node_id)
                    if node is None:
                        node = nodes[node_id] = NodeStats()
                    if not node.accept_seq(seq, crc):
                        continue
                    node.frames += 1
                if msg_type not in KNOWN_TYPES:
                    stats.unknown_type += 1
                    if node is not None:
                        node.unknown_type += 1
                    continue
                try:
                    msg = decode_payload(msg_type, node_id, seq, flags, payload)
                except PayloadError as exc:
                    if exc.bad_length:
                        stats.bad_length += 1
                        if node is not None:
                            node.bad_length += 1
                    else:
                        stats.bad_payload += 1
                        if node is not None:
                            node.bad_payload += 1
                    continue
                if node is not None and msg_type == _SAMPLES:
                    node.add_samples(msg.t_first_us, msg.period_us, msg.n_samples, msg.n_imus)  # type: ignore[union-attr]
                out.append(msg)
        finally:
            view.release()
        stats.garbage_bytes += garbage
        stats.messages += len(out)
        del buf[:pos]
        return out
