"""Byte transports picked by URL, the way pyserial's ``serial_for_url`` picks a port handler.

``open_link(url)`` parses the URL, finds the factory registered for its scheme and returns a
``Link``. The built-in backends live in modules named after their scheme (``serial``, ``udp``,
``mem``, ``emu``, ``file``); each registers itself when imported, and ``open_link`` imports the one a
URL needs on first use, so opening a UDP port never imports pyserial and nothing imports the
emulator unless an ``emu://`` URL asks for it.

| URL | backend |
|---|---|
| ``serial:///dev/ttyACM0?baud=921600``, or a bare path (``/dev/pts/3``, ``COM3``) | ``imusic.links.serial`` |
| ``udp://127.0.0.1:50100`` (bind address; ``udp://:50100`` binds the loopback) | ``imusic.links.udp`` |
| ``file://rec.imu?pace=recorded|fast`` | ``imusic.links.file`` (replay of a recording) |
| ``mem://NAME`` (``mem_pair(NAME)`` is the other end) | ``imusic.links.mem`` |
| ``emu://?imus=11&rate=100&...`` (an emulated node on a pty) | ``imusic.links.emu`` |
"""

from __future__ import annotations

import abc
import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from imusic.errors import UserError

__all__ = ["Received", "Link", "LinkError", "LinkClosed", "ParsedUrl", "open_link", "register_scheme",
           "parse_url", "registered_schemes"]


@dataclass(frozen=True)
class Received:
    """Bytes as they arrived: one read of a byte stream, or one UDP datagram."""

    data: bytes
    t_host_s: float  # host receive time, time.monotonic() seconds (a replay: the recorded time)
    source: str  # the link URL (serial, file, mem, emu) or "udp://IP:PORT" of the sender


class LinkError(UserError):
    """A link that cannot be opened or used as asked: a missing or busy port, a bad URL."""


class LinkClosed(Exception):
    """The other end went away (a pulled cable, a closed pty), or the link was closed here."""


class Link(abc.ABC):
    """One open transport. ``read`` returns what has arrived ([] when nothing did within
    ``timeout_s``; ``None`` waits until something does); ``write`` sends bytes (``dest``: the
    ``source`` string of a datagram, for links shared by several peers). Both raise ``LinkClosed``
    after ``close()`` or once the other end is gone."""

    url: str

    @abc.abstractmethod
    def read(self, timeout_s: float | None = None) -> list[Received]: ...

    @abc.abstractmethod
    def write(self, data: bytes, dest: str | None = None) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> "Link":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"


@dataclass(frozen=True)
class ParsedUrl:
    """A link URL taken apart. ``target`` is everything between ``scheme://`` and ``?``:
    a device path (``/dev/ttyACM0``), ``HOST:PORT``, a file name (``rec.imu``, ``/abs/rec.imu``)
    or a name (``mem://NAME``). A bare path is ``scheme="serial"`` with the path as target."""

    url: str
    scheme: str
    target: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> str:
        """The target read as a file or device path."""
        return self.target

    def host_port(self, default_host: str = "127.0.0.1") -> tuple[str, int]:
        """``HOST:PORT`` (``[v6]:PORT`` too) -> (host, port); an empty host is ``default_host``."""
        host, sep, port = self.target.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise LinkError(f"{self.url}: expected {self.scheme}://HOST:PORT")
        host = host.strip("[]") or default_host
        return host, int(port)

    def check_params(self, known: tuple[str, ...]) -> None:
        """A parameter the backend does not know is a typo the user wants to hear about."""
        for name in self.params:
            if name not in known:
                allowed = ", ".join(known) if known else "none"
                raise LinkError(f"{self.url}: unknown parameter {name!r} (known: {allowed})")

    def int_param(self, name: str, default: int, lo: int, hi: int) -> int:
        text = self.params.get(name)
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            raise LinkError(f"{self.url}: {name} must be an integer, not {text!r}") from None
        if not lo <= value <= hi:
            raise LinkError(f"{self.url}: {name} must be {lo} .. {hi}, not {value}")
        return value

    def float_param(self, name: str, default: float, lo: float, hi: float) -> float:
        text = self.params.get(name)
        if text is None:
            return default
        try:
            value = float(text)
        except ValueError:
            raise LinkError(f"{self.url}: {name} must be a number, not {text!r}") from None
        if not lo <= value <= hi:  # also refuses NaN
            raise LinkError(f"{self.url}: {name} must be {lo:g} .. {hi:g}, not {text}")
        return value


def parse_url(url: str) -> ParsedUrl:
    """Split a link URL; a string without ``://`` is a serial device path."""
    if not isinstance(url, str) or not url.strip():
        raise LinkError(f"bad link URL {url!r}")
    scheme, sep, rest = url.partition("://")
    if not sep:
        return ParsedUrl(url, "serial", url, {})
    scheme = scheme.lower()
    target, _, query = rest.partition("?")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise LinkError(f"{url}: cannot read the parameters {query!r} (use ?name=value&...)") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise LinkError(f"{url}: parameter {name!r} given twice")
        params[name] = value
    return ParsedUrl(url, scheme, target, params)


LinkFactory = Callable[[ParsedUrl], Link]
_factories: dict[str, LinkFactory] = {}
_factories_lock = threading.Lock()
# Schemes whose backend module (imusic.links.<module>) registers them when first imported.
_BUILTIN_MODULES = {"serial": "serial", "udp": "udp", "mem": "mem", "emu": "emu", "file": "file"}


def register_scheme(scheme: str, factory: LinkFactory) -> None:
    """Make ``open_link`` hand URLs of ``scheme`` to ``factory`` (replacing any earlier one)."""
    with _factories_lock:
        _factories[scheme.lower()] = factory


def registered_schemes() -> list[str]:
    with _factories_lock:
        return sorted(set(_factories) | set(_BUILTIN_MODULES))


def _factory_for(scheme: str, url: str) -> LinkFactory:
    with _factories_lock:
        factory = _factories.get(scheme)
    if factory is None and scheme in _BUILTIN_MODULES:
        module = f"imusic.links.{_BUILTIN_MODULES[scheme]}"
        try:
            importlib.import_module(module)  # registers itself
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
        with _factories_lock:
            factory = _factories.get(scheme)
    if factory is None:
        raise LinkError(f"unknown link scheme {scheme!r} in {url!r} (known: {', '.join(registered_schemes())})")
    return factory


def open_link(url: str) -> Link:
    """Open the link a URL names; ``LinkError`` (one clear line) when it cannot be opened."""
    parsed = parse_url(url)
    return _factory_for(parsed.scheme, url)(parsed)
