"""``imusic nodes``: find imusic nodes on serial ports and on UDP.

Every serial port the system lists (plus any path or link URL given as an argument) is opened and
sent GET_HELLO; the ones that answer with a HELLO within ``--timeout`` are nodes. At the same time
a UDP socket on ``--udp`` (default 127.0.0.1:50100) collects the HELLOs that nodes without a host
announce once a second. A port given as an argument that cannot be opened is an error; one the
system lists but that is busy or not a node is skipped.
"""

from __future__ import annotations

import argparse
from typing import Any

DEFAULT_UDP = "127.0.0.1:50100"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ports", nargs="*", metavar="PORT",
                        help="serial ports or link URLs to ask as well (e.g. /dev/pts/3, serial:///dev/ttyUSB0)")
    parser.add_argument("--udp", default=DEFAULT_UDP, metavar="HOST:PORT",
                        help=f"where to listen for UDP announcements (default {DEFAULT_UDP})")
    parser.add_argument("--no-udp", action="store_true", help="do not listen for UDP announcements")
    parser.add_argument("--no-scan", action="store_true", help="ask only the PORTs given, not the system's list")
    parser.add_argument("--timeout", default="2", metavar="S", help="seconds to wait for answers (default 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON list of nodes")


def run(args: argparse.Namespace) -> int:
    import json
    import threading
    import time

    from imusic.errors import UserError
    from imusic.links import Link, LinkClosed, LinkError, open_link
    from imusic.protocol import (
        BROADCAST_NODE,
        Cmd,
        Hello,
        StreamDecoder,
        encode_command,
    )

    try:
        timeout_s = float(args.timeout)
    except ValueError:
        raise UserError(f"--timeout must be a number of seconds, not {args.timeout!r}") from None
    if not 0 < timeout_s <= 600:
        raise UserError("--timeout must be more than 0 and at most 600 seconds")

    # Open everything first, so that a bad argument fails before any waiting.
    links: list[tuple[Link, bool]] = []  # (link, shared by many nodes: UDP)
    try:
        for port in args.ports:
            links.append((open_link(port), port.startswith("udp://")))
        if not args.no_scan:
            given = {_device_of(p) for p in args.ports}
            for device in _system_ports():
                if device in given:
                    continue
                try:
                    links.append((open_link(device), False))
                except LinkError:
                    pass  # busy or gone: someone else's port, not ours to report
        if not args.no_udp:
            links.append((open_link(_udp_url(args.udp)), True))
    except BaseException:
        for link, _ in links:
            link.close()
        raise

    found: dict[tuple[str, int], tuple[Hello, str]] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + timeout_s

    def listen(link: Link, shared: bool) -> None:
        decoders: dict[str, StreamDecoder] = {}
        asked = 0.0
        while True:
            now = time.monotonic()
            if now >= deadline:
                return
            try:
                if not shared and now - asked >= 0.5:
                    # ask again now and then: a node busy booting may miss the first question
                    link.write(encode_command(BROADCAST_NODE, int(now * 1000) & 0xFFFF, Cmd.GET_HELLO))
                    asked = now
                batch = link.read(min(0.1, deadline - now))
            except LinkClosed:
                return
            for received in batch:
                decoder = decoders.setdefault(received.source, StreamDecoder())
                for msg in decoder.feed(received.data):
                    if isinstance(msg, Hello):
                        with lock:
                            found[(received.source, msg.node_id)] = (msg, received.source)
                if not shared and found_on(link.url):
                    return

    def found_on(url: str) -> bool:
        with lock:
            return any(source == url for source, _ in found)

    threads = [threading.Thread(target=listen, args=pair, daemon=True) for pair in links]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for link, _ in links:
            link.close()

    nodes = [_describe(hello, url) for (url, _), (hello, _) in sorted(found.items(), key=lambda kv: (kv[0][1], kv[0][0]))]
    if args.json:
        print(json.dumps(nodes, indent=1))
        return 0
    if not nodes:
        where = "serial ports" + ("" if args.no_udp else f" or UDP {args.udp}")
        print(f"no nodes answered on {where} within {timeout_s:g} s")
        return 0
    print(f"{'node':>4}  {'board':<10} {'firmware':<9} {'IMUs':>4}  {'url':<32} sites")
    for n in nodes:
        print(f"{n['node_id']:>4}  {n['board']:<10} {n['firmware']:<9} {n['imus']:>4}  {n['url']:<32} "
              f"{', '.join(n['sites'])}")
    return 0


def _describe(hello: object, url: str) -> dict[str, Any]:
    from imusic.protocol import Hello

    assert isinstance(hello, Hello)
    return {
        "node_id": hello.node_id,
        "board": hello.board,
        "firmware": f"{hello.fw_major}.{hello.fw_minor}.{hello.fw_patch}",
        "protocol_version": hello.protocol_version,
        "imus": hello.n_imus,
        "sites": [imu.site for imu in hello.imus],
        "rate_hz": hello.rate_hz,
        "uid": hello.uid.hex(),
        "announced": bool(hello.flags & 2),
        "url": url,
    }


def _udp_url(spec: str) -> str:
    from imusic.errors import UserError

    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"--udp must be HOST:PORT (e.g. {DEFAULT_UDP}), not {spec!r}")
    return f"udp://{host}:{port}"


def _device_of(port: str) -> str:
    return port[len("serial://"):].split("?")[0] if port.startswith("serial://") else port


def _system_ports() -> list[str]:
    try:
        from serial.tools import list_ports
    except ImportError:
        return []
    return [p.device for p in list_ports.comports()]
