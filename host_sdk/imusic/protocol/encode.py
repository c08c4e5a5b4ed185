"""Encoders: messages -> frame bytes. The host sends COMMAND and TIME_SYNC_REQ; tests and the
emulation tooling build every other type too. Bad arguments raise ``ValueError`` (these are
programmer input, not wire bytes)."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
from construct import ConstructError

from imusic.protocol.constants import (
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    SEQ_MODULO,
    SYNC,
    Flag,
)
from imusic.protocol.messages import (
    HEADER_STRUCT,
    LAYOUTS,
    SAMPLES_HEADER_STRUCT,
    SAMPLE_VALUE_DTYPE,
    FrameHeader,
)
from imusic.protocol.records import (
    Ack,
    Command,
    Hello,
    Log,
    Message,
    Nack,
    Samples,
    Status,
    TimeSyncReply,
    TimeSyncRequest,
)
from imusic.protocol.samples import HAS_MAG_TABLE, sample_shape, shape_error

assert HEADER_STRUCT.size == FrameHeader.sizeof()


def encode_frame(msg_type: int, payload: bytes, *, node_id: int, seq: int, flags: int = 0, version: int = PROTOCOL_VERSION) -> bytes:
    """Sync, header, payload and CRC-32 around ``payload``. ``version`` exists for tests of other versions."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    if not (0 <= seq < SEQ_MODULO):
        raise ValueError(f"seq {seq} out of range 0..65535")
    body = HEADER_STRUCT.pack(version, msg_type, flags, node_id, seq, len(payload)) + bytes(payload)
    return SYNC + body + zlib.crc32(body).to_bytes(4, "little")


def encode_command(node_id: int, seq: int, command: int, args: bytes = b"") -> bytes:
    """A COMMAND frame from the host (flag ``HOST``)."""
    return encode(Command(node_id, seq, int(Flag.HOST), command, bytes(args)))


def encode_time_sync_request(node_id: int, seq: int, probe_id: int, t0_host_us: int) -> bytes:
    """A TIME_SYNC_REQ frame from the host (flag ``HOST``)."""
    return encode(TimeSyncRequest(node_id, seq, int(Flag.HOST), probe_id, t0_host_us))


def encode_samples_payload(t_first_us: int, period_us: int, status: Any, accel: Any, gyro: Any, mag: Any = None) -> bytes:
    """A SAMPLES payload from arrays: ``status`` (n_imus,), ``accel``/``gyro``/``mag`` (n_samples, n_imus, 3).

    ``mag`` values are written only for IMUs whose status has ``HAS_MAG``.
    """
    status_u8 = np.asarray(status, dtype=np.uint8).reshape(-1)
    accel_a = np.asarray(accel)
    n_samples, n_imus = int(accel_a.shape[0]), int(accel_a.shape[1])
    if status_u8.shape != (n_imus,) or accel_a.shape != (n_samples, n_imus, 3) or np.shape(gyro) != accel_a.shape:
        raise ValueError("status must be (n_imus,), accel and gyro (n_samples, n_imus, 3)")
    if shape_error(n_samples, n_imus):
        raise ValueError(f"n_samples {n_samples} or n_imus {n_imus} out of range")
    mag_a = np.zeros_like(accel_a) if mag is None else np.asarray(mag)
    if mag_a.shape != accel_a.shape:
        raise ValueError("mag must be (n_samples, n_imus, 3)")
    status_bytes = status_u8.tobytes()
    shape = sample_shape(n_imus, status_bytes.translate(HAS_MAG_TABLE))
    records = np.concatenate([accel_a, gyro, mag_a], axis=2).astype(SAMPLE_VALUE_DTYPE).reshape(n_samples, -1)
    values = records[:, shape.record_index]
    return SAMPLES_HEADER_STRUCT.pack(t_first_us, period_us, n_samples, n_imus, 0) + status_bytes + values.tobytes()


def _payload(message: Message) -> bytes:
    if isinstance(message, Samples):
        return encode_samples_payload(message.t_first_us, message.period_us, message.status, message.accel, message.gyro, message.mag)
    layout = LAYOUTS[message.TYPE]
    if isinstance(message, Hello):
        fields = dict(message.__dict__, n_imus=len(message.imus), imus=[i.__dict__ for i in message.imus])
    elif isinstance(message, Status):
        if len(message.fifo_overflows) != len(message.i2c_errors):
            raise ValueError("fifo_overflows and i2c_errors need one entry per IMU")
        fields = dict(message.__dict__, n_imus=len(message.fifo_overflows), imus=[
            {"fifo_overflows": a, "i2c_errors": b} for a, b in zip(message.fifo_overflows, message.i2c_errors)])
    elif isinstance(message, (TimeSyncRequest, TimeSyncReply, Command, Ack, Nack, Log)):
        fields = dict(message.__dict__)
    else:
        raise TypeError(f"not a protocol message: {message!r}")
    try:
        return layout.build(fields)
    except (ConstructError, UnicodeEncodeError) as exc:
        raise ValueError(f"cannot encode {type(message).__name__}: {exc}") from exc


def encode(message: Message) -> bytes:
    """Any message dataclass -> its whole frame (its own node_id, seq and flags)."""
    return encode_frame(message.TYPE, _payload(message), node_id=message.node_id, seq=message.seq, flags=message.flags)


__all__ = ["encode", "encode_frame", "encode_command", "encode_time_sync_request", "encode_samples_payload"]
