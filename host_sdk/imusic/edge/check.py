"""``imusic edge-check``: a model on emulated aarch64 against the same file on x86.

For each precision (every ``.tflite`` its model.json lists, or the one file given):

1. feature windows: a simulated recording (``record_scenario``, ``expressions``) or ``--data``,
   through ``features_of_block`` and ``assemble_input`` with the model's normalisation;
2. the model's input tensors made once here (quantised for int8 inputs), so both machines get
   identical bytes;
3. the x86 run (LiteRT on this machine) and the aarch64 run (LiteRT's aarch64 wheel under QEMU,
   marks around every ``invoke()`` for the instruction counts), both one thread, XNNPACK on;
4. outputs compared element by element: quantised outputs within ``INT8_TOLERANCE_LSB`` of the
   output scale; float outputs within a few ulp of the output range or, when the model itself
   is more sensitive to rounding order than that, within four times the spread LiteRT's other x86
   kernels show on the same inputs (``compare_outputs``);
5. XNNPACK partitions and the ops left to built-in kernels (``guest.graph_report``), per machine.

With a model directory and ``imusic.infer`` installed it also runs the streaming runtime
(``BlendshapeStream``: features + model, frame by frame) on the recording on both machines and
compares the blendshapes (the features are float64 numpy/scipy/imufusion work whose last bits may
differ between machines, so that comparison has its own, wider tolerance).
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imusic.edge import guest as guest_side
from imusic.edge.emulator import CPUS, EdgeError, Guest, Log, prepare, stderr_log
from imusic.errors import UserError

__all__ = ["FLOAT32_FLOOR_ULPS", "FLOAT32_SPREAD_FACTOR", "INT8_TOLERANCE_LSB", "STREAM_TOLERANCE", "EdgeTarget",
           "compare_outputs", "edge_check", "format_report", "kernel_spread", "resolve_model"]

FLOAT32_FLOOR_ULPS = 4.0
FLOAT32_SPREAD_FACTOR = 4.0
INT8_TOLERANCE_LSB = 1.0
# Streaming runtime, whole pipeline (features computed on each machine): blendshape units.
STREAM_TOLERANCE = {"float32": 1e-4, "int8": 4.0}  # int8: in output LSBs (a requantised input may flip)
PRECISION_ORDER = ("float32", "float16", "int8")
SIM_SCENARIO = "expressions"
SIM_SECONDS = 8.0  # features become valid after the extractor's rest capture (about 4 s here)
SIM_SEED = 0
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # .../imusic


@dataclass
class EdgeTarget:
    """What to check: the model's metadata (None for a bare file with --data windows), its
    tflite files by precision, and its directory (the streaming runtime needs one)."""

    name: str
    spec: Any  # imusic.modelio.ModelSpec | None
    files: dict[str, Path]
    model_dir: Path | None


def _precision_of(path: Path) -> str:
    stem = path.stem.lower()
    for p in ("int8", "float16", "float32"):
        if p in stem:
            return p
    return stem


def resolve_model(model: str) -> EdgeTarget:
    """``default`` (the shipped model), a model directory, a model.json, or one ``.tflite`` file
    (with or without a model.json beside it)."""
    from imusic.modelio import ModelSpec

    if model == "default":
        path = PACKAGE_DIR / "models" / "default"
        if not (path / "model.json").exists():
            raise EdgeError(f"this imusic ships no default model ({path / 'model.json'} is missing)")
    else:
        path = Path(model)
        if not path.exists():
            raise EdgeError(f"{model}: no such model file or directory")
    if path.is_file() and path.suffix == ".tflite":
        meta = path.with_name("model.json")
        spec = ModelSpec.load(meta) if meta.exists() else None
        return EdgeTarget(str(path), spec, {_precision_of(path): path}, path.parent if spec else None)
    model_dir = path if path.is_dir() else path.parent
    meta = model_dir / "model.json"
    if not meta.exists():
        raise EdgeError(f"{model}: not a model directory (no model.json) nor a .tflite file")
    spec = ModelSpec.load(meta)
    files = {p: model_dir / f for p, f in spec.files.items() if str(f).endswith(".tflite")}
    if not files:
        raise EdgeError(f"{meta}: lists no .tflite files (\"files\": {spec.files})")
    for p, f in files.items():
        if not f.exists():
            raise EdgeError(f"{meta} lists {p} as {f.name}, which is not there")
    ordered = {p: files[p] for p in sorted(files, key=lambda p: (PRECISION_ORDER + (p,)).index(p))}
    return EdgeTarget("default" if model == "default" else str(path), spec, ordered, model_dir)


# --- windows ----------------------------------------------------------------------------------

def _frames_of(rec: Path, rate_hz: float) -> Any:
    from imusic.align import FrameBlock
    from imusic.replay import replay_blocks

    blocks = replay_blocks(rec, rate_hz).blocks
    if not blocks:
        raise EdgeError(f"{rec}: no aligned frames")
    first = blocks[0]
    return FrameBlock(np.concatenate([b.t_host_s for b in blocks]), np.concatenate([b.accel_mps2 for b in blocks]),
                      np.concatenate([b.gyro_rads for b in blocks]), np.concatenate([b.mag_uT for b in blocks]),
                      np.concatenate([b.valid for b in blocks]), first.sites, first.node_ids)


def _pick_ends(valid: np.ndarray, window: int, n: int) -> np.ndarray:
    """Window end frames, evenly spread from the first frame with any valid site (earlier
    windows are all zeros and flags 0: cheap to include, but they test little)."""
    t = len(valid)
    any_valid = np.nonzero(valid.any(axis=1))[0]
    start = max(window - 1, int(any_valid[0]) if len(any_valid) else 0)
    if start >= t:
        start = window - 1
    return np.unique(np.linspace(start, t - 1, num=min(n, t - start)).round().astype(int))


def feature_windows(spec: Any, data: str | None, n_windows: int, workdir: Path,
                    log: Log) -> tuple[np.ndarray, dict[str, Any], Path | None]:
    """(N, W, C) float32 model inputs, a description of where they came from, and the recording
    the streaming check replays (None for --data .npy windows)."""
    if data is not None and str(data).endswith(".npy"):
        try:
            x = np.load(data).astype(np.float32)
        except (OSError, ValueError) as exc:
            raise EdgeError(f"{data}: cannot read windows ({exc})") from None
        if x.ndim != 3:
            raise EdgeError(f"{data}: windows must be (N, W, C), got shape {x.shape}")
        return x[:n_windows], {"source": str(data), "kind": "windows"}, None
    assert spec is not None  # edge_check asks for --data windows for a bare file
    from imusic.features import feature_spec, features_of_block
    from imusic.modelio import assemble_input
    from imusic.placement import load_layout

    layout = load_layout(spec.layout)
    spec.check_features(feature_spec(layout, spec.rate_hz), "this imusic's features")
    if data is None:
        from imusic.sim.scenarios import record_scenario

        log(f"simulating a {SIM_SECONDS:g} s '{SIM_SCENARIO}' recording on layout {spec.layout} (seed {SIM_SEED})")
        takes = [record_scenario(layout, SIM_SCENARIO, seed=SIM_SEED, duration_s=SIM_SECONDS,
                                 out_dir=workdir / "sim") / "rec.imu"]
        desc: dict[str, Any] = {"source": "simulated", "scenario": SIM_SCENARIO, "seconds": SIM_SECONDS,
                                "seed": SIM_SEED, "layout": spec.layout}
    else:
        root = Path(data)
        if root.is_file():
            takes = [root]
        elif root.is_dir():
            takes = sorted(root.rglob("*.imu"))
        else:
            raise EdgeError(f"{data}: no such directory or file")
        if not takes:
            raise EdgeError(f"{data}: holds no .imu recordings")
        desc = {"source": str(root), "kind": "recordings"}
    mean = np.asarray(spec.norm_mean, np.float32)
    std = np.asarray(spec.norm_std, np.float32)
    w = spec.window_frames
    xs: list[np.ndarray] = []
    used: list[str] = []
    for rec in takes:
        feats, valid = features_of_block(_frames_of(rec, spec.rate_hz), layout, None, spec.rate_hz)
        if len(feats) < w:
            continue
        x = assemble_input(feats, valid, mean, std)
        ends = _pick_ends(valid, w, n_windows - sum(len(a) for a in xs))
        xs.append(np.stack([x[e - w + 1:e + 1] for e in ends]))
        used.append(str(rec))
        if sum(len(a) for a in xs) >= n_windows:
            break
    if not xs:
        raise EdgeError(f"no recording in {data or 'the simulation'} is longer than the model's window "
                        f"({w} frames)")
    if data is not None:
        desc["takes"] = used
    return np.concatenate(xs)[:n_windows], desc, Path(takes[0])


# --- comparisons ------------------------------------------------------------------------------

def compare_outputs(x86: np.ndarray, arm: np.ndarray, lsb: float | None, spread: float = 0.0) -> dict[str, Any]:
    """Element-wise agreement of two runs' raw outputs.

    Quantised outputs (``lsb`` given): within ``INT8_TOLERANCE_LSB`` of the output scale.
    Float outputs: within ``max(FLOAT32_FLOOR_ULPS ulp of the output range, FLOAT32_SPREAD_FACTOR
    * spread)``, where ``spread`` is how far LiteRT's other x86 kernels (built-in and reference)
    land from XNNPACK on the same inputs: float32 sums rounded in another order, the model's own
    sensitivity to that (large fan-in or cancelling weights make it grow well past one ulp of the
    output)."""
    if x86.shape != arm.shape:
        return {"ok": False, "reason": f"output shapes differ: x86 {x86.shape}, aarch64 {arm.shape}"}
    a = x86.astype(np.float64)
    b = arm.astype(np.float64)
    nan_mismatch = bool(np.any(np.isnan(a) != np.isnan(b)))
    d = np.abs(np.where(np.isnan(a) & np.isnan(b), 0.0, a - b))
    max_d = float(np.nanmax(d)) if d.size else 0.0
    out: dict[str, Any] = {"elements": int(d.size), "identical_fraction": float(np.mean(d == 0)) if d.size else 1.0}
    if np.issubdtype(x86.dtype, np.integer):
        out.update(unit="LSB", max_diff=max_d, max_abs_diff=max_d * (lsb or 1.0), tolerance=INT8_TOLERANCE_LSB)
    elif lsb:
        out.update(unit="LSB", max_diff=max_d / lsb, max_abs_diff=max_d, tolerance=INT8_TOLERANCE_LSB)
    else:
        ref = max(1.0, float(np.nanmax(np.abs(a))) if a.size else 1.0)
        ulp = float(np.spacing(np.float32(ref)))
        tol = max(FLOAT32_FLOOR_ULPS * ulp, FLOAT32_SPREAD_FACTOR * spread)
        out.update(unit="abs", max_diff=max_d, max_abs_diff=max_d, tolerance=tol, ulp_of_range=ulp,
                   max_diff_ulps=max_d / ulp, x86_kernel_spread=spread)
    # dequantised outputs are whole steps of the scale up to float rounding: 1.001 LSB is 1 LSB
    slack = 1e-3 if out["unit"] == "LSB" else 1e-9
    out["ok"] = (not nan_mismatch) and out["max_diff"] <= out["tolerance"] * (1 + slack)
    if nan_mismatch:
        out["reason"] = "NaN in one run's outputs where the other has a number"
    return out


def kernel_spread(path: Path, x_model: np.ndarray, x86_raw: np.ndarray) -> float:
    """Largest distance from XNNPACK's x86 outputs to LiteRT's built-in and reference kernels'
    on the same inputs (float models; 0 for quantised outputs)."""
    if np.issubdtype(x86_raw.dtype, np.integer):
        return 0.0
    spread = 0.0
    for kernels in ("builtin", "reference"):
        alt = guest_side.run_windows(str(path), x_model, kernels=kernels)["raw"]
        if alt.shape == x86_raw.shape:
            diff = np.abs(alt.astype(np.float64) - x86_raw.astype(np.float64))
            spread = max(spread, float(np.nanmax(diff)) if diff.size else 0.0)
    return spread


def _insn_stats(marks: list[int], empty_brackets: int, n_invokes: int) -> dict[str, Any]:
    """Per-invoke guest instructions from the marks: bracket pairs, less the median cost of an
    empty bracket; the first invoke (one-off setup) apart from the steady ones."""
    want = 2 * (empty_brackets + n_invokes)
    if len(marks) != want:
        raise EdgeError(f"the instruction-count plugin saw {len(marks)} marks, expected {want}")
    pairs = [marks[2 * i + 1] - marks[2 * i] for i in range(empty_brackets + n_invokes)]
    bracket = statistics.median(pairs[:empty_brackets]) if empty_brackets else 0.0
    per = [p - bracket for p in pairs[empty_brackets:]]
    steady = per[1:] or per
    return {"per_frame": float(statistics.median(steady)), "mean": float(statistics.fmean(steady)),
            "min": float(min(steady)), "max": float(max(steady)), "first_invoke": float(per[0]),
            "bracket": float(bracket), "invokes": n_invokes}


def _graph_summary(g: dict[str, Any]) -> dict[str, Any]:
    return {k: g[k] for k in ("nodes", "partitions", "delegated_ops", "fallback_ops")}


def _pypath_dir(workdir: Path) -> Path:
    """A directory holding only an ``imusic`` link: the guest must not see the host's
    site-packages (x86 binaries) even when imusic is installed there."""
    d = workdir / "pypath"
    d.mkdir(exist_ok=True)
    link = d / "imusic"
    if not link.exists():
        link.symlink_to(PACKAGE_DIR)
    return d


def check_precision(env: Guest, precision: str, path: Path, x: np.ndarray, workdir: Path,
                    log: Log, empty_brackets: int = 16, kernels: str = "xnnpack") -> dict[str, Any]:
    """One model file on both machines with the same ``kernels`` (guest.KERNELS): outputs compared,
    guest instructions per invoke, XNNPACK partitions."""
    interp = guest_side.open_interpreter(str(path))
    shape = tuple(int(s) for s in interp.get_input_details()[0]["shape"])
    if tuple(x.shape[1:]) != shape[1:]:
        raise EdgeError(f"{path.name} takes input {shape}, the windows are {tuple(x.shape[1:])} per row")
    x_model = guest_side.model_input(interp, x)
    x86 = guest_side.run_windows(str(path), x_model, kernels=kernels)
    tag = f"{precision}-{os.getpid()}"
    inputs = workdir / f"in-{tag}.npz"
    np.savez(inputs, x=x_model)
    req = {"mode": "windows", "model": str(path.resolve()), "inputs": str(inputs), "marks": True,
           "empty_brackets": empty_brackets, "kernels": kernels, "out": str(workdir / f"out-{tag}.npz"),
           "info": str(workdir / f"info-{tag}.json")}
    req_path = workdir / f"req-{tag}.json"
    req_path.write_text(json.dumps(req))
    log(f"{precision}: {len(x_model)} windows on emulated {env.cpu.name}")
    t0 = time.monotonic()
    run = env.run(Path(guest_side.__file__), [str(req_path)], pythonpath=[_pypath_dir(workdir)])
    emu_s = time.monotonic() - t0
    arm_raw = np.load(req["out"])["raw"]
    arm = json.loads(Path(req["info"]).read_text())
    spread = kernel_spread(path, x_model, x86["raw"])
    cmp = compare_outputs(x86["raw"], arm_raw, x86["output_lsb"], spread)
    graph = _graph_summary(arm["graph"])
    graph_x86 = _graph_summary(x86["graph"])
    return {
        "file": path.name, "size_bytes": path.stat().st_size, "windows": len(x_model),
        "input_dtype": x86["input_dtype"], "output_dtype": x86["output_dtype"], "output_lsb": x86["output_lsb"],
        "compare": cmp, "ok": bool(cmp["ok"]), "instructions": _insn_stats(run.marks, empty_brackets, len(x_model)),
        "xnnpack": graph, "xnnpack_x86": graph_x86, "same_partitioning": graph == graph_x86,
        "guest_machine": arm.get("machine"), "emulation_s": round(emu_s, 1),
    }


def _model_on_features(model_dir: Path, precision: str, feats: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The x86 model streamed over given feature frames (imusic.infer.StreamingInference)."""
    from imusic.infer import StreamingInference, load_model

    model = load_model(model_dir, precision=precision, backend="auto", threads=1)
    stream = StreamingInference(model)
    return np.stack([np.asarray(stream.push(f, v), np.float32) for f, v in zip(feats, valid)])


def check_stream(env: Guest, target: EdgeTarget, precision: str, recording: Path, max_frames: int,
                 workdir: Path, log: Log, spread: float = 0.0) -> dict[str, Any]:
    """The streaming runtime (imusic.infer) on both machines. Three comparisons:

    - features: the aarch64 stream's feature frames against x86's (float64 numpy/scipy and
      imufusion's float32 C code may round differently on the two machines; reported);
    - model: the x86 model streamed over the aarch64 features against the aarch64 blendshapes,
      held to the windows check's tolerance (same inputs: only the runtime differs);
    - end to end: x86 blendshapes against aarch64 blendshapes, held to ``STREAM_TOLERANCE``.
    """
    assert target.model_dir is not None and target.spec is not None
    x86 = guest_side.run_stream(str(target.model_dir), precision, str(recording), max_frames=max_frames)
    tag = f"stream-{precision}-{os.getpid()}"
    req = {"mode": "stream", "model_dir": str(target.model_dir.resolve()), "precision": precision,
           "recording": str(recording.resolve()), "max_frames": max_frames, "marks": True,
           "out": str(workdir / f"out-{tag}.npz"), "info": str(workdir / f"info-{tag}.json")}
    req_path = workdir / f"req-{tag}.json"
    req_path.write_text(json.dumps(req))
    log(f"stream {precision}: imusic.infer on {max_frames} frames on emulated {env.cpu.name}")
    t0 = time.monotonic()
    run = env.run(Path(guest_side.__file__), [str(req_path)], pythonpath=[_pypath_dir(workdir)])
    emu_s = time.monotonic() - t0
    arm = dict(np.load(req["out"]))
    a = x86["blendshapes"].astype(np.float64)
    b = arm["blendshapes"].astype(np.float64)
    out: dict[str, Any] = {"precision": precision, "frames": len(b), "emulation_s": round(emu_s, 1)}
    if a.shape != b.shape:
        return {**out, "ok": False, "reason": f"x86 gave {a.shape} blendshapes, aarch64 {b.shape}"}
    lsb = guest_side.output_lsb(guest_side.open_interpreter(str(target.files[precision])))
    d = np.abs(a - b)
    max_abs = float(d.max()) if d.size else 0.0
    tol = STREAM_TOLERANCE["int8" if lsb else "float32"]
    e2e = {"max_abs_diff": max_abs, "unit": "LSB" if lsb else "blendshape",
           "max_diff": max_abs / lsb if lsb else max_abs, "tolerance": tol,
           "identical_fraction": float(np.mean(d == 0)) if d.size else 1.0}
    e2e["ok"] = bool(e2e["max_diff"] <= tol * (1 + 1e-3) and not np.isnan(d).any())
    out["end_to_end"] = e2e
    ok = e2e["ok"]
    fa, fb = x86["features"], arm["features"]
    if fb.shape == fa.shape and len(fb) == len(b) and fb.size:
        both = arm["valid"] & x86["valid"]
        fd = np.abs(fa.astype(np.float64) - fb)[both]
        scale = np.abs(fa.astype(np.float64))[both].max(axis=0) if both.any() else np.ones(9)
        out["features"] = {"max_abs_diff": float(fd.max()) if fd.size else 0.0,
                           "max_rel_diff": float((fd / np.maximum(scale, 1e-12)).max()) if fd.size else 0.0,
                           "valid_agree": bool(np.array_equal(arm["valid"], x86["valid"]))}
        same = _model_on_features(target.model_dir, precision, fb, arm["valid"])
        m = compare_outputs(same, b.astype(np.float32), lsb, spread)
        out["model_on_same_features"] = m
        ok = ok and bool(m["ok"])
    else:
        out["features"] = None
    # per-frame cost once the stream is in its steady state: the window filled and features valid
    # (before the extractor has its rest capture, frames cost less and would flatter the median)
    pairs = [run.marks[2 * i + 1] - run.marks[2 * i] for i in range(len(run.marks) // 2)]
    live = arm["valid"].any(axis=1) if arm["valid"].ndim == 2 and len(arm["valid"]) == len(pairs) else None
    steady = [c for i, c in enumerate(pairs) if i >= target.spec.window_frames and (live is None or live[i])]
    out["instructions_per_frame"] = float(statistics.median(steady or pairs)) if pairs else None
    out["instructions_frames"] = len(steady or pairs)
    out["ok"] = ok
    return out


def _litert_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("ai-edge-litert")


def edge_check(model: str, *, cpu: str = "cortex-a72", data: str | None = None, cache: str | None = None,
               n_windows: int = 64, stream: bool = True, stream_frames: int | None = None,
               log: Log = stderr_log) -> dict[str, Any]:
    """Run the whole check; returns the report (``format_report`` prints it). ``report["ok"]`` is
    False when any output differs beyond tolerance."""
    if n_windows < 1:
        raise UserError("--windows must be at least 1")
    target = resolve_model(model)
    if target.spec is None and not (data and str(data).endswith(".npy")):
        raise EdgeError(f"{model} has no model.json beside it: give its input windows with --data WINDOWS.npy "
                        "(float32 (N, W, C)), since the input normalisation lives in model.json")
    env = prepare(cpu, cache, log)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="imusic-edge-check-") as td:
        work = Path(td)
        x, data_desc, recording = feature_windows(target.spec, data, n_windows, work, log)
        precisions = {p: check_precision(env, p, f, x, work, log) for p, f in target.files.items()}
        streams: list[dict[str, Any]] = []
        stream_note = None
        if not stream:
            stream_note = "not asked (--no-stream)"
        elif target.model_dir is None or target.spec is None or recording is None:
            stream_note = "needs a model directory and a recording"
        elif importlib.util.find_spec("imusic.infer") is None:
            stream_note = "imusic.infer is not installed"
        else:
            frames = stream_frames or round(SIM_SECONDS * target.spec.rate_hz)
            for p in target.files:
                spread = float(precisions[p]["compare"].get("x86_kernel_spread", 0.0))
                streams.append(check_stream(env, target, p, recording, frames, work, log, spread))
    ok = all(r["ok"] for r in precisions.values()) and all(s["ok"] for s in streams)
    return {
        "model": target.name, "cpu": cpu, "devices": CPUS[cpu].devices, "ok": ok,
        "runtime": {"litert": _litert_version(), "guest": "Debian bookworm arm64 Python 3.11 under QEMU "
                    f"{env.qemu_version[0]}.{env.qemu_version[1]} user mode", "threads": 1},
        "data": data_desc, "windows": len(x), "precisions": precisions,
        "stream": streams, "stream_note": stream_note,
        "tolerance": {"float_floor_ulps": FLOAT32_FLOOR_ULPS, "float_spread_factor": FLOAT32_SPREAD_FACTOR,
                      "int8_lsb": INT8_TOLERANCE_LSB,
                      "stream": STREAM_TOLERANCE},
        "seconds": round(time.monotonic() - t0, 1),
    }


def _ops(d: dict[str, int]) -> str:
    return ", ".join(f"{k}x{v}" if v > 1 else k for k, v in d.items()) or "-"


def _diff_text(c: dict[str, Any]) -> tuple[str, str]:
    if c["unit"] == "LSB":
        return f"{c['max_diff']:.3g} LSB", f"{c['tolerance']:g} LSB"
    return f"{c['max_diff']:.1e} ({c['max_diff_ulps']:.3g} ulp)", f"{c['tolerance']:.1e}"


def format_report(r: dict[str, Any]) -> str:
    d = r["data"]
    src = (f"simulated '{d['scenario']}' recording, {d['seconds']:g} s, seed {d['seed']}"
           if d["source"] == "simulated" else d["source"])
    lines = [(f"edge-check {r['model']} on {r['cpu']} ({r['devices']}): LiteRT {r['runtime']['litert']} aarch64, "
              f"{r['runtime']['guest']}, 1 thread"),
             f"{r['windows']} windows from a {src}", ""]
    head = (f"{'precision':<9} {'size':>8} {'max diff vs x86':>22} {'tolerance':>14} {'instr/frame':>12} "
            f"{'partitions':>10}  fallback ops (built-in kernels)  result")
    lines.append(head)
    for p, res in r["precisions"].items():
        c = res["compare"]
        if "max_diff" in c:
            diff, tol = _diff_text(c)
        else:
            diff, tol = c.get("reason", "?"), "-"
        ins = res["instructions"]
        lines.append(f"{p:<9} {res['size_bytes'] / 1024:>6.0f} kB {diff:>22} {tol:>14} {ins['per_frame']:>12,.0f} "
                     f"{res['xnnpack']['partitions']:>10}  {_ops(res['xnnpack']['fallback_ops']):<31}  "
                     f"{'ok' if res['ok'] else 'DIFFERS'}")
        if not res["same_partitioning"]:
            lines.append(f"          note: x86 partitioned differently: {res['xnnpack_x86']}")
    if r["stream"]:
        lines.append("")
        lines.append("streaming runtime (imusic.infer: features + model, frame by frame):")
        for s in r["stream"]:
            if "end_to_end" not in s:
                lines.append(f"  {s['precision']:<8} {s.get('reason', '?')}  DIFFERS")
                continue
            e = s["end_to_end"]
            lines.append(f"  {s['precision']:<8} {s['frames']} frames: blendshapes differ by "
                         f"{e['max_diff']:.3g} {e['unit']} at most (tolerance {e['tolerance']:g}), "
                         f"{s['instructions_per_frame']:,.0f} instr/frame  "
                         f"{'ok' if s['ok'] else 'DIFFERS'}")
            f, m = s.get("features"), s.get("model_on_same_features")
            if f and m:
                md, mt = _diff_text(m)
                lines.append(f"           features differ by {f['max_rel_diff']:.1e} of their range at most; "
                             f"on the same features the model differs by {md} (tolerance {mt})")
    elif r["stream_note"]:
        lines.append(f"streaming runtime: not run ({r['stream_note']})")
    lines.append("")
    lines.append("outputs match x86" if r["ok"] else "OUTPUTS DIFFER from x86 beyond tolerance")
    return "\n".join(lines)


def main_json(report: dict[str, Any]) -> None:
    json.dump(report, sys.stdout, indent=1)
    sys.stdout.write("\n")
