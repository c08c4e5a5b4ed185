"""``imusic demo``: the main job on the emulated rig.

Starts emulated nodes (the real firmware under MicroPython, emulated IMUs), opens each node's pty
with pyserial exactly as an app opens a real board, feeds the bytes to the host decoder and prints
a live summary per node once a second: sample rate, IMU-samples per second, lost frames, CRC
errors and the first IMU's latest reading in SI units.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=2, help="emulated nodes (default 2)")
    parser.add_argument("--imus", type=int, default=11, help="IMUs per node (default 11, IMUSIC's face rig)")
    parser.add_argument("--rate", type=int, default=100, choices=(60, 100, 200), help="sample rate in Hz")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to stream (default 10)")


def run(args: argparse.Namespace) -> int:
    import select
    import time

    import numpy as np
    import serial

    from imusic.emulation.launcher import EmulatedNode
    from imusic.errors import UserError
    from imusic.protocol import Hello, Log, Samples, StreamDecoder

    if not 1 <= args.nodes <= 8:
        raise UserError("--nodes must be 1 .. 8")
    if not 1 <= args.imus <= 16:
        raise UserError("--imus must be 1 .. 16")

    nodes = [EmulatedNode(node_id=i + 1, imus=args.imus, rate_hz=args.rate, seed=i + 1, link="pty",
                          max_seconds=args.seconds + 5) for i in range(args.nodes)]
    ports: list[serial.Serial] = []
    decoders: list[StreamDecoder] = []
    hellos: dict[int, Hello] = {}
    latest: dict[int, Samples] = {}
    try:
        for node in nodes:
            node.start()
            assert node.pty_path is not None
            ports.append(serial.Serial(node.pty_path, 921600, timeout=0))
            decoders.append(StreamDecoder())
        print(f"imusic demo: {args.nodes} emulated node(s) x {args.imus} IMUs at {args.rate} Hz, "
              f"streaming over ptys ({', '.join(str(n.pty_path) for n in nodes)})", flush=True)

        t_start = time.monotonic()
        next_report = t_start + 1.0
        last_report = t_start
        last_samples: dict[tuple[int, int], int] = {}
        while time.monotonic() - t_start < args.seconds:
            readable, _, _ = select.select(ports, [], [], 0.05)
            for port in readable:
                i = ports.index(port)
                for msg in decoders[i].feed(port.read(65536)):
                    if isinstance(msg, Hello):
                        hellos[msg.node_id] = msg
                    elif isinstance(msg, Samples):
                        latest[msg.node_id] = msg
                    elif isinstance(msg, Log):
                        print(f"  node {msg.node_id} log: {msg.text}", flush=True)
            now = time.monotonic()
            if now >= next_report:
                elapsed = now - t_start
                print(f"t={elapsed:5.1f}s", flush=True)
                for i, dec in enumerate(decoders):
                    for node_id, st in dec.nodes.items():
                        per_s = (st.samples - last_samples.get((i, node_id), 0)) / (now - last_report)
                        last_samples[(i, node_id)] = st.samples
                        reading = ""
                        hello, sam = hellos.get(node_id), latest.get(node_id)
                        if hello and sam is not None and hello.imus:
                            imu0 = hello.imus[0]
                            accel_mps2 = sam.accel[-1, 0].astype(np.float64) * imu0.accel_scale
                            gyro_rads = sam.gyro[-1, 0].astype(np.float64) * imu0.gyro_scale
                            reading = (f"  {imu0.site or 'imu0'}: |a|={np.linalg.norm(accel_mps2):5.2f} m/s^2"
                                       f" |w|={np.linalg.norm(gyro_rads):5.2f} rad/s")
                        print(f"  node {node_id}: {st.imus:2d} IMUs {st.rate_hz:6.1f} Hz "
                              f"{per_s:7.0f} IMU-samples/s  lost {st.lost_frames}  "
                              f"crc {dec.stats.crc_errors}{reading}", flush=True)
                last_report = now
                next_report += 1.0
    finally:
        for port in ports:
            port.close()
        for node in nodes:
            node.stop()

    print("summary:")
    ok = True
    for dec in decoders:
        for node_id, st in dec.nodes.items():
            print(f"  node {node_id}: {st.frames} frames, {st.samples} IMU-samples, {st.rate_hz:.1f} Hz, "
                  f"lost {st.lost_frames}, CRC errors {dec.stats.crc_errors}, garbage bytes {dec.stats.garbage_bytes}")
        ok = ok and bool(dec.nodes)
    if not ok:
        raise UserError("a node sent nothing: see the emulator's stderr with `imusic emulate-node`")
    return 0
