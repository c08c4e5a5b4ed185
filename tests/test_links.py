"""imusic.links: each backend against the real firmware under MicroPython where it has a wire
(serial on an emulated node's pty, UDP on 127.0.0.1, emu://), and the in-memory pair."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from imusic.emulation.launcher import EmulatedNode
from imusic.links import Link, LinkClosed, LinkError, Received, open_link, parse_url
from imusic.links.mem import mem_pair
from imusic.protocol import Ack, Cmd, Hello, Samples, StreamDecoder, encode_command
from testenv import assert_one_line_error, run_cli

WAIT_S = 20.0  # a guard against a hung node, not a timing requirement


def read_until(link: Link, pred: Callable[[list[Any], list[Received]], bool]) -> tuple[list[Any], list[Received]]:
    """Read and decode until pred(messages, receiveds) holds."""
    decoder = StreamDecoder()
    messages: list[Any] = []
    got: list[Received] = []
    deadline = time.monotonic() + WAIT_S
    while not pred(messages, got):
        assert time.monotonic() < deadline, f"timed out; last messages {messages[-3:]}"
        for received in link.read(0.1):
            got.append(received)
            messages += decoder.feed(received.data)
    return messages, got


# ---- URLs

def test_urls_parse_into_scheme_target_and_params() -> None:
    p = parse_url("serial:///dev/ttyACM0?baud=115200")
    assert (p.scheme, p.path, p.params) == ("serial", "/dev/ttyACM0", {"baud": "115200"})
    assert parse_url("/dev/pts/3").scheme == "serial" and parse_url("COM3").path == "COM3"
    assert parse_url("udp://:50100").host_port() == ("127.0.0.1", 50100)
    assert parse_url("udp://0.0.0.0:7").host_port() == ("0.0.0.0", 7)
    assert parse_url("file://rec.imu?pace=recorded").path == "rec.imu"
    with pytest.raises(LinkError, match="twice"):
        parse_url("emu://?imus=1&imus=2")


def test_unknown_scheme_and_bad_parameters_are_link_errors() -> None:
    with pytest.raises(LinkError, match="unknown link scheme 'bluetooth'"):
        open_link("bluetooth://aa:bb")
    with pytest.raises(LinkError, match="unknown parameter 'speed'"):
        open_link("serial:///dev/null?speed=9600")
    with pytest.raises(LinkError, match="baud must be an integer"):
        open_link("serial:///dev/null?baud=fast")
    with pytest.raises(LinkError, match="HOST:PORT"):
        open_link("udp://localhost")


def test_file_scheme_is_found_without_importing_it_first() -> None:
    # imusic.links.file registers itself when open_link first meets file://
    with pytest.raises(LinkError) as info:
        open_link("file:///nonexistent/recording.imu")
    assert "unknown link scheme" not in str(info.value)


def test_cli_reports_an_unknown_scheme_and_a_missing_port_in_one_line() -> None:
    assert_one_line_error(run_cli("nodes", "--no-scan", "--no-udp", "carrier-pigeon://coop"),
                          "unknown link scheme 'carrier-pigeon'")
    assert_one_line_error(run_cli("nodes", "--no-scan", "--no-udp", "/dev/imusic-no-such-port"),
                          "/dev/imusic-no-such-port", "no such port")


# ---- mem

def test_mem_pair_carries_writes_both_ways_and_reports_the_other_end_closing() -> None:
    a = open_link("mem://links-test")
    b = mem_pair("links-test")
    before = time.monotonic()
    a.write(b"one")
    a.write(b"two")
    got = b.read(1.0)
    assert [r.data for r in got] == [b"one", b"two"]  # one Received per write
    assert all(r.source == "mem://links-test" and before <= r.t_host_s <= time.monotonic() for r in got)
    assert b.read(0.01) == []
    b.write(b"back")
    assert [r.data for r in a.read(1.0)] == [b"back"]
    with pytest.raises(LinkError, match="already open"):
        open_link("mem://links-test")
    a.write(b"last words")
    a.close()
    assert [r.data for r in b.read(1.0)] == [b"last words"]  # what was written is still read
    with pytest.raises(LinkClosed):
        b.read(1.0)
    with pytest.raises(LinkClosed):
        a.write(b"after close")
    b.close()
    with open_link("mem://links-test") as again:  # both ends closed: the name is free again
        mem_pair("links-test").write(b"new")
        assert [r.data for r in again.read(1.0)] == [b"new"]


def test_mem_read_wakes_up_for_a_write_from_another_thread() -> None:
    a = open_link("mem://links-wake")
    b = mem_pair("links-wake")
    threading.Timer(0.05, lambda: b.write(b"late")).start()
    assert [r.data for r in a.read(None)] == [b"late"]
    a.close()
    b.close()


# ---- serial, on an emulated node's pty

@pytest.fixture()
def pty_node(tmp_path: Path) -> Any:
    with EmulatedNode(imus=2, node_id=4, rate_hz=100, workdir=tmp_path / "emu") as node:
        yield node


def test_serial_link_on_a_pty_reads_frames_and_sends_commands(pty_node: EmulatedNode) -> None:
    path = pty_node.pty_path
    assert path is not None
    with open_link(f"serial://{path}?baud=921600") as link:
        _, got = read_until(link, lambda m, _: any(isinstance(x, Samples) for x in m))
        assert all(r.source == f"serial://{path}?baud=921600" for r in got)
        link.write(encode_command(4, 77, Cmd.GET_HELLO))

        def hello_after_ack(m: list[Any], _: Any) -> bool:
            acks = [i for i, x in enumerate(m) if isinstance(x, Ack) and x.cmd_seq == 77]
            return bool(acks) and any(isinstance(x, Hello) for x in m[acks[0]:])

        read_until(link, hello_after_ack)
        with pytest.raises(LinkError, match="busy"):
            open_link(path)  # bare path, same port: opened exclusively
    with open_link(path) as bare:  # closed: free again
        read_until(bare, lambda m, _: any(isinstance(x, Samples) for x in m))


def test_serial_link_reports_a_closed_pty_as_link_closed(tmp_path: Path) -> None:
    node = EmulatedNode(imus=1, node_id=4, workdir=tmp_path / "emu").start()
    try:
        assert node.pty_path is not None
        link = open_link(node.pty_path)
        read_until(link, lambda m, _: bool(m))
    finally:
        node.stop()  # closes the pty under the open link: a pulled cable
    with pytest.raises(LinkClosed):
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            link.read(0.1)
    link.close()
    with pytest.raises(LinkClosed):
        link.read(0.1)


# ---- udp, on 127.0.0.1

def test_udp_link_gives_one_received_per_datagram_and_answers_the_source(tmp_path: Path) -> None:
    with open_link("udp://127.0.0.1:0") as link:
        port = link.local_address[1]  # type: ignore[attr-defined]
        with EmulatedNode(imus=2, node_id=5, link=f"udp:127.0.0.1:{port}", workdir=tmp_path / "emu"):
            decoder = StreamDecoder()
            deadline = time.monotonic() + WAIT_S
            source = None
            samples = 0
            while samples < 5:
                assert time.monotonic() < deadline
                for received in link.read(0.1):
                    msgs = decoder.feed(received.data)
                    assert len(msgs) == 1  # the node sends one frame per datagram
                    assert received.source.startswith("udp://127.0.0.1:")
                    source = received.source
                    samples += isinstance(msgs[0], Samples)
            assert source is not None
            link.write(encode_command(5, 900, Cmd.GET_STATUS), dest=source)
            acked = False
            while not acked:
                assert time.monotonic() < deadline
                for received in link.read(0.1):
                    acked |= any(isinstance(m, Ack) and m.cmd_seq == 900 for m in decoder.feed(received.data))
            with pytest.raises(LinkError, match="in use"):
                open_link(f"udp://127.0.0.1:{port}")
    with pytest.raises(LinkClosed):
        link.read(0)


def test_udp_without_a_host_binds_the_loopback() -> None:
    with open_link("udp://:0") as link:
        assert link.local_address[0] == "127.0.0.1"  # type: ignore[attr-defined]
        with pytest.raises(ValueError):
            link.write(b"x")  # a shared link needs to know which node


# ---- emu

def test_emu_link_starts_a_node_on_a_pty_and_stops_it_on_close() -> None:
    link = open_link("emu://?imus=3&rate=60&node_id=9&seed=4")
    node = link.node  # type: ignore[attr-defined]
    try:
        messages, _ = read_until(link, lambda m, _: any(isinstance(x, Hello) for x in m))
        hello = next(x for x in messages if isinstance(x, Hello))
        assert (hello.node_id, hello.n_imus, hello.rate_hz, hello.board) == (9, 3, 60, "emulated")
    finally:
        link.close()
    assert node.wait(WAIT_S) is not None  # the emulator ended with the link


def test_emu_link_refuses_bad_parameters_in_one_line() -> None:
    with pytest.raises(LinkError, match="rate must be 60, 100 or 200"):
        open_link("emu://?rate=50")
    with pytest.raises(LinkError, match="unknown parameter 'imu'"):
        open_link("emu://?imu=3")
