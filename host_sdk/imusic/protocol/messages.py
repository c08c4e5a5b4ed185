# construct's `"name" / subcon` idiom has no type stubs: pyright cannot type the operator.
# pyright: reportOperatorIssue=false
"""The wire layouts of protocol v1 as ``construct`` definitions, one per message.

These are the single definition of every layout: the stream decoder parses the non-SAMPLES
payloads with them, the header and SAMPLES fast paths derive their ``struct`` formats and numpy
dtypes from them (``struct_format``, ``numpy_dtype``), and the encoders build with them.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import numpy as np
from construct import (
    Adapter,
    Array,
    Bytes,
    Check,
    Checksum,
    Const,
    ExprValidator,
    Construct,
    Float32l,
    FormatField,
    GreedyBytes,
    If,
    Int8ul,
    Int16sl,
    Int16ul,
    Int32ul,
    Int64ul,
    PascalString,
    RawCopy,
    Renamed,
    Struct,
    Terminated,
    this,
)

from imusic.protocol.constants import (
    MAX_IMUS,
    MAX_PAYLOAD,
    MAX_SAMPLES_PER_FRAME,
    MAX_STR8,
    SYNC,
    UID_SIZE,
    MsgType,
    StatusBit,
)


class _LenientUtf8(Adapter):
    """UTF-8 text that never fails to decode: the node cuts LOG text at a byte count, which can
    split a multi-byte character."""

    def _decode(self, obj: bytes, context: Any, path: Any) -> str:
        return obj.decode("utf-8", errors="replace")

    def _encode(self, obj: str, context: Any, path: Any) -> bytes:
        return obj.encode("utf-8")


# str8: one u8 byte count (at most 64), then UTF-8 bytes.
Str8 = ExprValidator(PascalString(Int8ul, "utf8"), lambda obj, ctx: len(obj.encode("utf-8")) <= MAX_STR8)

# Bytes 2 .. 9 of a frame (the CRC covers them, the sync word is not part of it).
FrameHeader = Struct(
    "version" / Int8ul,
    "type" / Int8ul,
    "flags" / Int8ul,
    "node_id" / Int8ul,
    "seq" / Int16ul,
    "length" / Int16ul,
)

# A whole frame; the stream decoder uses the header's derived struct format instead, for speed.
Frame = Struct(
    "sync" / Const(SYNC),
    "body" / RawCopy(Struct(
        "header" / FrameHeader,
        Check(this.header.length <= MAX_PAYLOAD),
        "payload" / Bytes(this.header.length),
    )),
    "crc" / Checksum(Int32ul, lambda data: zlib.crc32(data), this.body.data),
)

ImuInfoLayout = Struct(
    "chip" / Int8ul,
    "mag_chip" / Int8ul,
    "bus" / Int8ul,
    "mux_addr" / Int8ul,
    "mux_channel" / Int8ul,
    "addr" / Int8ul,
    "mag_addr" / Int8ul,
    "site" / Str8,
    "accel_range_g" / Int8ul,
    "gyro_range_dps" / Int16ul,
    "mag_range_gauss" / Int8ul,
    "accel_scale" / Float32l,
    "gyro_scale" / Float32l,
    "mag_scale" / Float32l,
)

HelloLayout = Struct(
    "fw_major" / Int8ul,
    "fw_minor" / Int8ul,
    "fw_patch" / Int8ul,
    "protocol_version" / Int8ul,
    "board" / Str8,
    "uid" / Bytes(UID_SIZE),
    "boot_id" / Int32ul,
    "rate_hz" / Int16ul,
    "samples_per_frame" / Int8ul,
    "link" / Int8ul,
    "n_imus" / Int8ul,
    Check(this.n_imus <= MAX_IMUS),
    "imus" / Array(this.n_imus, ImuInfoLayout),
    Terminated,
)

SamplesHeaderLayout = Struct(
    "t_first_us" / Int64ul,
    "period_us" / Int32ul,
    "n_samples" / Int8ul,
    "n_imus" / Int8ul,
    "reserved" / Int16ul,
)


def _imu_has_mag(ctx: Any) -> bool:
    # ctx: one IMU record; ctx._ the payload, whose _index the inner Array sets to this IMU's slot.
    return bool(ctx._.status[ctx._._index] & StatusBit.HAS_MAG)


SamplesLayout = Struct(
    "t_first_us" / Int64ul,
    "period_us" / Int32ul,
    "n_samples" / Int8ul,
    "n_imus" / Int8ul,
    "reserved" / Int16ul,
    Check((this.n_samples >= 1) & (this.n_samples <= MAX_SAMPLES_PER_FRAME)),
    Check(this.n_imus <= MAX_IMUS),
    "status" / Array(this.n_imus, Int8ul),
    # data[k][i]: sample k of IMU slot i, in that order on the wire.
    "data" / Array(this.n_samples, Array(this.n_imus, Struct(
        "accel" / Array(3, Int16sl),
        "gyro" / Array(3, Int16sl),
        "mag" / If(_imu_has_mag, Array(3, Int16sl)),
    ))),
    Terminated,
)

StatusLayout = Struct(
    "uptime_us" / Int64ul,
    "free_heap" / Int32ul,
    "frames_dropped" / Int32ul,
    "ticks_missed" / Int32ul,
    "temp_cdeg" / Int16sl,
    "n_imus" / Int8ul,
    Check(this.n_imus <= MAX_IMUS),
    # interleaved per IMU slot: fifo_overflows[i], i2c_errors[i]
    "imus" / Array(this.n_imus, Struct("fifo_overflows" / Int16ul, "i2c_errors" / Int16ul)),
    Terminated,
)

TimeSyncRequestLayout = Struct(
    "probe_id" / Int32ul,
    "t0_host_us" / Int64ul,
    Terminated,
)

TimeSyncReplyLayout = Struct(
    "probe_id" / Int32ul,
    "t0_host_us" / Int64ul,
    "t1_rx_us" / Int64ul,
    "t2_tx_us" / Int64ul,
    Terminated,
)

CommandLayout = Struct(
    "command" / Int8ul,
    "args" / GreedyBytes,
)

AckLayout = Struct(
    "cmd_seq" / Int16ul,
    "command" / Int8ul,
    Terminated,
)

NackLayout = Struct(
    "cmd_seq" / Int16ul,
    "command" / Int8ul,
    "error" / Int8ul,
    Terminated,
)

LogLayout = Struct(
    "level" / Int8ul,
    "text" / _LenientUtf8(GreedyBytes),
)

# Arguments of the commands that take any (docs/protocol.md, COMMAND table).
SetRateArgs = Struct("rate_hz" / Int16ul, Terminated)
SetRangesArgs = Struct("accel_range_g" / Int8ul, "gyro_range_dps" / Int16ul, "mag_range_gauss" / Int8ul, Terminated)
IdentifyArgs = Struct("duration_ms" / Int16ul, Terminated)

LAYOUTS: dict[MsgType, Construct] = {
    MsgType.HELLO: HelloLayout,
    MsgType.SAMPLES: SamplesLayout,
    MsgType.STATUS: StatusLayout,
    MsgType.TIME_SYNC_REQ: TimeSyncRequestLayout,
    MsgType.TIME_SYNC_REPLY: TimeSyncReplyLayout,
    MsgType.COMMAND: CommandLayout,
    MsgType.ACK: AckLayout,
    MsgType.NACK: NackLayout,
    MsgType.LOG: LogLayout,
}


def _fixed_fields(layout: Struct) -> list[tuple[str, str]]:
    """(name, struct code) of every field of a fixed-size little-endian layout."""
    fields = []
    for sub in layout.subcons:
        name = sub.name
        inner = sub.subcon if isinstance(sub, Renamed) else sub
        if not isinstance(inner, FormatField) or inner.fmtstr[0] != "<":
            raise TypeError(f"field {name!r} is not a fixed little-endian number")
        fields.append((name, inner.fmtstr[1:]))
    return fields


_NUMPY_CODES = {"B": "u1", "b": "i1", "H": "<u2", "h": "<i2", "I": "<u4", "L": "<u4", "i": "<i4", "l": "<i4",
                "Q": "<u8", "q": "<i8", "f": "<f4", "d": "<f8"}


def struct_format(layout: Struct) -> struct.Struct:
    """A ``struct.Struct`` equal to a fixed-size layout of numbers (for the hot paths)."""
    return struct.Struct("<" + "".join(code for _, code in _fixed_fields(layout)))


def numpy_dtype(layout: Struct) -> np.dtype:
    """A packed little-endian numpy structured dtype equal to a fixed-size layout of numbers."""
    return np.dtype([(name, _NUMPY_CODES[code]) for name, code in _fixed_fields(layout)])


HEADER_STRUCT = struct_format(FrameHeader)  # version type flags node_id seq length
FRAME_HEADER_DTYPE = numpy_dtype(FrameHeader)
SAMPLES_HEADER_STRUCT = struct_format(SamplesHeaderLayout)
SAMPLES_HEADER_DTYPE = numpy_dtype(SamplesHeaderLayout)
# One sample value on the wire (the element type of SamplesLayout.data).
SAMPLE_VALUE_DTYPE = np.dtype("<i2")
