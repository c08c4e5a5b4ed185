"""Decoded messages: frozen dataclasses, one per message type, fields named as in docs/protocol.md.

Every message carries the frame's ``node_id``, ``seq`` and ``flags``. Values are the wire's raw
values (codes as ints, sample values as counts); the IntEnums in ``constants`` name the codes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar, Union

import numpy as np

from imusic.protocol.constants import MsgType, StatusBit


@dataclass(frozen=True)
class ImuInfo:
    """One IMU slot of a HELLO."""

    chip: int
    mag_chip: int
    bus: int
    mux_addr: int
    mux_channel: int
    addr: int
    mag_addr: int
    site: str
    accel_range_g: int
    gyro_range_dps: int
    mag_range_gauss: int
    accel_scale: float  # m/s^2 per count
    gyro_scale: float  # rad/s per count
    mag_scale: float  # uT per count


@dataclass(frozen=True)
class Hello:
    TYPE: ClassVar[MsgType] = MsgType.HELLO
    node_id: int
    seq: int
    flags: int
    fw_major: int
    fw_minor: int
    fw_patch: int
    protocol_version: int
    board: str
    uid: bytes
    boot_id: int
    rate_hz: int
    samples_per_frame: int
    link: int
    imus: tuple[ImuInfo, ...]

    @property
    def n_imus(self) -> int:
        return len(self.imus)


@dataclass(frozen=True, eq=False)
class Samples:
    """One SAMPLES frame. Arrays are read-only; ``mag`` is zero for IMUs without ``HAS_MAG``."""

    TYPE: ClassVar[MsgType] = MsgType.SAMPLES
    node_id: int
    seq: int
    flags: int
    t_first_us: int
    period_us: int
    n_samples: int
    n_imus: int
    status: np.ndarray  # uint8 (n_imus,)
    accel: np.ndarray  # int16 (n_samples, n_imus, 3) counts
    gyro: np.ndarray  # int16 (n_samples, n_imus, 3) counts
    mag: np.ndarray  # int16 (n_samples, n_imus, 3) counts

    def t_us(self) -> np.ndarray:
        """Device time of each sample in microseconds, int64 (n_samples,)."""
        # via uint64 so that absurd times from a corrupt node wrap instead of raising
        t_first = np.uint64(self.t_first_us).astype(np.int64)
        return t_first + np.int64(self.period_us) * np.arange(self.n_samples, dtype=np.int64)

    @property
    def has_mag(self) -> np.ndarray:
        """bool (n_imus,): which IMUs carry magnetometer values."""
        return (self.status & StatusBit.HAS_MAG) != 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Samples):
            return NotImplemented
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray):
                if a.shape != b.shape or not np.array_equal(a, b):
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Status:
    TYPE: ClassVar[MsgType] = MsgType.STATUS
    node_id: int
    seq: int
    flags: int
    uptime_us: int
    free_heap: int
    frames_dropped: int
    ticks_missed: int
    temp_cdeg: int  # 0.01 deg C; -32768 unknown
    fifo_overflows: tuple[int, ...]  # per IMU slot
    i2c_errors: tuple[int, ...]  # per IMU slot

    @property
    def n_imus(self) -> int:
        return len(self.fifo_overflows)


@dataclass(frozen=True)
class TimeSyncRequest:
    TYPE: ClassVar[MsgType] = MsgType.TIME_SYNC_REQ
    node_id: int
    seq: int
    flags: int
    probe_id: int
    t0_host_us: int


@dataclass(frozen=True)
class TimeSyncReply:
    TYPE: ClassVar[MsgType] = MsgType.TIME_SYNC_REPLY
    node_id: int
    seq: int
    flags: int
    probe_id: int
    t0_host_us: int
    t1_rx_us: int
    t2_tx_us: int


@dataclass(frozen=True)
class Command:
    TYPE: ClassVar[MsgType] = MsgType.COMMAND
    node_id: int
    seq: int
    flags: int
    command: int
    args: bytes


@dataclass(frozen=True)
class Ack:
    TYPE: ClassVar[MsgType] = MsgType.ACK
    node_id: int
    seq: int
    flags: int
    cmd_seq: int
    command: int


@dataclass(frozen=True)
class Nack:
    TYPE: ClassVar[MsgType] = MsgType.NACK
    node_id: int
    seq: int
    flags: int
    cmd_seq: int
    command: int
    error: int


@dataclass(frozen=True)
class Log:
    TYPE: ClassVar[MsgType] = MsgType.LOG
    node_id: int
    seq: int
    flags: int
    level: int
    text: str


Message = Union[Hello, Samples, Status, TimeSyncRequest, TimeSyncReply, Command, Ack, Nack, Log]
