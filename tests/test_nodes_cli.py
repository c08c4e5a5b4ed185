"""`imusic nodes`: finds an emulated node on a pty given as an argument and one announcing itself on
UDP, the real firmware under MicroPython in both cases."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from imusic.emulation.launcher import EmulatedNode, build_layout, node_config_for
from imusic.protocol import Flag, Hello, StreamDecoder
from testenv import assert_one_line_error, run_cli

WAIT_S = 20.0  # a guard against a hung node, not a timing requirement


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_announcement(port: int) -> None:
    """Until the announcing node is up (then the port is let go for the CLI to bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))
        s.settimeout(WAIT_S)
        decoder = StreamDecoder()
        deadline = time.monotonic() + WAIT_S
        while True:
            assert time.monotonic() < deadline
            data, _ = s.recvfrom(8192)
            if any(isinstance(m, Hello) and m.flags & Flag.ANNOUNCE for m in decoder.feed(data)):
                return


def test_nodes_lists_a_pty_node_and_a_udp_announcer(tmp_path: Path) -> None:
    port = free_udp_port()
    # No host in its config: the node announces itself on `port` until a host sends it a COMMAND.
    announcing = node_config_for(build_layout(3), 8, 100, {"type": "udp", "host": None, "port": port})
    with EmulatedNode(imus=2, node_id=6, rate_hz=60, workdir=tmp_path / "pty") as pty_node, \
            EmulatedNode(imus=3, node_id=8, link=f"udp:127.0.0.1:{port}", node_config=announcing,
                         workdir=tmp_path / "udp"):
        wait_for_announcement(port)
        proc = run_cli("nodes", "--no-scan", str(pty_node.pty_path), "--udp", f"127.0.0.1:{port}",
                       "--timeout", "2.5", "--json")
        text = run_cli("nodes", "--no-scan", str(pty_node.pty_path), "--no-udp", "--timeout", "3")
    assert proc.returncode == 0, proc.stderr
    nodes = {n["node_id"]: n for n in json.loads(proc.stdout)}
    assert set(nodes) == {6, 8}
    serial_node, udp_node = nodes[6], nodes[8]
    assert serial_node["url"] == str(pty_node.pty_path) and serial_node["imus"] == 2
    assert serial_node["board"] == "emulated" and serial_node["rate_hz"] == 60 and not serial_node["announced"]
    assert serial_node["sites"] == ["imu0", "imu1"]
    assert udp_node["url"].startswith("udp://127.0.0.1:") and udp_node["announced"]
    assert udp_node["imus"] == 3 and udp_node["sites"] == ["imu0", "imu1", "imu2"]
    assert text.returncode == 0, text.stderr
    line = next(row for row in text.stdout.splitlines() if str(pty_node.pty_path) in row)
    assert line.split()[:4] == ["6", "emulated", serial_node["firmware"], "2"]


def test_nodes_says_so_when_nothing_answers() -> None:
    proc = run_cli("nodes", "--no-scan", "--udp", f"127.0.0.1:{free_udp_port()}", "--timeout", "0.3")
    assert proc.returncode == 0 and "no nodes answered" in proc.stdout


def test_nodes_refuses_bad_arguments_in_one_line() -> None:
    assert_one_line_error(run_cli("nodes", "--timeout", "soon"), "--timeout must be a number")
    assert_one_line_error(run_cli("nodes", "--no-scan", "--udp", "nowhere"), "--udp must be HOST:PORT")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        assert_one_line_error(run_cli("nodes", "--no-scan", "--udp", f"127.0.0.1:{port}"), "in use")
