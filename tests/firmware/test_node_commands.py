"""Commands and time sync over the pty link, as a host would use a board (realtime clock)."""

from __future__ import annotations

import os
import select
import struct
import threading
import time
from typing import Any, Callable

import pytest

from imusic.emulation.launcher import EmulatedNode
from imusic.protocol import (Ack, Cmd, Hello, Nack, NackError, Samples, Status, StreamDecoder,
                             TimeSyncReply, encode_command, encode_time_sync_request)

NODE_ID = 2
WAIT_S = 20.0  # a guard against a hung node, not a timing requirement


class PtyHost:
    """Reads the pty in a thread, decodes everything, and lets the test wait for messages."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        self.decoder = StreamDecoder()
        self.raw = bytearray()
        self.messages: list[Any] = []
        self.cond = threading.Condition()
        self.seq = 100
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                return
            msgs = self.decoder.feed(data)
            with self.cond:
                self.raw += data
                self.messages.extend(msgs)
                self.cond.notify_all()

    def close(self) -> None:
        self._stop = True
        self._thread.join(1)
        os.close(self.fd)

    def mark(self) -> int:
        with self.cond:
            return len(self.messages)

    def wait_for(self, pred: Callable[[Any], bool], since: int = 0) -> Any:
        deadline = time.monotonic() + WAIT_S
        with self.cond:
            while True:
                for m in self.messages[since:]:
                    if pred(m):
                        return m
                left = deadline - time.monotonic()
                assert left > 0, f"timed out; last messages: {self.messages[-5:]}"
                self.cond.wait(left)

    def send(self, frame: bytes) -> None:
        os.write(self.fd, frame)

    def command(self, cmd: int, args: bytes = b"", node_id: int = NODE_ID) -> tuple[Any, int, int]:
        """Send a COMMAND; (its ACK or NACK, message index after the reply, the command's seq)."""
        self.seq += 1
        seq = self.seq
        since = self.mark()
        self.send(encode_command(node_id, seq, cmd, args))
        reply = self.wait_for(lambda m: isinstance(m, (Ack, Nack)) and m.cmd_seq == seq, since)
        with self.cond:
            after = self.messages.index(reply) + 1
        return reply, after, seq


@pytest.fixture(scope="module")
def host() -> Any:
    with EmulatedNode(imus=3, rate_hz=100, node_id=NODE_ID, link="pty", clock="realtime") as node:
        assert node.pty_path
        h = PtyHost(node.pty_path)
        try:
            h.wait_for(lambda m: isinstance(m, Samples))
            yield h
        finally:
            h.close()


def _acked(reply: Any, cmd: int) -> None:
    assert isinstance(reply, Ack), reply
    assert reply.command == cmd and reply.node_id == NODE_ID


def test_get_hello_is_acked_then_answered(host: PtyHost) -> None:
    reply, after, _ = host.command(Cmd.GET_HELLO)
    _acked(reply, Cmd.GET_HELLO)
    hello = host.wait_for(lambda m: isinstance(m, Hello), after)
    assert hello.seq > reply.seq and hello.n_imus == 3 and hello.rate_hz == 100 and hello.board == "emulated"


def test_stop_stops_samples_and_start_resumes(host: PtyHost) -> None:
    reply, after, _ = host.command(Cmd.STOP)
    _acked(reply, Cmd.STOP)
    # STATUS goes on while stopped: wait for two, proving time passed, and see no SAMPLES after the ACK.
    first = host.wait_for(lambda m: isinstance(m, Status), after)
    with host.cond:
        idx = host.messages.index(first) + 1
    host.wait_for(lambda m: isinstance(m, Status), idx)
    with host.cond:
        after_ack = host.messages[after:]
    assert not [m for m in after_ack if isinstance(m, Samples)]
    reply, after, _ = host.command(Cmd.START)
    _acked(reply, Cmd.START)
    frame = host.wait_for(lambda m: isinstance(m, Samples), after)
    assert frame.seq > reply.seq


def test_set_rate_sends_new_hello_and_new_period(host: PtyHost) -> None:
    reply, after, _ = host.command(Cmd.SET_RATE, struct.pack("<H", 200))
    _acked(reply, Cmd.SET_RATE)
    hello = host.wait_for(lambda m: isinstance(m, Hello), after)
    assert hello.rate_hz == 200 and hello.samples_per_frame == 4
    frame = host.wait_for(lambda m: isinstance(m, Samples) and m.seq > hello.seq, after)
    assert frame.period_us == 5000 and frame.n_samples == 4
    reply, after, _ = host.command(Cmd.SET_RATE, struct.pack("<H", 100))
    _acked(reply, Cmd.SET_RATE)
    assert host.wait_for(lambda m: isinstance(m, Hello), after).rate_hz == 100


def test_set_ranges_reconfigures_every_chip(host: PtyHost) -> None:
    reply, after, _ = host.command(Cmd.SET_RANGES, struct.pack("<BHB", 4, 256, 8))
    _acked(reply, Cmd.SET_RANGES)
    hello = host.wait_for(lambda m: isinstance(m, Hello), after)
    assert {(i.accel_range_g, i.gyro_range_dps) for i in hello.imus} == {(4, 256)}
    # A gyro range the QMI8658 lacks: refused, nothing changed.
    reply, after, _ = host.command(Cmd.SET_RANGES, struct.pack("<BHB", 4, 250, 8))
    assert isinstance(reply, Nack) and reply.error == NackError.BAD_VALUE
    reply, after, _ = host.command(Cmd.GET_HELLO)
    hello = host.wait_for(lambda m: isinstance(m, Hello), after)
    assert {(i.accel_range_g, i.gyro_range_dps) for i in hello.imus} == {(4, 256)}


def test_identify_and_get_status(host: PtyHost) -> None:
    reply, _, _ = host.command(Cmd.IDENTIFY, struct.pack("<H", 300))
    _acked(reply, Cmd.IDENTIFY)
    reply, after, _ = host.command(Cmd.GET_STATUS)
    _acked(reply, Cmd.GET_STATUS)
    status = host.wait_for(lambda m: isinstance(m, Status), after)
    assert status.n_imus == 3 and status.free_heap > 0 and status.i2c_errors == (0, 0, 0)


@pytest.mark.parametrize(("cmd", "args", "error"), [
    (99, b"", NackError.UNKNOWN_COMMAND),
    (Cmd.SET_RATE, b"\x64", NackError.BAD_LENGTH),
    (Cmd.START, b"\x00", NackError.BAD_LENGTH),
    (Cmd.SET_RATE, struct.pack("<H", 7), NackError.BAD_VALUE),
    (Cmd.SET_RANGES, struct.pack("<BHB", 3, 256, 8), NackError.BAD_VALUE),
])
def test_malformed_commands_get_nack_with_error_code(host: PtyHost, cmd: int, args: bytes, error: int) -> None:
    reply, _, _ = host.command(cmd, args)
    assert isinstance(reply, Nack), reply
    assert reply.command == cmd and reply.error == error


def test_garbage_and_broken_frames_do_not_hide_the_next_command(host: PtyHost) -> None:
    good = encode_command(NODE_ID, 900, Cmd.GET_STATUS)
    corrupt = bytearray(encode_command(NODE_ID, 899, Cmd.STOP))
    corrupt[-1] ^= 0xFF  # bad CRC: must not stop the stream
    huge = b"\xa5\x5a\x01\x06\x01" + bytes([NODE_ID]) + b"\x00\x00\xa0\x0f"  # claims 4000 bytes
    since = host.mark()
    for chunk in (b"\x03\x03\x00\xff\xa5", bytes(corrupt), huge, good[:5]):
        host.send(chunk)
    host.send(good[5:])
    reply = host.wait_for(lambda m: isinstance(m, (Ack, Nack)), since)
    assert isinstance(reply, Ack) and reply.cmd_seq == 900
    assert host.wait_for(lambda m: isinstance(m, Samples) and m.seq > reply.seq, since)


def test_commands_for_other_nodes_are_ignored_and_broadcast_answered(host: PtyHost) -> None:
    host.seq += 1
    since = host.mark()
    host.send(encode_command(NODE_ID + 1, host.seq, Cmd.GET_STATUS))
    reply, _, seq = host.command(Cmd.GET_HELLO, node_id=255)
    _acked(reply, Cmd.GET_HELLO)
    with host.cond:
        assert not [m for m in host.messages[since:] if isinstance(m, (Ack, Nack)) and m.cmd_seq == seq - 1]


def test_time_sync_reply_echoes_probe_with_t1_before_t2(host: PtyHost) -> None:
    since = host.mark()
    host.send(encode_time_sync_request(NODE_ID, 7, probe_id=0xDEADBEEF, t0_host_us=123_456_789_012))
    reply = host.wait_for(lambda m: isinstance(m, TimeSyncReply), since)
    assert reply.probe_id == 0xDEADBEEF and reply.t0_host_us == 123_456_789_012
    assert 0 < reply.t1_rx_us <= reply.t2_tx_us
    status = host.wait_for(lambda m: isinstance(m, Status), since)
    assert status.uptime_us > 0


def test_reboot_acks_then_the_node_starts_again(host: PtyHost) -> None:
    first_boot = host.wait_for(lambda m: isinstance(m, Hello))
    reply, after, _ = host.command(Cmd.REBOOT)
    _acked(reply, Cmd.REBOOT)
    # The new boot numbers its frames from 0 again and may repeat the first boot's frames byte for
    # byte; its HELLO's fresh boot_id is what lets the session's own decoder see a restart.
    since = host.mark()
    hello = host.wait_for(lambda m: isinstance(m, Hello) and m.seq == 0, since)
    assert hello.boot_id != first_boot.boot_id
    assert hello.rate_hz == 100  # the boot config, not what SET_RATE said before
    host.wait_for(lambda m: isinstance(m, Samples), host.mark())
    with host.cond:
        assert host.decoder.nodes[NODE_ID].seq_resets >= 1
        assert host.decoder.nodes[NODE_ID].lost_frames == 0


def test_udp_discovery_announces_until_a_command_names_the_host(tmp_path: Any) -> None:
    import socket

    from imusic.emulation.launcher import build_layout, node_config_for
    from imusic.protocol import Flag

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(WAIT_S)
    port = sock.getsockname()[1]
    # No host configured: the node announces (to the emulator's loopback "broadcast") on `port`.
    config = node_config_for(build_layout(2), NODE_ID, 100, {"type": "udp", "host": None, "port": port})
    with EmulatedNode(imus=2, node_id=NODE_ID, link=f"udp:127.0.0.1:{port}", clock="realtime",
                      node_config=config, workdir=tmp_path):
        decoder = StreamDecoder()
        data, node_addr = sock.recvfrom(8192)
        announce = [m for m in decoder.feed(data)]
        while not any(isinstance(m, Hello) for m in announce):
            data, node_addr = sock.recvfrom(8192)
            announce += decoder.feed(data)
        hello = next(m for m in announce if isinstance(m, Hello))
        assert hello.flags & Flag.ANNOUNCE and hello.link == 1
        assert not [m for m in announce if isinstance(m, Samples)]  # nothing streams before a host is known
        sock.sendto(encode_command(NODE_ID, 1, Cmd.GET_HELLO), node_addr)
        got: list[Any] = []
        while not any(isinstance(m, Samples) for m in got):
            data, _ = sock.recvfrom(8192)
            # (an announcement already on its way when the command went out may still arrive)
            got += [m for m in decoder.feed(data) if not m.flags & Flag.ANNOUNCE]
        assert isinstance(got[0], Ack) and got[0].cmd_seq == 1
        assert isinstance(got[1], Hello) and not got[1].flags & Flag.ANNOUNCE
    sock.close()
