"""Wire protocol version 1 (docs/protocol.md): constants and packers into preallocated buffers.

Frames are built in place: the caller owns a bytearray, the payload is packed at PAYLOAD, then
`header()` and `seal()` finish it. Nothing here allocates: the CRC-32 is computed by a viper
function that writes it into the frame, because `binascii.crc32` returns a heap integer for every
CRC >= 2**30 on the boards' 32-bit ports.
"""

import struct
from array import array

import micropython
from micropython import const

VERSION = const(1)
SYNC0 = const(0xA5)
SYNC1 = const(0x5A)
HEADER_SIZE = const(10)
CRC_SIZE = const(4)
OVERHEAD = const(14)
PAYLOAD = const(10)  # offset of the payload in a frame
MAX_PAYLOAD = const(4096)

# message types
HELLO = const(0x01)
SAMPLES = const(0x02)
STATUS = const(0x03)
TIME_SYNC_REQ = const(0x04)
TIME_SYNC_REPLY = const(0x05)
COMMAND = const(0x06)
ACK = const(0x07)
NACK = const(0x08)
LOG = const(0x09)

# header flags
FLAG_HOST = const(0x01)
FLAG_ANNOUNCE = const(0x02)
BROADCAST_ID = const(255)

# commands
CMD_START = const(1)
CMD_STOP = const(2)
CMD_SET_RATE = const(3)
CMD_SET_RANGES = const(4)
CMD_IDENTIFY = const(5)
CMD_REBOOT = const(6)
CMD_GET_HELLO = const(7)
CMD_GET_STATUS = const(8)

# NACK error codes
ERR_UNKNOWN_COMMAND = const(1)
ERR_BAD_LENGTH = const(2)
ERR_BAD_VALUE = const(3)
ERR_BAD_STATE = const(4)
ERR_HARDWARE = const(5)

# SAMPLES per-IMU status bits
ST_STALE = const(0x01)
ST_I2C_ERROR = const(0x02)
ST_ACCEL_SAT = const(0x04)
ST_GYRO_SAT = const(0x08)
ST_MAG_STALE = const(0x10)
ST_REINIT = const(0x20)
ST_HAS_MAG = const(0x80)

# HELLO codes
CHIP_NONE = const(0)
MAG_NONE = const(0)
LINK_SERIAL = const(0)
LINK_UDP = const(1)
LINK_FILE = const(2)
NO_MUX_CHANNEL = const(255)

# LOG levels
LOG_DEBUG = const(10)
LOG_INFO = const(20)
LOG_WARNING = const(30)
LOG_ERROR = const(40)
LOG_MAX_TEXT = const(200)
STR8_MAX = const(64)

RATES_HZ = (60, 100, 200)
ACCEL_RANGES_G = (2, 4, 8, 16)
MAG_RANGES_GAUSS = (2, 8, 12, 30)
MAX_IMUS = const(16)
MAX_SAMPLES_PER_FRAME = const(32)

# SAMPLES payload: t_first u64, period u32, n_samples u8, n_imus u8, reserved u16, then status bytes
SAMPLES_FIXED = const(16)
# STATUS payload: uptime u64, free_heap u32, frames_dropped u32, ticks_missed u32, temp i16, n u8
STATUS_FIXED = const(23)
UNKNOWN_TEMP = const(-32768)
# TIME_SYNC_REQ payload: probe_id u32, t0 u64; reply adds t1, t2
TIME_SYNC_REQ_SIZE = const(12)
TIME_SYNC_REPLY_SIZE = const(28)


def header(buf, msg_type, flags, node_id, seq, length):
    struct.pack_into("<BBBBBBHH", buf, 0, SYNC0, SYNC1, VERSION, msg_type, flags, node_id, seq, length)


def _crc_table():
    # CRC-32 (zlib/binascii: reflected polynomial 0xEDB88320). Built once at import.
    table = array("I", [0] * 256)
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table[n] = c
    return table


CRC_TABLE = _crc_table()


@micropython.viper
def crc32_at(buf, start: int, end: int, table, write: int) -> int:
    """CRC-32 of buf[start:end], in machine words (no heap). With `write`, store it little-endian
    at buf[end:end+4] and return 1; else return 1 when the four bytes there hold it, 0 if not."""
    p = ptr8(buf)
    t = ptr32(table)
    crc = uint(0xFFFFFFFF)
    i = start
    while i < end:
        crc = uint(t[int((crc ^ uint(p[i])) & uint(0xFF))]) ^ (crc >> 8)
        i += 1
    crc = crc ^ uint(0xFFFFFFFF)
    b0 = int(crc & uint(0xFF))
    b1 = int((crc >> 8) & uint(0xFF))
    b2 = int((crc >> 16) & uint(0xFF))
    b3 = int((crc >> 24) & uint(0xFF))
    if write:
        p[end] = b0
        p[end + 1] = b1
        p[end + 2] = b2
        p[end + 3] = b3
        return 1
    return 1 if p[end] == b0 and p[end + 1] == b1 and p[end + 2] == b2 and p[end + 3] == b3 else 0


def seal(buf, length):
    """Append the CRC of header and payload (buf[2:10+length]); return the frame's size."""
    crc32_at(buf, 2, PAYLOAD + length, CRC_TABLE, 1)
    return OVERHEAD + length


def pack_u64(buf, offset, hi, lo):
    """Write the device time hi * 2**30 + lo as a little-endian u64 without building a big int:
    bits 0-15 and 16-31 as two u16 (hi's two low bits go to the top of the second), 32-63 as u32."""
    struct.pack_into("<HHI", buf, offset, lo & 0xFFFF, (lo >> 16) | ((hi & 3) << 14), hi >> 2)


def pack_str8(buf, offset, text):
    """str8 at offset (at most 64 bytes, cut); returns the offset after it."""
    data = text.encode() if isinstance(text, str) else text
    n = min(len(data), STR8_MAX)
    buf[offset] = n
    buf[offset + 1:offset + 1 + n] = data[:n]
    return offset + 1 + n


def pack_ack(buf, node_id, seq, cmd_seq, command):
    struct.pack_into("<HB", buf, PAYLOAD, cmd_seq, command)
    header(buf, ACK, 0, node_id, seq, 3)
    return seal(buf, 3)


def pack_nack(buf, node_id, seq, cmd_seq, command, error):
    struct.pack_into("<HBB", buf, PAYLOAD, cmd_seq, command, error)
    header(buf, NACK, 0, node_id, seq, 4)
    return seal(buf, 4)


def pack_log(buf, node_id, seq, level, text):
    data = text.encode()
    n = min(len(data), LOG_MAX_TEXT)
    buf[PAYLOAD] = level
    buf[PAYLOAD + 1:PAYLOAD + 1 + n] = data[:n]
    header(buf, LOG, 0, node_id, seq, n + 1)
    return seal(buf, n + 1)


def check_frame(buf, start, available, max_payload):
    """Look at a candidate frame at buf[start:] (sync already matched) holding `available` bytes.
    Returns its total size when it is complete and its CRC matches, 0 when more bytes are needed,
    -1 when it is not a frame (bad version, length over max_payload, or CRC: resume one byte later)."""
    if available < HEADER_SIZE:
        return 0
    if buf[start + 2] != VERSION:
        return -1
    length = buf[start + 8] | (buf[start + 9] << 8)
    if length > max_payload:
        return -1
    total = OVERHEAD + length
    if available < total:
        return 0
    if not crc32_at(buf, start + 2, start + PAYLOAD + length, CRC_TABLE, 0):
        return -1
    return total
