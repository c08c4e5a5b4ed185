"""Wire constants of imusic protocol v1 (docs/protocol.md is normative; these mirror it)."""

from __future__ import annotations

from enum import IntEnum, IntFlag

SYNC = b"\xa5\x5a"
PROTOCOL_VERSION = 1
MAX_PAYLOAD = 4096
# sync(2) version(1) type(1) flags(1) node_id(1) seq(2) length(2): the payload starts here.
HEADER_SIZE = 10
CRC_SIZE = 4
FRAME_OVERHEAD = HEADER_SIZE + CRC_SIZE  # 14
MAX_FRAME = FRAME_OVERHEAD + MAX_PAYLOAD
SEQ_MODULO = 1 << 16
# A backward sequence jump larger than this is a node restart, not reordering.
SEQ_REORDER_WINDOW = 1024
BROADCAST_NODE = 255

MAX_IMUS = 16
MAX_SAMPLES_PER_FRAME = 32
MAX_STR8 = 64
MAX_LOG_TEXT = 200
UID_SIZE = 8
SAMPLES_HEADER_SIZE = 16  # t_first_us u64, period_us u32, n_samples u8, n_imus u8, reserved u16
AXES = 3
VALUES_6AXIS = 6  # ax ay az gx gy gz
VALUES_9AXIS = 9  # ... then mx my mz

INVALID_SAMPLE = -32768
STANDARD_GRAVITY = 9.80665


class MsgType(IntEnum):
    HELLO = 0x01
    SAMPLES = 0x02
    STATUS = 0x03
    TIME_SYNC_REQ = 0x04
    TIME_SYNC_REPLY = 0x05
    COMMAND = 0x06
    ACK = 0x07
    NACK = 0x08
    LOG = 0x09


class Flag(IntFlag):
    HOST = 0x01
    ANNOUNCE = 0x02


class Cmd(IntEnum):
    START = 1
    STOP = 2
    SET_RATE = 3
    SET_RANGES = 4
    IDENTIFY = 5
    REBOOT = 6
    GET_HELLO = 7
    GET_STATUS = 8


class NackError(IntEnum):
    UNKNOWN_COMMAND = 1
    BAD_LENGTH = 2
    BAD_VALUE = 3
    BAD_STATE = 4
    HARDWARE = 5


class ChipId(IntEnum):
    NONE = 0
    QMI8658 = 1
    ICM42688P = 2
    LSM6DSOX = 3


class MagChip(IntEnum):
    NONE = 0
    QMC5883P = 1


class Link(IntEnum):
    SERIAL = 0
    UDP = 1
    FILE = 2


class LogLevel(IntEnum):
    DEBUG = 10
    INFO = 20
    WARNING = 30
    ERROR = 40


class StatusBit(IntFlag):
    STALE = 1 << 0
    I2C_ERROR = 1 << 1
    ACCEL_SAT = 1 << 2
    GYRO_SAT = 1 << 3
    MAG_STALE = 1 << 4
    REINIT = 1 << 5
    HAS_MAG = 1 << 7


def samples_payload_size(n_samples: int, n_imus: int, n_mag: int) -> int:
    """Payload bytes of a SAMPLES frame with ``n_mag`` of its ``n_imus`` IMUs carrying a magnetometer."""
    values_per_sample = VALUES_6AXIS * n_imus + AXES * n_mag
    return SAMPLES_HEADER_SIZE + n_imus + 2 * n_samples * values_per_sample
