"""imusic.node: NodeClient against the real firmware under MicroPython (commands, NACKs, time sync,
status, a reboot mid-stream, a pty closed and reopened), and against scripted nodes on an in-memory
link for what real firmware will not do (stay silent, speak a newer protocol, lose its HELLO)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from imusic.emulation.launcher import EmulatedNode
from imusic.links import LinkClosed, open_link
from imusic.links.mem import mem_pair
from imusic.node import NodeClient, NodeError
from imusic.protocol import (
    Ack,
    Cmd,
    Command,
    Flag,
    Hello,
    ImuInfo,
    MsgType,
    Samples,
    Status,
    StreamDecoder,
    encode,
    encode_frame,
)

WAIT_S = 20.0  # a guard against a hung node, not a timing requirement


def wait_until(pred: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# ---- a scripted node on a mem link

IMU = ImuInfo(1, 0, 0, 0x70, 0, 0x6B, 0, "imu0", 8, 512, 0, 0.0023, 0.00027, 0.0)


def hello_frame(node_id: int, seq: int, boot_id: int, protocol_version: int = 1) -> bytes:
    return encode(Hello(node_id, seq, 0, 0, 1, 0, protocol_version, "emulated", b"fake\0\0\0\0", boot_id, 100, 2,
                        0, (IMU,)))


def status_frame(node_id: int, seq: int, uptime_us: int) -> bytes:
    return encode(Status(node_id, seq, 0, uptime_us, 1000, 0, 0, 2500, (0,), (0,)))


class ScriptedNode:
    """The node's end of a mem link: decodes the host's commands and answers as ``reply`` says
    (a list of frames to send for each COMMAND; [] stays silent)."""

    def __init__(self, name: str, reply: Callable[[Command, "ScriptedNode"], list[bytes]]) -> None:
        self.end = mem_pair(name)
        self.reply = reply
        self.commands: list[Command] = []
        self.seq = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def send(self, frame: bytes) -> None:
        self.end.write(frame)

    def _run(self) -> None:
        decoder = StreamDecoder()
        while not self._stop:
            try:
                batch = self.end.read(0.05)
            except LinkClosed:
                return
            for received in batch:
                for msg in decoder.feed(received.data):
                    if isinstance(msg, Command):
                        self.commands.append(msg)
                        for frame in self.reply(msg, self):
                            self.end.write(frame)

    def close(self) -> None:
        self._stop = True
        self._thread.join(1)
        self.end.close()


def ack(node_id: int) -> Callable[[Command, ScriptedNode], list[bytes]]:
    def answer(cmd: Command, node: ScriptedNode) -> list[bytes]:
        return [encode(Ack(node_id, node.next_seq(), 0, cmd.seq, cmd.command))]
    return answer


def test_silent_node_gets_every_retry_then_a_node_error() -> None:
    node = ScriptedNode("silent", lambda cmd, n: [])
    link = open_link("mem://silent")
    try:
        client = NodeClient(link.write, label="mem://silent", node_id=3)
        with pytest.raises(NodeError) as info:
            client.command(Cmd.GET_STATUS, timeout_s=0.05, retries=2)
        message = str(info.value)
        assert "node 3 (mem://silent)" in message and "GET_STATUS" in message and "3 tries" in message
        wait_until(lambda: len(node.commands) == 3)
        assert [c.command for c in node.commands] == [Cmd.GET_STATUS] * 3
        assert len({c.seq for c in node.commands}) == 3  # each try is a frame of its own
        assert all(c.node_id == 3 and c.flags & Flag.HOST for c in node.commands)
    finally:
        link.close()
        node.close()


def test_connect_to_a_silent_port_says_no_hello() -> None:
    node = ScriptedNode("mute", lambda cmd, n: [])
    try:
        with pytest.raises(NodeError, match=r"node \(mem://mute\): no HELLO within 0.3 s"):
            NodeClient.connect("mem://mute", hello_timeout_s=0.3)
        assert node.commands and all(c.command == Cmd.GET_HELLO and c.node_id == 255 for c in node.commands)
    finally:
        node.close()


def test_a_reply_to_a_later_try_is_taken() -> None:
    def third_time(cmd: Command, node: ScriptedNode) -> list[bytes]:
        if cmd.command == Cmd.GET_HELLO:
            return [encode(Ack(6, node.next_seq(), 0, cmd.seq, cmd.command)), hello_frame(6, node.next_seq(), 1)]
        if len([c for c in node.commands if c.command == Cmd.IDENTIFY]) < 3:
            return []
        return [encode(Ack(6, node.next_seq(), 0, cmd.seq, cmd.command))]

    node = ScriptedNode("third", third_time)
    try:
        with NodeClient.connect("mem://third") as client:
            reply = client.command(Cmd.IDENTIFY, (500).to_bytes(2, "little"), timeout_s=0.2, retries=5)
            tries = [c for c in node.commands if c.command == Cmd.IDENTIFY]
            assert len(tries) == 3 and reply.cmd_seq == tries[2].seq and reply.command == Cmd.IDENTIFY
    finally:
        node.close()


def test_a_node_announcing_a_newer_protocol_is_refused_by_name() -> None:
    node = ScriptedNode("newer", lambda cmd, n: [])
    node.send(hello_frame(7, 0, 1, protocol_version=2))
    try:
        with pytest.raises(NodeError) as info:
            NodeClient.connect("mem://newer", hello_timeout_s=2.0)
        message = str(info.value)
        assert "node 7 (mem://newer)" in message and "protocol version 2" in message and "speaks 1" in message
    finally:
        node.close()


def test_a_node_sending_frames_of_another_version_is_refused_by_name() -> None:
    node = ScriptedNode("v3", lambda cmd, n: [])
    node.send(encode_frame(MsgType.STATUS, b"\0" * 23, node_id=8, seq=0, version=3))
    try:
        with pytest.raises(NodeError, match="frames of protocol version 3; this host speaks 1"):
            NodeClient.connect("mem://v3", hello_timeout_s=0.5)
    finally:
        node.close()


def test_a_restart_without_its_hello_is_counted_once_and_the_hello_fetched() -> None:
    boots = {"boot_id": 111}

    def answer(cmd: Command, node: ScriptedNode) -> list[bytes]:
        frames = [encode(Ack(2, node.next_seq(), 0, cmd.seq, cmd.command))]
        if cmd.command == Cmd.GET_HELLO:
            frames.append(hello_frame(2, node.next_seq(), boots["boot_id"]))
        return frames

    node = ScriptedNode("reboot", answer)
    node.send(hello_frame(2, 0, 111))
    try:
        with NodeClient.connect("mem://reboot") as client:
            for _ in range(40):
                node.send(status_frame(2, node.next_seq(), node.seq * 1000))
            client.command(Cmd.START)
            starts_before = len([c for c in node.commands if c.command == Cmd.START])
            # The node reboots; its new HELLO (seq 0) is lost, the frames after it arrive.
            boots["boot_id"] = 222
            node.seq = 0
            for _ in range(3):
                node.send(status_frame(2, node.next_seq(), 5))
            wait_until(lambda: client.hello is not None and client.hello.boot_id == 222)
            wait_until(lambda: len([c for c in node.commands if c.command == Cmd.START]) > starts_before)
            assert client.reboots == 1
            assert client.stats().reboots == 1
    finally:
        node.close()


def test_a_reboot_soon_after_joining_mid_stream_is_counted_once() -> None:
    # The client joins at seq 10; the node reboots at seq 30. The decoder takes the new boot's
    # frames 0..9 for late ones and calls the restart only at seq 10, a number it saw before.
    node = ScriptedNode("join", ack(2))
    node.seq = 9
    node.send(hello_frame(2, node.next_seq(), 111))
    try:
        with NodeClient.connect("mem://join") as client:
            for _ in range(20):
                node.send(status_frame(2, node.next_seq(), 1_000_000 + node.seq))
            node.seq = -1
            node.send(hello_frame(2, node.next_seq(), 222))
            for _ in range(20):
                node.send(status_frame(2, node.next_seq(), 5_000 + node.seq))
            wait_until(lambda: client.latest_status is not None and client.latest_status.seq == 20)
            assert client.decoder.nodes[2].seq_resets == 1  # (called late, at seq 10)
            assert client.reboots == 1 and client.hello is not None and client.hello.boot_id == 222
    finally:
        node.close()


# ---- the real firmware

@pytest.fixture()
def emulated(tmp_path: Path) -> Any:
    with EmulatedNode(imus=2, node_id=2, rate_hz=100, workdir=tmp_path / "emu") as node:
        yield node


def test_commands_are_acknowledged_and_nacks_raise_with_the_error_name(emulated: EmulatedNode) -> None:
    with NodeClient.connect(f"serial://{emulated.pty_path}") as client:
        assert client.hello is not None and client.node_id == 2 and client.hello.n_imus == 2
        ack_ = client.command(Cmd.IDENTIFY, (100).to_bytes(2, "little"))
        assert isinstance(ack_, Ack) and ack_.command == Cmd.IDENTIFY
        with pytest.raises(NodeError) as info:
            client.set_rate(7)
        assert str(info.value) == f"node 2 (serial://{emulated.pty_path}) refused SET_RATE: BAD_VALUE"
        with pytest.raises(NodeError, match="refused command 99: UNKNOWN_COMMAND"):
            client.command(99)
        with pytest.raises(NodeError, match="refused START: BAD_LENGTH"):
            client.command(Cmd.START, b"\x01")
        client.set_rate(200)
        hello = client.request_hello()
        assert hello.rate_hz == 200


def test_status_polling_and_time_sync_and_stats(emulated: EmulatedNode) -> None:
    with NodeClient.connect(emulated.pty_path or "") as client:
        status = client.request_status()
        assert client.latest_status is status and status.node_id == 2 and status.n_imus == 2
        probes = client.time_sync_burst(8)
        assert probes and all(p.t1_device_us <= p.t2_device_us and p.t0_host_s < p.t3_host_s for p in probes)
        assert all(p.rtt_s >= 0 for p in probes)
        wait_until(lambda: client.stats().samples > 0)
        stats = client.stats()
        assert stats.node_id == 2 and stats.lost_frames == 0 and stats.crc_errors == 0
        assert stats.rtt_ms is not None and stats.rtt_ms == min(p.rtt_s for p in probes) * 1e3
        assert stats.latency_ms == stats.rtt_ms / 2
        assert stats.rate_hz == 100.0  # nothing lost: the nominal rate on the device clock


def test_a_reboot_mid_stream_is_detected_and_the_client_goes_on(tmp_path: Path) -> None:
    samples_after: list[int] = []
    with EmulatedNode(imus=2, node_id=2, rate_hz=100, reboot_after_s=1.0, workdir=tmp_path / "emu") as node:
        with NodeClient.connect(f"serial://{node.pty_path}") as client:
            first = client.hello
            assert first is not None
            client.listeners.append(
                lambda m, t: samples_after.append(m.seq) if isinstance(m, Samples) and client.reboots else None)
            wait_until(lambda: client.reboots == 1 and len(samples_after) >= 10)
            assert client.hello is not None and client.hello.boot_id != first.boot_id
            assert node.restarts == 1
            assert client.command(Cmd.GET_STATUS).command == Cmd.GET_STATUS
            assert client.stats().lost_frames == 0 and client.reboots == 1


def test_a_pty_closed_and_reopened_is_reconnected_and_streaming_goes_on(tmp_path: Path) -> None:
    port = tmp_path / "node.pty"
    with EmulatedNode(imus=2, node_id=2, rate_hz=100, reopen_after=(0.5, 0.3), pty_link=port,
                      workdir=tmp_path / "emu") as node:
        with NodeClient.connect(f"serial://{port}") as client:
            wait_until(lambda: client.stats().samples > 0)
            wait_until(lambda: client.reconnects == 1)
            assert node.reopens == 1
            samples = client.stats().samples
            wait_until(lambda: client.stats().samples > samples)
            assert client.command(Cmd.GET_STATUS).command == Cmd.GET_STATUS
            # frames sent while no pty was open are lost, and counted as such
            assert client.stats().lost_frames > 0 and client.reboots == 0
