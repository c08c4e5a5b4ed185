"""``file://rec.imu?pace=fast|recorded``: replay a recording (``imusic.recording``) as a link.

What a replay gives:

- ``read()`` returns the recording's DATA chunks, in file order, as
  ``Received(data, t_host_s=<the recorded receive time>, source=<the URL the bytes were recorded
  from>)``. A recording of several links (several nodes, or several UDP peers) comes out of one
  replay, told apart by ``source``. One read returns up to ``MAX_BATCH_CHUNKS`` chunks.
- ``read_replay()`` returns the DATA and the HOST chunks (bytes the host wrote: TIME_SYNC_REQ,
  COMMAND) in file order as ``Replayed(received, sent_by_host)``: a session replaying a recording
  sees both sides, e.g. to refit clocks from the recorded probes. ``read()`` skips HOST chunks.
- ``pace=fast`` (default): no waiting, as fast as ``read()`` is called. ``pace=recorded``: chunks
  come out at the recorded pace relative to the first one (the first at once); ``read(timeout_s)``
  returns [] when none is due within the timeout.
- ``finished`` turns True when the last chunk has been returned; the next ``read()`` raises
  ``LinkClosed`` (the other end has nothing more to say).
- ``write()`` discards the bytes (a recording cannot answer) and counts them in
  ``discarded_bytes``, so a session that sends TIME_SYNC_REQs or COMMANDs to a replay runs on.
- ``links`` and ``meta`` grow as META chunks are passed (what the recorder knew at that point);
  a torn tail (a recording killed mid-write) ends the replay cleanly, ``truncated_bytes`` says how
  much was ignored.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from imusic.links import Link, LinkClosed, LinkError, ParsedUrl, Received, register_scheme
from imusic.recording import Chunk, ChunkKind, RecordingError, RecordingReader, decode_meta

PACES = ("fast", "recorded")
MAX_BATCH_CHUNKS = 256
MAX_BATCH_BYTES = 1 << 20


@dataclass(frozen=True)
class Replayed:
    """One replayed chunk: bytes received from a node, or bytes the host sent to it."""

    received: Received  # for a HOST chunk: the bytes written, their recorded send time, the destination
    sent_by_host: bool


class FileLink(Link):
    """A read-only replay of a recording (see the module docstring)."""

    def __init__(self, path: str, *, pace: str = "fast", url: str | None = None) -> None:
        if pace not in PACES:
            raise LinkError(f"{url or path}: pace must be one of {', '.join(PACES)}, not {pace!r}")
        self.url = url or f"file://{path}"
        self.pace = pace
        try:
            self.recording = RecordingReader(path)
        except RecordingError as exc:
            raise LinkError(str(exc)) from None
        self._chunks: Iterator[Chunk] = self.recording.chunks()
        self._pending: Chunk | None = None  # next chunk to hand out, already read from the file
        self._closed = threading.Event()
        self.finished = False
        self.links: dict[int, str] = {}
        self.meta: dict[str, Any] = {}
        self.discarded_bytes = 0
        # pace=recorded: recorded time t is due at monotonic _anchor_host_s + (t - _anchor_recorded_s)
        self._anchor_recorded_s: float | None = None
        self._anchor_host_s = 0.0

    @classmethod
    def from_url(cls, parsed: ParsedUrl) -> FileLink:
        parsed.check_params(("pace",))
        if not parsed.target:
            raise LinkError(f"{parsed.url}: expected file://PATH of a recording")
        return cls(parsed.path, pace=parsed.params.get("pace", "fast"), url=parsed.url)

    @property
    def truncated_bytes(self) -> int:
        """Bytes of a torn or corrupt tail the replay ignored (0 until it has finished)."""
        return self.recording.truncated_bytes if self.finished else 0

    # -- reading -------------------------------------------------------------------------------
    def read(self, timeout_s: float | None = None) -> list[Received]:
        return [r.received for r in self.read_replay(timeout_s) if not r.sent_by_host]

    def read_replay(self, timeout_s: float | None = None) -> list[Replayed]:
        """DATA and HOST chunks in file order (see the module docstring)."""
        if self._closed.is_set():
            raise LinkClosed(f"{self.url} is closed")
        head = self._peek()
        if head is None:
            self.finished = True
            raise LinkClosed(f"{self.url}: end of the recording")
        if self.pace == "recorded":
            if self._anchor_recorded_s is None:
                self._anchor_recorded_s, self._anchor_host_s = head.t_host_s, time.monotonic()
            wait_s = self._due_s(head) - time.monotonic()
            if wait_s > 0:
                if timeout_s is not None and timeout_s < wait_s:
                    self._closed.wait(timeout_s)
                    return []
                if self._closed.wait(wait_s):
                    raise LinkClosed(f"{self.url} is closed")
        out: list[Replayed] = []
        size = 0
        now = time.monotonic()
        while head is not None and len(out) < MAX_BATCH_CHUNKS and size < MAX_BATCH_BYTES:
            if self.pace == "recorded" and out and self._due_s(head) > now:
                break
            self._pending = None
            out.append(Replayed(Received(head.payload, head.t_host_s, self._source(head.link_id)),
                                head.kind == ChunkKind.HOST))
            size += len(head.payload)
            head = self._peek()
        if head is None:
            self.finished = True
        return out

    def _due_s(self, chunk: Chunk) -> float:
        assert self._anchor_recorded_s is not None
        return self._anchor_host_s + (chunk.t_host_s - self._anchor_recorded_s)

    def _peek(self) -> Chunk | None:
        """The next DATA or HOST chunk (META chunks update links and meta on the way)."""
        while self._pending is None:
            chunk = next(self._chunks, None)
            if chunk is None:
                return None
            if chunk.kind in (ChunkKind.DATA, ChunkKind.HOST):
                self._pending = chunk
            elif chunk.kind == ChunkKind.META:
                self._take_meta(chunk)
        return self._pending

    def _take_meta(self, chunk: Chunk) -> None:
        values = decode_meta(chunk.payload)
        if values is None:
            return
        if chunk.link_id == 0:
            self.meta.update(values)
        elif isinstance(values.get("url"), str):
            self.links[chunk.link_id] = values["url"]

    def _source(self, link_id: int) -> str:
        return self.links.get(link_id) or f"{self.url}#link{link_id}"

    # -- writing and closing -------------------------------------------------------------------
    def write(self, data: bytes, dest: str | None = None) -> None:
        """A replay cannot answer: the bytes are counted in ``discarded_bytes`` and dropped."""
        if self._closed.is_set():
            raise LinkClosed(f"{self.url} is closed")
        self.discarded_bytes += len(data)

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()


register_scheme("file", FileLink.from_url)

__all__ = ["PACES", "FileLink", "Replayed"]
