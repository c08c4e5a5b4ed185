"""Clock sync on the real pipeline, measured against the emulator's truth (no thresholds: a table).

Emulated nodes (the real firmware under MicroPython, realtime clock) with drifts of +200, -200 and
+73 ppm, offsets of minutes, and 0-5 ms of jitter on their node-to-host bytes (each burst's
exchanges are asymmetric) stream over ptys into an ``imusic.Session``, which fits each node's clock
from its TIME_SYNC bursts. Each emulated board reports its clock's truth (``EmulatedNode.
clock_truth()``: the host monotonic time of device time 0, the drift and the offset), so every
second, for each node, the device time of that instant maps back to the host exactly; the node's
error is ``fit.to_host_s(d) - truth.host_s(d)``. The alignment error between two nodes is the
difference of their errors (what a frame built from both sees); a bias the nodes share (e.g. the
link's one-way latency, which no two-way exchange can see) cancels there but shows in the per-node
rows.

Runs in real time: ``.venv/bin/python bench/bench_sync_emulated.py [--minutes 10] [--nodes 3]``
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import threading
import time

import numpy as np
from imusic.emulation.launcher import ClockTruth, EmulatedNode
from imusic.session import Session

# node id -> (drift_ppm, offset_us)
CLOCKS = {1: (200, 3_700_000), 2: (-200, 123_456_789), 3: (73, 86_400_250)}
SAMPLE_PERIOD_S = 1.0


def rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(values * values))) if values.size else float("nan")


def fmt_ms(value: float) -> str:
    return f"{'n/a':>8}" if math.isnan(value) else f"{value * 1e3:8.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to run (real time)")
    parser.add_argument("--nodes", type=int, default=3, choices=(2, 3))
    parser.add_argument("--jitter-ms", type=float, default=5.0, help="node-to-host delay U(0, J) ms")
    parser.add_argument("--imus", type=int, default=2, help="IMUs per node (the stream the session aligns)")
    parser.add_argument("--rate", type=int, default=100, help="sample rate per node (Hz)")
    args = parser.parse_args()

    nodes = {node_id: EmulatedNode(imus=args.imus, rate_hz=args.rate, node_id=node_id, seed=node_id, link="pty",
                                   clock="realtime", drift_ppm=drift_ppm, offset_us=offset_us,
                                   jitter_ms=args.jitter_ms)
             for node_id, (drift_ppm, offset_us) in list(CLOCKS.items())[:args.nodes]}
    for node in nodes.values():
        node.start()
    t_rows: list[float] = []
    err_rows: list[list[float]] = []  # per sample: each node's error (s), NaN before its fit is ready
    try:
        # wait for the ptys and each board's first clock reading
        deadline = time.monotonic() + 10.0
        while any(n.pty_path is None or n.clock_truth() is None for n in nodes.values()):
            if time.monotonic() > deadline:
                print("emulated nodes did not come up", file=sys.stderr)
                return 1
            time.sleep(0.05)
        with Session.open([str(n.port_path) for n in nodes.values()]) as session:
            # drain the aligned frames so the session's queue does not grow
            threading.Thread(target=lambda: sum(1 for _ in session.frames()), daemon=True).start()
            truths: dict[int, ClockTruth] = {}
            t_start = time.monotonic()
            next_t = t_start + SAMPLE_PERIOD_S
            last_report = t_start
            while True:
                time.sleep(max(0.0, next_t - time.monotonic()))
                next_t += SAMPLE_PERIOD_S
                fits = session.clock_fits()
                now_s = time.monotonic()
                row = []
                for node_id, node in nodes.items():
                    truth = node.clock_truth()  # re-read: a reboot would bring a new epoch
                    fit = fits.get(node_id)
                    if truth is None or fit is None or not fit.ready:
                        row.append(float("nan"))
                        continue
                    truths[node_id] = truth
                    device_us = truth.device_us(now_s)
                    row.append(float(fit.to_host_s(device_us)) - truth.host_s(device_us))
                t_rows.append(now_s - t_start)
                err_rows.append(row)
                if now_s - last_report >= 60.0:
                    last_report = now_s
                    print(f"  {t_rows[-1]:6.0f} s: errors (ms) "
                          + " ".join(f"{e * 1e3:+.3f}" for e in row), file=sys.stderr, flush=True)
                if now_s - t_start >= args.minutes * 60.0:
                    break
            report(args, nodes, session, t_rows, err_rows)
    finally:
        for node in nodes.values():
            node.stop()
    return 0


def report(args: argparse.Namespace, nodes: dict[int, EmulatedNode], session: Session, t_rows: list[float],
           err_rows: list[list[float]]) -> None:
    t_s = np.array(t_rows)
    err_s = np.array(err_rows)  # (samples, nodes)
    ids = list(nodes)
    print(f"Clock sync vs emulator truth: {len(ids)} emulated nodes on ptys, {args.imus} IMUs at {args.rate} Hz "
          f"each, jitter 0-{args.jitter_ms:g} ms, {args.minutes:g} min, one sample per second")
    print()
    print("Alignment error between nodes (pairwise difference of the nodes' errors), ms")
    print(f"{'window':<14} {'pairs':>5} {'samples':>8} {'RMS':>8} {'p95 |e|':>8} {'max |e|':>8}")
    for label, start_s in (("all", 0.0), ("after 10 s", 10.0), ("after 1 min", 60.0)):
        sel = t_s >= start_s
        diffs = []
        for a, b in itertools.combinations(range(len(ids)), 2):
            d = err_s[sel, a] - err_s[sel, b]
            diffs.append(d[~np.isnan(d)])
        pooled = np.concatenate(diffs) if diffs else np.array([])
        p95 = float(np.percentile(np.abs(pooled), 95)) if pooled.size else float("nan")
        peak = float(np.abs(pooled).max()) if pooled.size else float("nan")
        print(f"{label:<14} {len(diffs):>5} {pooled.size:>8} {fmt_ms(rms(pooled))} {fmt_ms(p95)} {fmt_ms(peak)}")
    print()
    settle_s = 60.0 if args.minutes >= 2 else 10.0  # a run of a minute or so: after its first 10 s
    print(f"Per node, after the first {settle_s:g} s: error = fit - truth (ms), drift now (ppm), fit now")
    print(f"{'node':>4} {'RMS':>8} {'mean':>8} {'max |e|':>8} {'drift inj':>10} {'drift fit':>10} "
          f"{'rtt min ms':>10} {'points':>6}")
    late = t_s >= settle_s
    fits = session.clock_fits()
    for col, node_id in enumerate(ids):
        e = err_s[late, col]
        e = e[~np.isnan(e)]
        fit = fits.get(node_id)
        fitted = f"{fit.device_drift_ppm:10.2f}" if fit is not None and fit.ready else f"{'n/a':>10}"
        rtt = fit.rtt_min_s if fit is not None else None
        rtt_txt = f"{rtt * 1e3:10.3f}" if rtt is not None else f"{'n/a':>10}"
        points = fit.n_points if fit is not None and fit.ready else 0
        mean = float(e.mean()) if e.size else float("nan")
        peak = float(np.abs(e).max()) if e.size else float("nan")
        print(f"{node_id:>4} {fmt_ms(rms(e))} {fmt_ms(mean)} {fmt_ms(peak)} {nodes[node_id].drift_ppm:10d} "
              f"{fitted} {rtt_txt} {points:>6}")


if __name__ == "__main__":
    sys.exit(main())
