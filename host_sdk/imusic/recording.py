"""Recordings: append-only chunked ``.imu`` files of raw wire bytes, host times and metadata.

The byte layout is normative and documented in ``docs/recording.md``. In short: an 8-byte header
``b"IMUREC" 0x00 <format version>``, then chunks, each

    u32 length | u8 kind | u8 reserved (0) | u16 link_id | f64 t_host_s | payload[length] | u32 crc32

all little-endian, the CRC-32 (zlib polynomial) taken over the 16 header bytes and the payload.
Every chunk stands alone, so whatever a crash leaves at the end (a torn chunk) is found by its
length or CRC and ignored; everything before it reads back.

Durability: the writer buffers chunks and hands them to the OS at least every
``flush_interval_s`` (100 ms), from a timer thread, so the guarantee holds even when no data
arrives; data handed to the OS survives a SIGKILL of the process. ``close()`` also fsyncs, which is
what survives a power cut.
"""

from __future__ import annotations

import enum
import errno
import json
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from imusic.errors import UserError, read_error

MAGIC_PREFIX = b"IMUREC\x00"
FORMAT_VERSION = 1
MAGIC = MAGIC_PREFIX + bytes([FORMAT_VERSION])

CHUNK_HEADER = struct.Struct("<IBBHd")  # length, kind, reserved, link_id, t_host_s
CHUNK_HEADER_SIZE = CHUNK_HEADER.size  # 16
CRC_SIZE = 4
CHUNK_OVERHEAD = CHUNK_HEADER_SIZE + CRC_SIZE
# No link delivers more than this in one read; a larger length field is corruption, not data.
MAX_CHUNK_PAYLOAD = 1 << 24
MAX_LINK_ID = 0xFFFF

FLUSH_INTERVAL_S = 0.1
# Past this many buffered bytes the caller's thread flushes at once instead of waiting for the timer.
FLUSH_BYTES = 1 << 20
READ_BLOCK = 1 << 22


class ChunkKind(enum.IntEnum):
    DATA = 1  # bytes received from link ``link_id``, as they arrived
    META = 2  # UTF-8 JSON object: link 0 = session metadata, link N = declares/describes link N
    HOST = 3  # bytes the host wrote to link ``link_id`` (TIME_SYNC_REQ, COMMAND)


class RecordingError(UserError):
    """A recording that cannot be read or written: one clear line for the user."""


class Chunk(NamedTuple):
    kind: int  # a ChunkKind value; unknown kinds from a newer writer are passed through
    link_id: int
    t_host_s: float
    payload: bytes
    offset: int  # byte offset of the chunk in the file


def encode_chunk(kind: int, link_id: int, t_host_s: float, payload: bytes) -> bytes:
    """One chunk's bytes (header, payload, CRC)."""
    if len(payload) > MAX_CHUNK_PAYLOAD:
        raise ValueError(f"chunk payload of {len(payload)} bytes exceeds {MAX_CHUNK_PAYLOAD}")
    if not 0 <= link_id <= MAX_LINK_ID:
        raise ValueError(f"link_id {link_id} out of range 0..{MAX_LINK_ID}")
    head = CHUNK_HEADER.pack(len(payload), kind, 0, link_id, t_host_s)
    return head + payload + zlib.crc32(payload, zlib.crc32(head)).to_bytes(4, "little")


def _json_payload(values: dict[str, Any]) -> bytes:
    if not isinstance(values, dict):
        raise TypeError(f"metadata must be a dict, not {type(values).__name__}")
    return json.dumps(values, separators=(",", ":"), allow_nan=True).encode()


class RecordingWriter:
    """Append chunks to a new recording; thread-safe; a context manager.

    ``data()``, ``host()`` and ``meta()`` only append to a buffer; a timer thread hands it to the OS
    every ``flush_interval_s / 2`` so no chunk waits longer than ``flush_interval_s``. A full disk
    (ENOSPC, EFBIG, EDQUOT) stops the writer: the file is cut back to its last whole chunk and
    every later call raises the same ``RecordingError``.
    """

    def __init__(self, path: str | os.PathLike[str], *, overwrite: bool = False,
                 flush_interval_s: float = FLUSH_INTERVAL_S, meta: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.flush_interval_s = float(flush_interval_s)
        if not self.flush_interval_s > 0:
            raise ValueError("flush_interval_s must be positive")
        header_meta = {"format": "imusic-recording", "format_version": FORMAT_VERSION,
                       "created_unix_s": time.time(), "created_t_host_s": time.monotonic(), **(meta or {})}
        first_chunk = encode_chunk(ChunkKind.META, 0, time.monotonic(), _json_payload(header_meta))
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL) | getattr(os, "O_BINARY", 0)
        try:
            self._fd = os.open(self.path, flags, 0o644)
        except FileExistsError:
            raise RecordingError(f"{path} already exists: not overwriting it") from None
        except IsADirectoryError:
            raise RecordingError(f"{path} is a directory") from None
        except FileNotFoundError:
            raise RecordingError(f"{path}: no such directory {self.path.parent}") from None
        except PermissionError:
            raise RecordingError(f"{path}: permission denied") from None
        except OSError as exc:
            raise RecordingError(f"cannot create {path}: {exc.strerror or exc}") from None
        self._lock = threading.Lock()
        self._buffer = bytearray()
        self._buffered_chunks = 0
        self._file_bytes = 0  # bytes handed to the OS, always a whole number of chunks
        self._last_flush = time.monotonic()
        self._error: RecordingError | None = None
        self._closed = False
        self._links: dict[str, int] = {}
        self._next_link_id = 1
        self.chunks_written = 0  # chunks appended (buffered or flushed)
        self.chunks_flushed = 0  # chunks handed to the OS: these survive a SIGKILL
        # The header and the session META go out at once: a recording is never an empty file for long.
        self._buffer += MAGIC
        with self._lock:
            self._append_locked(first_chunk)
            self._flush_locked()
        if self._error is not None:
            os.close(self._fd)
            raise self._error
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name=f"recording-flush:{self.path.name}", daemon=True)
        self._flusher.start()

    # -- appending -----------------------------------------------------------------------------
    def add_link(self, url: str, **link_meta: Any) -> int:
        """Declare a link (by URL) and get its id for ``data()``/``host()``; a URL added before keeps
        its id. The declaring META chunk goes in before any chunk that can use the id."""
        payload = _json_payload({**link_meta, "url": url})
        with self._lock:
            self._check_open()
            link_id = self._links.get(url)
            if link_id is None:
                if self._next_link_id > MAX_LINK_ID:
                    raise RecordingError(f"{self.path}: more than {MAX_LINK_ID} links")
                link_id = self._next_link_id
                self._next_link_id += 1
                self._links[url] = link_id
                self._append_locked(encode_chunk(ChunkKind.META, link_id, time.monotonic(), payload))
        if self._error is not None:
            raise self._error
        return link_id

    def data(self, link_id: int, t_host_s: float, data: bytes | bytearray | memoryview) -> None:
        """Bytes received on link ``link_id`` at host time ``t_host_s`` (``time.monotonic()``)."""
        self._append(ChunkKind.DATA, link_id, t_host_s, data)

    def host(self, link_id: int, t_host_s: float, data: bytes | bytearray | memoryview) -> None:
        """Bytes the host wrote to link ``link_id`` at ``t_host_s`` (TIME_SYNC_REQ, COMMAND)."""
        self._append(ChunkKind.HOST, link_id, t_host_s, data)

    def meta(self, values: dict[str, Any], *, link_id: int = 0, t_host_s: float | None = None) -> None:
        """Session metadata (JSON-able dict; ``link_id`` > 0 describes that link). Readers merge
        the dicts in file order, later keys winning."""
        self._append(ChunkKind.META, link_id, time.monotonic() if t_host_s is None else t_host_s, _json_payload(values))

    def _append(self, kind: int, link_id: int, t_host_s: float, payload: bytes | bytearray | memoryview) -> None:
        chunk = encode_chunk(kind, link_id, float(t_host_s), bytes(payload))
        with self._lock:
            self._check_open()
            self._append_locked(chunk)
        if self._error is not None:
            raise self._error

    def _append_locked(self, chunk: bytes) -> None:
        self._buffer += chunk
        self._buffered_chunks += 1
        self.chunks_written += 1
        # The timer thread is the guarantee; this keeps big or late-flushed buffers bounded.
        if len(self._buffer) >= FLUSH_BYTES or time.monotonic() - self._last_flush >= self.flush_interval_s:
            self._flush_locked()

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise ValueError(f"recording {self.path} is closed")

    # -- flushing ------------------------------------------------------------------------------
    @property
    def error(self) -> RecordingError | None:
        """The error that stopped the writer (a full disk), or None."""
        return self._error

    @property
    def flushed_bytes(self) -> int:
        """File size as handed to the OS: everything up to here survives a SIGKILL."""
        return self._file_bytes

    def flush(self) -> None:
        """Hand buffered chunks to the OS now."""
        with self._lock:
            self._check_open()
            self._flush_locked()
        if self._error is not None:
            raise self._error

    def _flush_loop(self) -> None:
        # Half the interval: a chunk appended just after a tick still goes out within the interval.
        while not self._stop.wait(self.flush_interval_s / 2):
            with self._lock:
                if self._closed or self._error is not None:
                    return
                if self._buffer:
                    self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._buffer or self._error is not None:
            self._last_flush = time.monotonic()
            return
        # Swap in a fresh buffer: the old one is never resized while views of it may live on.
        pending, chunks = self._buffer, self._buffered_chunks
        self._buffer, self._buffered_chunks = bytearray(), 0
        view = memoryview(pending)
        written = 0
        try:
            while written < len(pending):
                n = os.write(self._fd, view[written:])
                if n <= 0:  # a regular file never does this, but never spin
                    raise OSError(errno.EIO, "write returned 0")
                written += n
        except OSError as exc:
            self._fail(exc, pending, written)
            return
        self._file_bytes += written
        self.chunks_flushed += chunks
        self._last_flush = time.monotonic()

    def _fail(self, exc: OSError, pending: bytearray, written: int) -> None:
        # Keep the whole chunks this write got out; cut the torn one so the file ends cleanly.
        whole, chunks = _whole_chunks(pending, written, self._file_bytes == 0)
        try:
            os.ftruncate(self._fd, self._file_bytes + whole)
            self._file_bytes += whole
            self.chunks_flushed += chunks
        except OSError:
            pass  # the reader ignores a torn tail anyway
        if exc.errno in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)):
            why = "the disk is full" if exc.errno != errno.EFBIG else "the file size limit was reached"
        else:
            why = exc.strerror or str(exc)
        self._error = RecordingError(f"recording to {self.path} stopped: {why}; "
                                     f"the {self._file_bytes} bytes written before read back")

    # -- closing -------------------------------------------------------------------------------
    def close(self) -> None:
        """Flush, fsync and close; raises the writer's error if a full disk stopped it."""
        if self._closed:
            return
        self._stop.set()
        if self._flusher.is_alive() and self._flusher is not threading.current_thread():
            self._flusher.join()
        with self._lock:
            self._flush_locked()
            self._closed = True
            try:
                if self._error is None:
                    os.fsync(self._fd)
            except OSError as exc:
                self._error = RecordingError(f"recording to {self.path}: fsync failed: {exc.strerror or exc}")
            finally:
                os.close(self._fd)
        if self._error is not None:
            raise self._error

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            try:  # keep the original exception; the file still gets its data and fsync
                self.close()
            except RecordingError:
                pass


def _whole_chunks(buffer: bytearray, written: int, has_magic: bool) -> tuple[int, int]:
    """Bytes and count of the whole chunks among the first ``written`` bytes of ``buffer``."""
    at = len(MAGIC) if has_magic else 0
    if written < at:
        return 0, 0
    chunks = 0
    while at + CHUNK_HEADER_SIZE <= written:
        end = at + CHUNK_OVERHEAD + int.from_bytes(buffer[at:at + 4], "little")
        if end > written:
            break
        at = end
        chunks += 1
    return at, chunks


class RecordingReader:
    """Read a recording: ``chunks()``, and after one pass ``links``, ``meta``, ``truncated_bytes``.

    The constructor checks the file (missing, a directory, empty, foreign) and raises
    ``RecordingError`` with one clear line. Iteration stops at the first incomplete or corrupt
    chunk without raising: ``truncated_bytes`` counts what was ignored and ``tail_problem`` says why.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        head = _read_head(self.path)
        if head[:len(MAGIC)] != MAGIC:
            raise RecordingError(_describe_foreign(self.path, head))
        self._scanned = False
        self._links: dict[int, str] = {}
        self._link_meta: dict[int, dict[str, Any]] = {}
        self._meta: dict[str, Any] = {}
        self._truncated_bytes = 0
        self._tail_problem: str | None = None
        self._counts: dict[int, int] = {}
        self._end_offset = len(MAGIC)

    def chunks(self, kinds: Iterable[int] | None = None) -> Iterator[Chunk]:
        """Every intact chunk in file order (or only those of ``kinds``); stops at a torn tail."""
        wanted = None if kinds is None else frozenset(int(k) for k in kinds)
        links: dict[int, str] = {}
        link_meta: dict[int, dict[str, Any]] = {}
        meta: dict[str, Any] = {}
        counts: dict[int, int] = {}
        unpack = CHUNK_HEADER.unpack_from
        crc32 = zlib.crc32
        meta_kind = int(ChunkKind.META)
        problem: str | None = None
        try:
            f = open(self.path, "rb")
        except OSError as exc:
            raise RecordingError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        with f:
            f.seek(len(MAGIC))
            offset = len(MAGIC)  # file offset of buf[0]
            buf = b""
            view = memoryview(buf)
            at = 0
            eof = False
            while True:
                if len(buf) - at < CHUNK_HEADER_SIZE and not eof:
                    buf, offset, at, eof = _refill(f, buf, offset, at, CHUNK_HEADER_SIZE)
                    view = memoryview(buf)
                if len(buf) - at < CHUNK_HEADER_SIZE:
                    if len(buf) > at:
                        problem = "it ends inside a chunk header"
                    break
                length, kind, _reserved, link_id, t_host_s = unpack(buf, at)
                if length > MAX_CHUNK_PAYLOAD:
                    problem = f"a chunk header claims {length} bytes (corrupt)"
                    break
                end = at + CHUNK_HEADER_SIZE + length + CRC_SIZE
                if end > len(buf) and not eof:
                    buf, offset, at, eof = _refill(f, buf, offset, at, end - at)
                    view = memoryview(buf)
                    end = at + CHUNK_HEADER_SIZE + length + CRC_SIZE
                if end > len(buf):
                    problem = "it ends inside a chunk"
                    break
                body_end = end - CRC_SIZE
                if crc32(view[at:body_end]) != int.from_bytes(view[body_end:end], "little"):
                    problem = "a chunk fails its CRC (corrupt)"
                    break
                payload = buf[at + CHUNK_HEADER_SIZE:body_end]
                counts[kind] = counts.get(kind, 0) + 1
                if kind == meta_kind:
                    _merge_meta(payload, link_id, links, link_meta, meta)
                chunk_offset = offset + at
                at = end
                if wanted is None or kind in wanted:
                    yield Chunk(kind, link_id, t_host_s, payload, chunk_offset)
            end_offset = offset + at
            size = os.fstat(f.fileno()).st_size
        # A full pass: remember what it found so the properties need no second one.
        self._links, self._link_meta, self._meta, self._counts = links, link_meta, meta, counts
        self._end_offset = end_offset
        self._truncated_bytes = size - end_offset
        self._tail_problem = problem if self._truncated_bytes else None
        self._scanned = True

    def _scan(self) -> None:
        if not self._scanned:
            for _ in self.chunks(kinds=()):
                pass

    @property
    def links(self) -> dict[int, str]:
        """Link id -> URL, from the META chunks that declared them."""
        self._scan()
        return dict(self._links)

    @property
    def link_meta(self) -> dict[int, dict[str, Any]]:
        """Link id -> its metadata (``url`` and whatever else was recorded for it), merged in order."""
        self._scan()
        return {k: dict(v) for k, v in self._link_meta.items()}

    @property
    def meta(self) -> dict[str, Any]:
        """Session metadata: the link-0 META chunks merged in file order (later keys win)."""
        self._scan()
        return dict(self._meta)

    @property
    def truncated_bytes(self) -> int:
        """Bytes after the last intact chunk (a torn or corrupt tail), ignored."""
        self._scan()
        return self._truncated_bytes

    @property
    def tail_problem(self) -> str | None:
        """Why the tail was ignored (None when the file ends cleanly)."""
        self._scan()
        return self._tail_problem

    @property
    def chunk_counts(self) -> dict[int, int]:
        """Intact chunks per kind."""
        self._scan()
        return dict(self._counts)

    @property
    def valid_bytes(self) -> int:
        """Length of the intact part of the file: header and whole chunks."""
        self._scan()
        return self._end_offset


def _refill(f: Any, buf: bytes, offset: int, at: int, need: int) -> tuple[bytes, int, int, bool]:
    """Drop consumed bytes and read until ``need`` bytes are available from ``at`` (or EOF)."""
    rest = buf[at:]
    offset += at
    parts = [rest]
    have = len(rest)
    eof = False
    while have < need or have < CHUNK_HEADER_SIZE:
        block = f.read(max(READ_BLOCK, need - have))
        if not block:
            eof = True
            break
        parts.append(block)
        have += len(block)
    return b"".join(parts), offset, 0, eof


def decode_meta(payload: bytes) -> dict[str, Any] | None:
    """A META chunk's dict; None when it is not a JSON object (its CRC was right, so a writer put it
    there: a newer one, or a bug; either way it adds nothing to merge)."""
    try:
        values = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return None
    return values if isinstance(values, dict) else None


def _merge_meta(payload: bytes, link_id: int, links: dict[int, str], link_meta: dict[int, dict[str, Any]],
                meta: dict[str, Any]) -> None:
    values = decode_meta(payload)
    if values is None:
        return
    if link_id == 0:
        meta.update(values)
        return
    link_meta.setdefault(link_id, {}).update(values)
    url = values.get("url")
    if isinstance(url, str):
        links[link_id] = url


def _read_head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 16)
    except OSError as exc:
        raise read_error(path, exc, "a recording", RecordingError) from None


def _describe_foreign(path: Path, head: bytes) -> str:
    """One line saying why ``head`` does not start a recording, and what it looks like instead."""
    if not head:
        return f"{path} is empty: not an imusic recording"
    if len(head) < len(MAGIC) and MAGIC.startswith(head):
        return f"{path} is truncated: it ends inside the recording header ({len(head)} bytes)"
    if head.startswith(MAGIC_PREFIX):
        return (f"{path} is an imusic recording of format version {head[len(MAGIC_PREFIX)]}; "
                f"this imusic reads version {FORMAT_VERSION} (upgrade imusic)")
    if _looks_like_wire_stream(head):
        return f"{path} is a raw imusic byte stream, not a recording: read it with `imusic decode {path}`"
    for signature, what in ((b"PK\x03\x04", "a zip or .npz file"), (b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
                            (b"# imusic frames", "an imusic CSV export")):
        if head.startswith(signature):
            return f"{path} is {what}, not an imusic recording"
    return f"{path} is not an imusic recording (it starts with {head[:8]!r})"


def _looks_like_wire_stream(head: bytes) -> bool:
    from imusic.protocol import StreamDecoder

    decoder = StreamDecoder()
    decoder.feed(head)
    return decoder.stats.frames > 0


__all__ = [
    "CHUNK_HEADER_SIZE", "CHUNK_OVERHEAD", "FORMAT_VERSION", "MAGIC", "MAX_CHUNK_PAYLOAD", "Chunk", "ChunkKind",
    "RecordingError", "RecordingReader", "RecordingWriter", "decode_meta", "encode_chunk",
]
