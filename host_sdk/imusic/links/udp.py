"""UDP links: one socket bound to the address the user gives, shared by every node that sends to it.

``udp://127.0.0.1:50100`` binds that address; ``udp://:50100`` binds the loopback (never every
interface unless asked: ``udp://0.0.0.0:50100``). Port 0 binds a free port (``local_address`` tells
which). Each datagram is one ``Received`` with ``source="udp://IP:PORT"`` of its sender, and
``write(data, dest=source)`` answers that sender: routing datagrams to nodes is the caller's job.
"""

from __future__ import annotations

import select
import socket
import threading
import time

from imusic.links import (
    Link,
    LinkClosed,
    LinkError,
    ParsedUrl,
    Received,
    register_scheme,
)

MAX_DATAGRAM = 65535
RECEIVE_BUFFER_BYTES = 4 << 20  # several nodes at 200 Hz must not overflow the kernel's queue


def source_of(address: tuple) -> str:
    host, port = address[0], address[1]
    return f"udp://[{host}]:{port}" if ":" in host else f"udp://{host}:{port}"


def address_of(source: str) -> tuple[str, int]:
    """``udp://IP:PORT`` -> (ip, port); ``ValueError`` for anything else."""
    scheme, sep, rest = source.partition("://")
    host, colon, port = rest.rpartition(":")
    if scheme != "udp" or not sep or not colon or not port.isdigit():
        raise ValueError(f"not a UDP source: {source!r}")
    return host.strip("[]"), int(port)


class UdpLink(Link):
    def __init__(self, url: str, host: str, port: int) -> None:
        self.url = url
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][0]
        except socket.gaierror as exc:
            raise LinkError(f"{url}: unknown host {host!r} ({exc.strerror})") from None
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        except OSError:
            pass  # the system's default size still works, with less headroom
        try:
            self._sock.bind((host, port))
        except OSError as exc:
            self._sock.close()
            reason = "in use (another program listens there)" if exc.errno in (48, 98, 10048) else exc.strerror
            raise LinkError(f"cannot listen on UDP {host}:{port}: {reason}") from None
        self._sock.setblocking(False)
        self.local_address: tuple[str, int] = self._sock.getsockname()[:2]
        self._closed = False
        self._lock = threading.Lock()

    def read(self, timeout_s: float | None = None) -> list[Received]:
        if self._closed:
            raise LinkClosed(f"{self.url} is closed")
        try:
            ready, _, _ = select.select([self._sock], [], [], timeout_s)
        except (OSError, ValueError):
            raise LinkClosed(f"{self.url} is closed") from None
        out: list[Received] = []
        if not ready:
            return out
        t_host_s = time.monotonic()
        while True:  # everything queued now, one Received per datagram
            try:
                data, address = self._sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionResetError:
                continue  # Windows reports an earlier send's ICMP "port unreachable" here
            except OSError:
                if self._closed:
                    raise LinkClosed(f"{self.url} is closed") from None
                break
            out.append(Received(data, t_host_s, source_of(address)))
        return out

    def write(self, data: bytes, dest: str | None = None) -> None:
        if self._closed:
            raise LinkClosed(f"{self.url} is closed")
        if dest is None:
            raise ValueError("a UDP link is shared: write() needs dest, the node's source string")
        try:
            self._sock.sendto(data, address_of(dest))
        except (BlockingIOError, ConnectionRefusedError):
            pass  # a datagram is allowed to get lost; the node client retries
        except OSError as exc:
            if self._closed:
                raise LinkClosed(f"{self.url} is closed") from None
            raise LinkError(f"{self.url}: cannot send to {dest}: {exc.strerror or exc}") from None

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._sock.close()


def _open(parsed: ParsedUrl) -> UdpLink:
    parsed.check_params(())
    host, port = parsed.host_port(default_host="127.0.0.1")
    return UdpLink(parsed.url, host, port)


register_scheme("udp", _open)
