"""Links: where frames go and where commands come from.

Every link offers `write(mv) -> bool` (one whole frame; False when it could not be sent) and
`poll_read(buf) -> n` (non-blocking: the bytes, or for UDP the datagram, that have arrived, at most
len(buf)). Neither allocates while nothing arrives, so the sample loop can call them every tick.
"""

import select

from imnode import proto


class SerialLink:
    """USB-CDC (stdin/stdout of the REPL port) or a UART: a plain byte stream."""

    KIND = proto.LINK_SERIAL

    def __init__(self, reader, writer):
        self._reader = reader
        self._writer = writer
        self._poll = select.poll()
        self._poll.register(reader, select.POLLIN)
        self._open = True
        self._one = bytearray(1)
        self.has_peer = True

    def write(self, mv):
        try:
            n = self._writer.write(mv)
        except OSError:
            return False
        return n is None or n == len(mv)

    def _readable(self):
        for _ in self._poll.ipoll(0):
            return True
        return False

    def poll_read(self, buf):
        # One byte per read: a stream's readinto() may block until the whole buffer is full.
        n = 0
        limit = len(buf)
        one = self._one
        while self._open and n < limit and self._readable():
            got = self._reader.readinto(one)
            if not got:
                # End of input (the emulator's stdin closed): stop polling a dead stream.
                self._open = False
                self._poll.unregister(self._reader)
                break
            buf[n] = one[0]
            n += 1
        return n

    def accept_peer(self):
        pass

    def announce(self, mv):
        pass


class UdpLink:
    """One frame per datagram to the host; with no host configured, HELLO announcements go to the
    broadcast address until the first COMMAND names the host (its sender)."""

    KIND = proto.LINK_UDP

    def __init__(self, sock, host, port, broadcast):
        import socket

        self._sock = sock
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        self._peer = socket.getaddrinfo(host, port)[0][-1] if host else None
        self._broadcast = socket.getaddrinfo(broadcast, port)[0][-1]
        self._sender = None
        self.has_peer = self._peer is not None

    def write(self, mv):
        if self._peer is None:
            return False
        try:
            self._sock.sendto(mv, self._peer)
        except OSError:
            return False
        return True

    def announce(self, mv):
        try:
            self._sock.sendto(mv, self._broadcast)
        except OSError:
            pass

    def poll_read(self, buf):
        for _ in self._poll.ipoll(0):
            try:
                data, sender = self._sock.recvfrom(len(buf))
            except OSError:
                return 0
            n = len(data)
            buf[0:n] = data
            self._sender = sender
            return n
        return 0

    def accept_peer(self):
        """The sender of the frame just read (a COMMAND) becomes the host when none is known."""
        if self._peer is None and self._sender is not None:
            self._peer = self._sender
            self.has_peer = True


class FileLink:
    """The byte stream written to a file (emulation and tests); no commands."""

    KIND = proto.LINK_FILE

    def __init__(self, path):
        self._file = open(path, "wb")
        self.has_peer = True

    def write(self, mv):
        self._file.write(mv)
        return True

    def poll_read(self, buf):
        return 0

    def accept_peer(self):
        pass

    def announce(self, mv):
        pass


def open_link(board, cfg):
    """(link, problem text or None): the configured link, else the serial port."""
    problem = None
    if cfg.link_type == "udp":
        sock = board.udp(cfg.host, cfg.port, cfg)
        if sock is not None:
            return UdpLink(sock, cfg.host, cfg.port, getattr(board, "UDP_BROADCAST", "255.255.255.255")), None
        problem = "link: UDP not available (no Wi-Fi?): using serial"
    elif cfg.link_type == "file":
        try:
            return FileLink(cfg.path), None
        except OSError:
            problem = "link: cannot open %s: using serial" % cfg.path
    elif cfg.link_type == "uart":
        reader, writer = board.uart(cfg.baud)
        return SerialLink(reader, writer), None
    reader, writer = board.serial()
    return SerialLink(reader, writer), problem
