"""In-memory links for tests: ``open_link("mem://NAME")`` and ``mem_pair("NAME")`` are two ends of
one pipe. Each ``write`` on one end is one ``Received`` on the other (``source`` is the reader's
URL, as for a serial port). Closing either end makes the other's ``read`` raise ``LinkClosed`` once
what was already written has been read, like a pty whose other side was closed. A name can be
opened again once both ends are closed.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from imusic.links import (
    Link,
    LinkClosed,
    LinkError,
    ParsedUrl,
    Received,
    register_scheme,
)

_channels: dict[str, "_Channel"] = {}
_channels_lock = threading.Lock()


class _Channel:
    def __init__(self, name: str) -> None:
        self.name = name
        self.url = f"mem://{name}"
        self.cond = threading.Condition()
        self.queues: tuple[deque[Received], deque[Received]] = (deque(), deque())
        self.open = [True, True]
        self.taken = [False, False]  # which ends have been handed out


class MemLink(Link):
    def __init__(self, channel: _Channel, end: int) -> None:
        self.url = channel.url
        self._channel = channel
        self._end = end

    @property
    def closed(self) -> bool:
        return not self._channel.open[self._end]

    def read(self, timeout_s: float | None = None) -> list[Received]:
        ch = self._channel
        inbox = ch.queues[self._end]
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with ch.cond:
            while True:
                if not ch.open[self._end]:
                    raise LinkClosed(f"{self.url} is closed")
                if inbox:
                    out = list(inbox)
                    inbox.clear()
                    return out
                if not ch.open[1 - self._end]:
                    raise LinkClosed(f"{self.url}: the other end closed")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return []
                ch.cond.wait(left)

    def write(self, data: bytes, dest: str | None = None) -> None:
        ch = self._channel
        with ch.cond:
            if not ch.open[self._end]:
                raise LinkClosed(f"{self.url} is closed")
            if not ch.open[1 - self._end]:
                raise LinkClosed(f"{self.url}: the other end closed")
            ch.queues[1 - self._end].append(Received(bytes(data), time.monotonic(), self.url))
            ch.cond.notify_all()

    def close(self) -> None:
        ch = self._channel
        with ch.cond:
            ch.open[self._end] = False
            ch.cond.notify_all()
            both_closed = not any(ch.open)
        if both_closed:
            with _channels_lock:
                if _channels.get(ch.name) is ch:
                    del _channels[ch.name]


def _take(name: str, end: int) -> MemLink:
    if not name:
        raise LinkError("mem:// needs a name: mem://NAME")
    with _channels_lock:
        ch = _channels.get(name)
        if ch is not None and ch.taken[end] and not ch.open[end]:
            # this end was used and closed: a fresh pair, unless the other end still talks
            if ch.open[1 - end] and ch.taken[1 - end]:
                raise LinkError(f"mem://{name}: that end was closed while the other is still open")
            ch = None
        if ch is None:
            ch = _channels[name] = _Channel(name)
        if ch.taken[end]:
            raise LinkError(f"mem://{name} is already open")
        ch.taken[end] = True
        return MemLink(ch, end)


def mem_pair(name: str) -> MemLink:
    """The other end of ``mem://NAME`` (call before or after ``open_link``)."""
    return _take(name, 1)


def _open(parsed: ParsedUrl) -> MemLink:
    parsed.check_params(())
    return _take(parsed.target, 0)


register_scheme("mem", _open)
