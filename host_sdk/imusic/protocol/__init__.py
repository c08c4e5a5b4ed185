"""imusic wire protocol v1 (docs/protocol.md): constants, message layouts, stream decoder, bulk
SAMPLES path and encoders. Knows nothing of transports or sessions."""

from imusic.protocol.constants import (
    BROADCAST_NODE,
    FRAME_OVERHEAD,
    HEADER_SIZE,
    INVALID_SAMPLE,
    MAX_IMUS,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    STANDARD_GRAVITY,
    SYNC,
    ChipId,
    Cmd,
    Flag,
    Link,
    LogLevel,
    MagChip,
    MsgType,
    NackError,
    StatusBit,
)
from imusic.protocol.bulk import NodeSamples, SamplesBatch, decode_samples_bulk
from imusic.protocol.decoder import DecoderStats, NodeStats, StreamDecoder, decode_payload
from imusic.protocol.encode import (
    encode,
    encode_command,
    encode_frame,
    encode_samples_payload,
    encode_time_sync_request,
)
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

__all__ = [
    "BROADCAST_NODE", "FRAME_OVERHEAD", "HEADER_SIZE", "INVALID_SAMPLE", "MAX_IMUS", "MAX_PAYLOAD",
    "PROTOCOL_VERSION", "STANDARD_GRAVITY", "SYNC", "ChipId", "Cmd", "Flag", "Link", "LogLevel", "MagChip",
    "MsgType", "NackError", "StatusBit",
    "DecoderStats", "NodeStats", "StreamDecoder", "decode_payload", "NodeSamples", "SamplesBatch",
    "decode_samples_bulk",
    "encode", "encode_command", "encode_frame", "encode_samples_payload", "encode_time_sync_request",
    "Ack", "Command", "Hello", "ImuInfo", "Log", "Message", "Nack", "Samples", "Status", "TimeSyncReply",
    "TimeSyncRequest",
]
