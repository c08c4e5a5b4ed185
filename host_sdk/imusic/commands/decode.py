"""``imusic decode PATH [--json]``: decode a raw byte-stream file and summarise it.

Exit status: 0 when the file holds at least one intact frame; 1 when it was read but holds no
imusic frame at all (one error line on stderr; with ``--json`` the counters are still printed on
stdout); 2 when it cannot be read (missing, a directory, no permission).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

CHUNK_BYTES = 1 << 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="file holding a raw imusic byte stream (as written by a serial or file link)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")


def run(args: argparse.Namespace) -> int:
    from imusic.errors import read_error
    from imusic.protocol import Flag, Hello, StreamDecoder

    decoder = StreamDecoder()
    hellos: dict[int, Hello] = {}
    try:
        with open(args.path, "rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                for msg in decoder.feed(chunk):
                    if isinstance(msg, Hello) and not msg.flags & Flag.HOST:
                        hellos[msg.node_id] = msg
    except OSError as exc:
        raise read_error(args.path, exc, "a byte-stream file") from None
    for msg in decoder.flush():
        if isinstance(msg, Hello) and not msg.flags & Flag.HOST:
            hellos[msg.node_id] = msg

    summary = _summary(decoder, hellos)
    if args.json:
        print(json.dumps(summary))
    else:
        _print_human(args.path, summary)
    if decoder.stats.frames == 0:
        print(f"imusic: error: no imusic frames found in {args.path} ({decoder.stats.bytes} bytes)", file=sys.stderr)
        return 1
    return 0


def _summary(decoder: Any, hellos: dict[int, Any]) -> dict[str, Any]:
    out: dict[str, Any] = decoder.stats.as_dict()
    nodes: dict[str, Any] = {}
    for node_id in sorted(decoder.nodes):
        node = decoder.nodes[node_id].as_dict()
        node["rate_hz"] = round(node["rate_hz"], 3)
        hello = hellos.get(node_id)
        if hello is not None:
            node["board"] = hello.board
            node["firmware"] = f"{hello.fw_major}.{hello.fw_minor}.{hello.fw_patch}"
            node["sites"] = [imu.site for imu in hello.imus]
        nodes[str(node_id)] = node
    out["nodes"] = nodes
    return out


def _print_human(path: str, s: dict[str, Any]) -> None:
    rejected = ", ".join(f"{s[k]} {k.replace('_', ' ')}" for k in
                         ("crc_errors", "bad_length", "truncated", "bad_payload", "unknown_type", "version_mismatch") if s[k])
    print(f"{path}: {s['bytes']} bytes, {s['frames']} intact frames, {s['garbage_bytes']} garbage bytes"
          + (f" ({rejected})" if rejected else ""))
    for node_id, n in s["nodes"].items():
        span = ""
        if n["first_us"] is not None:
            span = f", device time {n['first_us'] / 1e6:.3f} .. {n['last_us'] / 1e6:.3f} s"
        board = f" [{n['board']}, firmware {n['firmware']}]" if "board" in n else ""
        print(f"  node {node_id}{board}: {n['imus']} IMUs, {n['samples']} IMU-samples at {n['rate_hz']:.1f} Hz{span}; "
              f"{n['frames']} frames, {n['lost_frames']} lost, {n['duplicates']} duplicates, "
              f"{n['out_of_order']} out of order, {n['seq_resets']} restarts")
