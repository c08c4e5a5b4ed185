"""Serial links: a USB-CDC or UART port, or a pty (an emulated node), through pyserial.

``serial:///dev/ttyACM0?baud=921600`` or a bare path. The port is opened exclusively (two readers
on one port would each get half the bytes). Reads wait with ``select`` on the port's descriptor and
return whatever has arrived; a port whose other end went away (a pulled cable, a closed pty) reads
as end-of-file or fails, which becomes ``LinkClosed``.
"""

from __future__ import annotations

import os
import select
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

DEFAULT_BAUD = 921600
READ_SIZE = 65536
WRITE_TIMEOUT_S = 2.0


class SerialLink(Link):
    def __init__(self, url: str, port: str, baud: int = DEFAULT_BAUD) -> None:
        import serial  # pyserial: imported only when a serial link is opened

        self.url = url
        self.port = port
        self.baud = baud
        try:
            self._serial = serial.Serial(port, baud, timeout=0, write_timeout=2, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise LinkError(f"cannot open serial port {port}: {_reason(exc)}") from None
        try:
            self._fd: int | None = self._serial.fileno()
        except Exception:  # Windows: no descriptor to select on; poll pyserial instead
            self._fd = None
        self._closed = False
        self._write_lock = threading.Lock()

    def read(self, timeout_s: float | None = None) -> list[Received]:
        if self._closed:
            raise LinkClosed(f"{self.url} is closed")
        if self._fd is None:
            return self._read_polling(timeout_s)
        try:
            ready, _, _ = select.select([self._fd], [], [], timeout_s)
        except (OSError, ValueError):
            raise LinkClosed(f"{self.url}: the port went away") from None
        if not ready:
            return []
        try:
            data = os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            return []
        except OSError as exc:
            raise LinkClosed(f"{self.url}: {exc.strerror or exc}") from None
        t_host_s = time.monotonic()
        if not data:  # readable but empty: the other end is gone
            raise LinkClosed(f"{self.url}: the other end closed the port")
        return [Received(data, t_host_s, self.url)]

    def _read_polling(self, timeout_s: float | None) -> list[Received]:
        import serial

        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                data = self._serial.read(max(1, self._serial.in_waiting))
            except (serial.SerialException, OSError) as exc:
                raise LinkClosed(f"{self.url}: {_reason(exc)}") from None
            if data:
                return [Received(bytes(data), time.monotonic(), self.url)]
            if deadline is not None and time.monotonic() >= deadline:
                return []
            time.sleep(0.001)

    def write(self, data: bytes, dest: str | None = None) -> None:
        if self._closed:
            raise LinkClosed(f"{self.url} is closed")
        with self._write_lock:
            try:
                if self._fd is None:
                    self._serial.write(data)
                    return
                view = memoryview(data)
                deadline = time.monotonic() + WRITE_TIMEOUT_S
                while view:
                    try:
                        n = os.write(self._fd, view)
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise LinkClosed(f"{self.url}: the port takes no data (nothing reads it)") from None
                        select.select([], [self._fd], [], 0.1)
                        continue
                    view = view[n:]
            except OSError as exc:
                raise LinkClosed(f"{self.url}: {exc.strerror or exc}") from None
            except Exception as exc:  # pyserial's own errors on other platforms
                raise LinkClosed(f"{self.url}: {_reason(exc)}") from None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._serial.close()
        except Exception:
            pass  # a port that vanished cannot be closed cleanly; it is gone either way


def _reason(exc: BaseException) -> str:
    """pyserial's messages repeat the errno and the path; keep the readable part."""
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = str(exc)
        if text.startswith("[Errno"):
            text = text.partition("] ")[2] or text
    if "exclusively lock" in text or "Resource temporarily unavailable" in text:
        return "busy (another program has it open)"
    if "No such file" in text:
        return "no such port"
    if "Permission denied" in text:
        return "permission denied (on Linux, add yourself to the dialout group)"
    return text.rstrip(".")


def _open(parsed: ParsedUrl) -> SerialLink:
    parsed.check_params(("baud",))
    if not parsed.path:
        raise LinkError(f"{parsed.url}: no port named (serial:///dev/ttyACM0)")
    baud = parsed.int_param("baud", DEFAULT_BAUD, 50, 20_000_000)
    return SerialLink(parsed.url, parsed.path, baud)


register_scheme("serial", _open)
