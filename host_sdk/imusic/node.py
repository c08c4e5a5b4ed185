"""One node on one link: HELLO, commands with ACK/NACK, time-sync probes, status, statistics,
reboot detection and reconnection.

Reading and decoding are kept apart so that whoever owns a link can route its bytes:

- ``NodeClient(send, label=...)`` is the node's side of the conversation. It is fed the bytes that
  came from its node (``feed(data, t_host_s)``, which returns the decoded messages) and writes with
  the ``send`` callable it was given. It starts no thread and never reads a link itself, so a session
  with several UDP nodes on one port feeds each client the datagrams of its source address.
- ``LinkPump(url, on_received)`` reads one link in a thread and hands every ``Received`` to a
  callback. After ``LinkClosed`` (a pulled cable, a pty closed) it reopens the same URL with
  backoff until the port is back, and says so through ``on_down``/``on_up``.
- ``NodeClient.connect(url)`` puts the two together for the common case of one node on its own
  link (serial, emu, mem): it waits for the node's HELLO and returns a ready client.

Commands (``command``) block their caller until the ACK/NACK arrives through ``feed`` from the
reading thread; a NACK or a node that stays silent through every retry raises ``NodeError``.
A HELLO with a new ``boot_id``, or a sequence restart in the decoder, is a reboot: the client counts
it, asks for the HELLO again when it missed it, and sends START again when it had been streaming.
A node whose HELLO says a newer protocol version than this host speaks is refused by name.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imusic.errors import UserError
from imusic.links import Link, LinkClosed, LinkError, Received, open_link
from imusic.protocol import (
    BROADCAST_NODE,
    PROTOCOL_VERSION,
    SYNC,
    Ack,
    Cmd,
    Flag,
    Hello,
    Message,
    Nack,
    NackError,
    Samples,
    Status,
    StreamDecoder,
    TimeSyncReply,
    encode_command,
    encode_time_sync_request,
)

if TYPE_CHECKING:
    from imusic.timesync import ClockFit, Probe

__all__ = ["NodeClient", "NodeError", "NodeStatsSnapshot", "LinkPump"]

SEQ_MODULO = 1 << 16
PROBE_ID_MODULO = 1 << 32
RECONNECT_FIRST_S = 0.05
RECONNECT_MAX_S = 1.0


class NodeError(UserError):
    """A node refused a command (NACK), did not answer, or cannot be used (a newer protocol)."""


def _command_name(cmd: int) -> str:
    try:
        return Cmd(cmd).name
    except ValueError:
        return f"command {cmd}"


def _nack_name(error: int) -> str:
    try:
        return NackError(error).name
    except ValueError:
        return f"error {error}"


@dataclass(frozen=True)
class NodeStatsSnapshot:
    """Per-node statistics at one moment."""

    node_id: int | None
    frames: int  # intact frames received
    samples: int  # IMU-samples received
    rate_hz: float  # sample instants per second of device time
    lost_frames: int  # sequence gaps
    crc_errors: int  # frames with a bad CRC on this node's byte stream
    reboots: int
    reconnects: int  # times the link came back after LinkClosed
    rtt_ms: float | None  # smallest round trip of the last time-sync burst
    latency_ms: float | None  # half of it: the one-way link latency
    clock_offset_ms: float | None  # host minus device time at the newest fit point (ClockFit.offset_s)
    clock_drift_ppm: float | None  # how fast the node's clock runs against the host's (+: fast)


class NodeClient:
    """The host's side of one node. See the module docstring."""

    def __init__(self, send: Callable[[bytes], None], *, label: str, node_id: int | None = None) -> None:
        self.label = label  # where the node is, for messages: a URL or a UDP source
        self._send = send
        self.decoder = StreamDecoder()
        self.node_id: int | None = node_id  # known from the first HELLO when not given
        self.hello: Hello | None = None
        self.latest_status: Status | None = None
        self.reboots = 0
        self.reconnects = 0
        self.clock_fit: ClockFit | None = None
        self.last_burst: list[Probe] = []
        self.refused: NodeError | None = None
        self.streaming = False  # START acknowledged, or SAMPLES seen; STOP clears it
        self.listeners: list[Callable[[Message, float], None]] = []
        self._cond = threading.Condition()
        self._hellos = 0  # HELLOs received, for waiters
        self._statuses = 0
        self._replies: dict[int, Ack | Nack] = {}
        self._sync_replies: dict[int, tuple[TimeSyncReply, float]] = {}
        self._host_seq = itertools.count()
        self._probe_ids = itertools.count(1)
        self._seq_resets = 0
        self._hello_missing = False  # a restart was seen in the sequence but its HELLO not yet
        self._absorb_reset = False  # the decoder still owes the restart of a reboot already counted
        self._foreign_version: int | None = None
        self._link_up = True
        self._recovering = threading.Lock()
        self._pump: LinkPump | None = None

    # ---- construction for one node on its own link

    @classmethod
    def connect(cls, url: str, *, hello_timeout_s: float = 5.0, reconnect: bool = True) -> "NodeClient":
        """Open ``url``, read it in a thread and wait for the node's HELLO (asking for it when the
        node does not say it on its own). ``close()`` closes the link."""
        if url.startswith("udp://"):
            raise LinkError(f"{url}: a UDP port is shared by nodes; use imusic.Session, or a LinkPump feeding "
                            f"one NodeClient per source address")
        pump = LinkPump(url, lambda r: None, reconnect=reconnect)
        client = cls(pump.write, label=url)
        client._pump = pump
        pump.on_received = lambda received: client.feed(received.data, received.t_host_s)
        pump.on_down = client.link_down
        pump.on_up = client.link_up
        pump.start()
        try:
            client.wait_hello(total_s=hello_timeout_s)
        except BaseException:
            pump.close()
            raise
        return client

    def close(self) -> None:
        if self._pump is not None:
            self._pump.close()

    def __enter__(self) -> "NodeClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the reading side

    @property
    def name(self) -> str:
        who = f"node {self.node_id}" if self.node_id is not None else "node"
        return f"{who} ({self.label})"

    def feed(self, data: bytes, t_host_s: float) -> list[Message]:
        """Bytes from this node, received at ``t_host_s`` (time.monotonic()): decode them, act on
        replies, HELLO and STATUS, and return the messages (SAMPLES for the caller to use)."""
        messages = self.decoder.feed(data)
        if self.decoder.stats.version_mismatch and self._foreign_version is None:
            self._foreign_version = _foreign_version(data)
        restarted = False
        with self._cond:
            for msg in messages:
                if msg.flags & Flag.HOST:
                    continue  # our own frames echoed back (a loopback): not the node's
                if self.node_id is None:
                    self.node_id = msg.node_id  # one node per byte stream: its first frame names it
                if msg.node_id != self.node_id:
                    continue
                if isinstance(msg, Samples):
                    self.streaming = True
                elif isinstance(msg, (Ack, Nack)):
                    self._replies[msg.cmd_seq] = msg
                elif isinstance(msg, TimeSyncReply):
                    self._sync_replies[msg.probe_id] = (msg, t_host_s)
                elif isinstance(msg, Status):
                    self.latest_status = msg
                    self._statuses += 1
                elif isinstance(msg, Hello):
                    restarted |= self._on_hello(msg)
            node = self.decoder.nodes.get(self.node_id) if self.node_id is not None else None
            resets = node.seq_resets if node is not None else 0
            if restarted and resets == self._seq_resets:
                # A new boot_id, but the decoder took the new boot's first frames for reordered
                # ones (it had not seen the old boot's frames with those numbers): it will call
                # the restart later, when the numbers meet frames it saw. That one is this reboot.
                self._absorb_reset = True
            elif resets > self._seq_resets and self._absorb_reset:
                self._absorb_reset = False
                self._seq_resets = resets
            if resets > self._seq_resets:
                self._seq_resets = resets
                if not restarted:
                    # The sequence started over but no new HELLO came with it (lost on the way, or
                    # still to come): count the reboot now and make sure we get the HELLO.
                    self.reboots += 1
                    self._hello_missing = True
                    restarted = True
            self._cond.notify_all()
        if restarted:
            self._recover_in_background(ask_hello=self._hello_missing)
        for msg in messages:
            for listener in self.listeners:
                listener(msg, t_host_s)
        return messages

    def _on_hello(self, hello: Hello) -> bool:
        """Take a HELLO (lock held); True when it shows a reboot."""
        if hello.protocol_version > PROTOCOL_VERSION and self.refused is None:
            self.refused = NodeError(
                f"{self.name} speaks protocol version {hello.protocol_version}; this host speaks "
                f"{PROTOCOL_VERSION}: update imusic to use it")
        previous = self.hello
        self.hello = hello
        self._hellos += 1
        if previous is None or hello.boot_id == previous.boot_id:
            self._hello_missing = False
            return False
        if self._hello_missing:
            self._hello_missing = False  # the reboot was counted when the sequence restarted
            return False
        self.reboots += 1
        return True

    def link_down(self) -> None:
        """The link went away: a frame cut in half is counted as truncated, not glued to new bytes."""
        self.decoder.flush()
        with self._cond:
            self._link_up = False
            self._cond.notify_all()

    def link_up(self) -> None:
        """The link is back (a new port): count it, re-read HELLO, restart streaming if it was on."""
        with self._cond:
            self._link_up = True
            self.reconnects += 1
        self._recover_in_background(ask_hello=True)

    def _recover_in_background(self, ask_hello: bool) -> None:
        # Called from the reading thread, which must go on reading for the replies to arrive.
        threading.Thread(target=self._recover, args=(ask_hello,), name="imusic-node-recover", daemon=True).start()

    def _recover(self, ask_hello: bool) -> None:
        with self._recovering:
            try:
                if ask_hello:
                    self.request_hello()
                if self.streaming:
                    self.command(Cmd.START)
            except (NodeError, LinkClosed):
                pass  # the link dropped again; the next link_up tries again

    # ---- waiting for things

    def wait_hello(self, timeout_s: float = 1.0, total_s: float = 5.0) -> Hello:
        """The node's HELLO: the one already received, or one within ``timeout_s``; after that ask
        with GET_HELLO (with retries) until ``total_s``. Raises ``NodeError`` when none comes or the
        node speaks a newer protocol."""
        deadline = time.monotonic() + total_s
        with self._cond:
            # (at most half the total: a silent node is asked, however short the total)
            self._cond.wait_for(lambda: self.hello is not None or self.refused is not None,
                                min(timeout_s, total_s / 2))
        self._check_refused()
        while self.hello is None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                return self.request_hello(timeout_s=min(0.5, left), retries=0)
            except NodeError:
                self._check_refused()
        self._check_refused()
        if self.hello is None:
            if self._foreign_version is not None:
                raise NodeError(f"{self.name} sends frames of protocol version {self._foreign_version}; "
                                f"this host speaks {PROTOCOL_VERSION}")
            raise NodeError(f"{self.name}: no HELLO within {total_s:g} s (not an imusic node, or not running)")
        return self.hello

    def request_hello(self, timeout_s: float = 0.5, retries: int = 3) -> Hello:
        """Send GET_HELLO and return the HELLO that follows the ACK."""
        with self._cond:
            count = self._hellos
        self.command(Cmd.GET_HELLO, timeout_s=timeout_s, retries=retries)
        with self._cond:
            if not self._cond.wait_for(lambda: self._hellos > count, timeout_s):
                raise NodeError(f"{self.name}: GET_HELLO acknowledged but no HELLO followed")
            assert self.hello is not None
            hello = self.hello
        self._check_refused()
        return hello

    def request_status(self, timeout_s: float = 0.5, retries: int = 3) -> Status:
        """Send GET_STATUS and return the STATUS that follows (``latest_status`` keeps the newest of
        those the node sends on its own too, once a second while streaming)."""
        with self._cond:
            count = self._statuses
        self.command(Cmd.GET_STATUS, timeout_s=timeout_s, retries=retries)
        with self._cond:
            if not self._cond.wait_for(lambda: self._statuses > count, timeout_s):
                raise NodeError(f"{self.name}: GET_STATUS acknowledged but no STATUS followed")
            assert self.latest_status is not None
            return self.latest_status

    def _check_refused(self) -> None:
        if self.refused is not None:
            raise self.refused

    # ---- commands

    def _next_seq(self) -> int:
        return next(self._host_seq) % SEQ_MODULO

    def _target(self) -> int:
        return self.node_id if self.node_id is not None else BROADCAST_NODE

    def command(self, cmd: int, args: bytes = b"", timeout_s: float = 0.5, retries: int = 3) -> Ack:
        """Send a COMMAND and wait for its ACK. Each try is a new frame (a new sequence number) and
        a reply to any of them counts. ``NodeError`` on NACK, or when ``1 + retries`` tries go
        unanswered within ``timeout_s`` each."""
        self._check_refused()
        sent: set[int] = set()
        link_down = False
        for _ in range(1 + retries):
            seq = self._next_seq()
            sent.add(seq)
            try:
                self._send(encode_command(self._target(), seq, int(cmd), bytes(args)))
            except LinkClosed:
                link_down = True  # wait out this try anyway: the link may be back for the next one
            with self._cond:
                got = self._cond.wait_for(lambda: any(s in self._replies for s in sent), timeout_s)
                if got:
                    reply = next(self._replies.pop(s) for s in sent if s in self._replies)
                    for s in sent:
                        self._replies.pop(s, None)
                    break
        else:
            why = "the link is down" if link_down else f"{1 + retries} tries, {timeout_s:g} s each"
            raise NodeError(f"{self.name}: no reply to {_command_name(cmd)} ({why})")
        if isinstance(reply, Nack):
            raise NodeError(f"{self.name} refused {_command_name(cmd)}: {_nack_name(reply.error)}")
        if cmd == Cmd.START:
            self.streaming = True
        elif cmd == Cmd.STOP:
            self.streaming = False
        return reply

    def start(self) -> Ack:
        return self.command(Cmd.START)

    def stop(self) -> Ack:
        return self.command(Cmd.STOP)

    def set_rate(self, rate_hz: int) -> Ack:
        return self.command(Cmd.SET_RATE, int(rate_hz).to_bytes(2, "little"))

    def reboot(self) -> Ack:
        return self.command(Cmd.REBOOT)

    # ---- clock sync

    def time_sync_burst(self, n: int = 8, timeout_s: float = 0.2) -> list[Probe]:
        """``n`` TIME_SYNC probes, one after the other (the next goes out when the reply came or
        ``timeout_s`` passed). Returns the answered ones; they also go into ``clock_fit``."""
        from imusic.timesync import ClockFit, Probe

        self._check_refused()
        probes: list[Probe] = []
        for _ in range(n):
            probe_id = next(self._probe_ids) % PROBE_ID_MODULO
            t0_host_s = time.monotonic()
            try:
                self._send(encode_time_sync_request(self._target(), self._next_seq(), probe_id,
                                                    int(t0_host_s * 1e6)))
            except LinkClosed:
                break
            with self._cond:
                if not self._cond.wait_for(lambda pid=probe_id: pid in self._sync_replies, timeout_s):
                    continue
                reply, t3_host_s = self._sync_replies.pop(probe_id)
            if reply.t2_tx_us < reply.t1_rx_us:
                continue  # impossible times: a confused node, not a measurement
            probes.append(Probe(t0_host_s, reply.t1_rx_us, reply.t2_tx_us, t3_host_s))
        with self._cond:
            self._sync_replies.clear()  # late replies of this burst are of no use to the next
        if probes:
            self.last_burst = probes
            if self.clock_fit is None:
                self.clock_fit = ClockFit()
            self.clock_fit.add_burst(probes)
        return probes

    # ---- statistics

    def stats(self) -> NodeStatsSnapshot:
        node = self.decoder.nodes.get(self.node_id) if self.node_id is not None else None
        rtt_s = min((p.rtt_s for p in self.last_burst), default=None)
        fit = self.clock_fit
        fit_ready = fit is not None and fit.ready
        return NodeStatsSnapshot(
            node_id=self.node_id,
            frames=node.frames if node else 0,
            samples=node.samples if node else 0,
            rate_hz=node.rate_hz if node else 0.0,
            lost_frames=node.lost_frames if node else 0,
            # one node per byte stream: every bad CRC on it is this node's, known or not yet
            crc_errors=self.decoder.stats.crc_errors,
            reboots=self.reboots,
            reconnects=self.reconnects,
            rtt_ms=rtt_s * 1e3 if rtt_s is not None else None,
            latency_ms=rtt_s * 0.5e3 if rtt_s is not None else None,
            clock_offset_ms=fit.offset_s * 1e3 if fit_ready and fit is not None else None,
            clock_drift_ppm=fit.device_drift_ppm if fit_ready and fit is not None else None,
        )


def _foreign_version(data: bytes) -> int | None:
    """The version byte of the first frame header in ``data`` that is not ours (for the message
    that refuses the node; the decoder has already checked the CRC of such a frame)."""
    i = data.find(SYNC)
    while 0 <= i <= len(data) - 3:
        if data[i + 2] != PROTOCOL_VERSION:
            return data[i + 2]
        i = data.find(SYNC, i + 2)
    return None


class LinkPump:
    """Reads one link in a thread and hands every ``Received`` to ``on_received``.

    When the link reports ``LinkClosed`` the pump calls ``on_down``, then tries to open the same URL
    again, waiting 50 ms, 100 ms, ... up to 1 s between tries, until it opens (``on_up``) or the pump
    is closed. ``write`` raises ``LinkClosed`` while the link is down.
    """

    def __init__(self, url: str, on_received: Callable[[Received], object], *,
                 on_down: Callable[[], None] | None = None, on_up: Callable[[], None] | None = None,
                 reconnect: bool = True, link: Link | None = None) -> None:
        self.url = url
        self.on_received = on_received
        self.on_down = on_down
        self.on_up = on_up
        self.reconnect = reconnect
        self.reconnects = 0
        self.error: BaseException | None = None  # what ended the pump, when not close()
        self._link: Link | None = link if link is not None else open_link(url)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def link(self) -> Link | None:
        return self._link

    def start(self) -> "LinkPump":
        self._thread = threading.Thread(target=self._run, name=f"imusic-pump {self.url}", daemon=True)
        self._thread.start()
        return self

    def write(self, data: bytes, dest: str | None = None) -> None:
        with self._lock:
            link = self._link
        if link is None:
            raise LinkClosed(f"{self.url} is down")
        link.write(data, dest)

    def _run(self) -> None:
        while not self._closing.is_set():
            with self._lock:
                link = self._link
            if link is None:
                if not self._reopen():
                    return
                continue
            try:
                for received in link.read(0.1):
                    self.on_received(received)
            except LinkClosed as exc:
                with self._lock:
                    self._link = None
                link.close()
                if self._closing.is_set():
                    return
                if self.on_down is not None:
                    self.on_down()
                if not self.reconnect:
                    self.error = exc
                    return
            except Exception as exc:  # a bug in a callback: keep it for the owner, stop reading
                self.error = exc
                return

    def _reopen(self) -> bool:
        wait_s = RECONNECT_FIRST_S
        while not self._closing.wait(wait_s):
            try:
                link = open_link(self.url)
            except LinkError:
                wait_s = min(wait_s * 2, RECONNECT_MAX_S)
                continue
            with self._lock:
                if self._closing.is_set():
                    link.close()
                    return False
                self._link = link
            self.reconnects += 1
            if self.on_up is not None:
                self.on_up()
            return True
        return False

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2)
        with self._lock:
            link, self._link = self._link, None
        if link is not None:
            link.close()

    def __enter__(self) -> "LinkPump":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
