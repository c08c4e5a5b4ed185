"""``imusic demo``: the main job on the emulated rig, camera-free, end to end.

A simulated subject wears the imusic layout; the real node firmware runs under MicroPython on
register-level emulated chips fed by the face simulator and streams over a pty, which the host
opens as it would a USB board. The session aligns the frames, the feature function takes head
motion out, and the shipped model (int8 TFLite via LiteRT) predicts the 52 ARKit blendshapes,
one inference per frame, printed live as bars. The rig is calibrated first (emulated gyro,
accelerometer, magnetometer and neutral-face steps; cached per seed). At the end the predictions
are put on the simulator's truth with the same aligner real iPhone pairs use, and scored.

``--raw`` keeps the older view: emulated nodes straight into the decoder, per-node rates.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

SHOWN = ("jawOpen", "mouthSmileLeft", "mouthSmileRight", "eyeBlinkLeft", "eyeBlinkRight", "browInnerUp",
         "mouthFunnel", "cheekSquintLeft")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to stream (default 20)")
    parser.add_argument("--seed", type=int, default=7, help="the simulated subject and rig (default 7)")
    parser.add_argument("--scenario", default="expressions", help="what the subject does (default expressions)")
    parser.add_argument("--model", default="default", help="model directory or file (default: the shipped model)")
    parser.add_argument("--precision", default="int8", choices=("int8", "float32"), help="model precision")
    parser.add_argument("--no-calibrate", action="store_true", help="skip the emulated calibration")
    raw = parser.add_argument_group("raw view", "emulated nodes straight into the decoder (no model)")
    raw.add_argument("--raw", action="store_true", help="show per-node rates instead of blendshapes")
    raw.add_argument("--nodes", type=int, default=2, help="emulated nodes (default 2)")
    raw.add_argument("--imus", type=int, default=11, help="IMUs per node (default 11)")
    raw.add_argument("--rate", type=int, default=100, choices=(60, 100, 200), help="sample rate in Hz")


def run(args: argparse.Namespace) -> int:
    from imusic.errors import UserError

    if not 1.0 <= args.seconds <= 3600.0:
        raise UserError("--seconds must be 1 .. 3600")
    if args.raw:
        return _run_raw(args)
    return _run_model(args)


def _bar(value: float, width: int = 10) -> str:
    n = int(round(max(0.0, min(1.0, value)) * width))
    return "#" * n + "." * (width - n)


def _calibration(layout_name: str, seed: int, log: Any) -> Path:
    """The rig's calibration from emulated calibration takes, cached per layout and seed."""
    import os

    from imusic.calibration.emulated import emulated_calibration

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "imusic" / "demo"
    path = cache / f"calibration-{layout_name}-{seed}.json"
    if path.exists():
        log(f"calibration: {path} (cached)")
        return path
    cache.mkdir(parents=True, exist_ok=True)
    log("calibrating the emulated rig: gyro, accelerometer, magnetometer, neutral face (once per seed) ...")
    emulated_calibration(layout=layout_name, seed=seed, save_to=path)
    log(f"calibration: {path}")
    return path


def _run_model(args: argparse.Namespace) -> int:
    import tempfile
    import time

    import numpy as np

    from imusic.arkit import BLENDSHAPES
    from imusic.data import align_signals, resample_labels
    from imusic.emulation.launcher import EmulatedNode
    from imusic.errors import UserError
    from imusic.evaluate import mae_tables
    from imusic.infer import BlendshapeStream, load_model
    from imusic.placement import load_layout
    from imusic.session import Session
    from imusic.sim.rig import Rig
    from imusic.sim.scenarios import Subject, scenario, simulate_take, write_table

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    model = load_model(args.model, precision=args.precision)
    layout = load_layout(model.spec.layout)
    sc = scenario(args.scenario)
    if not sc.worn:
        raise UserError(f"--scenario {sc.name} is not worn on a face: choose expressions, expressions_walk, "
                        "neutral or neutral_head_motion")
    seed = int(args.seed)
    cal_path = None if args.no_calibrate else _calibration(layout.name, seed, log)
    stream = BlendshapeStream(model, layout, cal_path)

    rig = Rig.random(layout, seed)
    sim_s = args.seconds + 10.0  # longer than the run: the table must not loop inside it
    log(f"simulating {sim_s:g} s of {sc.name} for subject {seed} on the {layout.name} layout ...")
    take = simulate_take(rig, sc.name, duration_s=sim_s, subject=Subject.random(seed))

    show = [BLENDSHAPES.index(n) for n in SHOWN]
    preds: list[np.ndarray] = []
    times: list[float] = []
    chin: list[np.ndarray] = []
    chin_ok: list[bool] = []
    infer_ms: list[float] = []
    from imusic.data import chin_site

    ci = chin_site(layout.face_sites)
    with tempfile.TemporaryDirectory(prefix="imusic-demo-") as tmp:
        nodes = []
        for node_id in layout.node_ids:
            nt = take.nodes[node_id]
            table = Path(tmp) / f"table-{node_id}.bin"
            write_table(table, take.period_us, nt.accel_mps2, nt.gyro_rads, nt.mag_uT)
            imus = layout.emulator_imus(node_id)
            for entry in imus:
                entry["temp_cdeg"] = take.temp_register_cdeg(str(entry["site"]))
            clock = rig.clocks[node_id]
            nodes.append(EmulatedNode(imus=imus, rate_hz=layout.rate_hz, node_id=node_id, link="pty", seed=seed,
                                      source={"kind": "table", "path": str(table), "loop": True,
                                              "start_us": clock.offset_us, "seed": seed},
                                      max_seconds=args.seconds + 15, offset_us=clock.offset_us,
                                      drift_ppm=round(clock.drift_ppm), uid=clock.uid))
        try:
            for node in nodes:
                node.start()
            urls = [str(node.pty_path) for node in nodes]
            print(f"imusic demo: {len(layout.imus)} IMUs ({layout.name} layout) on {len(nodes)} emulated node(s) "
                  f"over {', '.join(urls)}; model {model.path.name} ({model.precision}, {model.backend}); "
                  f"simulated data", flush=True)
            print("   t   " + " ".join(f"{n[:14]:>14}" for n in SHOWN), flush=True)
            with Session.open(urls, rate_hz=model.spec.rate_hz) as session:
                t_end = time.monotonic() + args.seconds
                next_print = time.monotonic() + 1.0
                for frame in session.frames(timeout_s=5.0):
                    t0 = time.perf_counter()
                    y = stream.update(frame)
                    infer_ms.append((time.perf_counter() - t0) * 1e3)
                    preds.append(y)
                    times.append(frame.t_host_s)
                    feats, valid = stream.last_features or (None, None)
                    if ci is not None and feats is not None and valid is not None:
                        chin.append(feats[ci, 3:6].astype(np.float64))
                        chin_ok.append(bool(valid[ci]))
                    now = time.monotonic()
                    if now >= next_print:
                        next_print += 1.0
                        print(f"{len(preds) / model.spec.rate_hz:5.1f}s " +
                              " ".join(f"{_bar(float(y[i])):>10} {y[i]:.2f}" for i in show), flush=True)
                    if now >= t_end:
                        break
        finally:
            for node in nodes:
                node.stop()

    if not preds:
        raise UserError("no frames arrived from the emulated rig")
    summary = f"{len(preds)} frames; features + inference per frame median {np.median(infer_ms):.2f} ms"
    if ci is not None and len(chin) == len(preds):
        t = np.asarray(times)
        al = align_signals(t, np.asarray(chin), np.asarray(chin_ok), None, take.t_s, take.blendshapes,
                           prior_offset_s=float(t[0] - take.t_s[0]), max_lag_s=max(5.0, args.seconds))
        if al.ok:
            truth, has = resample_labels(t, take.t_s, take.blendshapes, al.offset_s)
            keep = has & (np.arange(len(t)) >= model.spec.window_frames)
            if keep.any():
                err = np.abs(np.asarray(preds)[keep] - truth[keep]).sum(axis=0)
                tables = mae_tables(err, int(keep.sum()))
                regions = ", ".join(f"{k} {v:.3f}" for k, v in tables["mae_by_region"].items())
                summary += (f"; MAE against the simulator's truth {tables['mae']:.3f} over {int(keep.sum())} frames "
                            f"({regions}); truth placed by jaw correlation, r = {al.peak_r:.2f}")
        else:
            summary += f"; not scored (truth alignment refused: {al.reason})"
    print(summary, flush=True)
    return 0


def _run_raw(args: argparse.Namespace) -> int:
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
