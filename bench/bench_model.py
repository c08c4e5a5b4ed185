"""The blendshape models on held-out subjects of a simulated dataset: accuracy, robustness to a
missing IMU, per-frame latency and size (tables, no thresholds).

Inputs: a dataset directory (default /work/data/sim-imusic-20x6), a student checkpoint and a
teacher checkpoint (``imusic train``; default OUT/best.pt of ``--runs DIR``: DIR/teacher and
DIR/student), and optionally the exported model directory of the student (``imusic export``;
default DIR/model when it exists). The test subjects are the student's own held-out split
(``imusic.data.trained_split`` of its training description), so nothing here was trained on them.

(a) MAE on the test subjects' windows (each window scores its newest frame): the ridge baseline
    fit on the student's training windows (the checkpoint's "ridge"), the teacher's encoder
    regression (its stage 1 head), the teacher (DDIM, its default steps), the student in PyTorch
    float32, and the exported float32 / int8 TFLite through ``imusic.infer``.
(b) MAE with each single face IMU missing (marked invalid through the whole window), and the rise
    over the intact MAE, for the student (PyTorch, and int8 when exported).
(c) Per-frame latency, one window at a time on one thread, teacher and student measured in turn
    in the same loop (so both see the same machine load); the ratio is the figure to read.
(d) The teacher's MAE by initial-noise scale (temperature) and DDIM steps on the validation
    subjects, where its defaults were chosen.
(e) Size: parameters, multiply-accumulates per frame, file sizes.

Run: ``.venv/bin/python bench/bench_model.py --runs /tmp/runs [--data DIR] [--windows 6000] [--json]``
Every accuracy figure here is on SIMULATED data.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see imusic.commands.train)

import numpy as np  # noqa: E402

DEFAULT_DATA = "/work/data/sim-imusic-20x6"


def _spread(n: int, k: int) -> np.ndarray:
    return np.arange(n) if k >= n else np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def _table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    cells = [header] + [[f"{c:.4f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for k, r in enumerate(cells):
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)))
        if k == 0:
            print("  " + "  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--runs", default=os.environ.get("IMUSIC_RUNS", "runs/sim-imusic-20x6"),
                    help="directory with teacher/ and student/ training outputs (and model/); default "
                         "$IMUSIC_RUNS or runs/sim-imusic-20x6")
    ap.add_argument("--student", default=None, help="student checkpoint (default RUNS/student/best.pt)")
    ap.add_argument("--teacher", default=None, help="teacher checkpoint (default RUNS/teacher/best.pt)")
    ap.add_argument("--model-dir", default=None, help="exported student (default RUNS/model if present)")
    ap.add_argument("--cache-dir", default=None, help="feature cache of the dataset (default DATA/.imusic-cache)")
    ap.add_argument("--windows", type=int, default=6000, help="test windows scored (spread evenly; default 6000)")
    ap.add_argument("--latency-frames", type=int, default=200, help="frames timed per model (default 200)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from imusic.data import Windows, load_dataset, trained_split
    from imusic.ridge import RidgeBaseline
    from imusic_model.checkpoint import build_model, load_checkpoint, spec_of
    from imusic_model.student import Student
    from imusic_model.teacher import Teacher
    from imusic_model.train import WINDOW_FRAMES, predict, targets

    runs = Path(args.runs) if args.runs else None
    s_path = args.student or (runs / "student" / "best.pt" if runs else None)
    t_path = args.teacher or (runs / "teacher" / "best.pt" if runs else None)
    if s_path is None or t_path is None or not Path(s_path).is_file() or not Path(t_path).is_file():
        # `make bench` runs every bench without arguments: training is not a benchmark's job
        print(f"no trained teacher and student at {runs} (or --teacher/--student): train them first, "
              "e.g. `imusic train teacher --data DIR --out RUNS/teacher` and `imusic train student --data DIR "
              "--out RUNS/student --teacher RUNS/teacher/best.pt` (docs/model.md, \"Training\")")
        return 0
    model_dir = Path(args.model_dir) if args.model_dir else (runs / "model" if runs and (runs / "model").is_dir() else None)
    if model_dir is not None and not (model_dir / "model.json").is_file():
        print(f"(no exported model in {model_dir}: TFLite rows left out)", file=sys.stderr)
        model_dir = None

    s_ck, t_ck = load_checkpoint(s_path, kind="student"), load_checkpoint(t_path, kind="teacher")
    student, teacher = build_model(s_ck), build_model(t_ck)
    assert isinstance(student, Student) and isinstance(teacher, Teacher)
    spec = spec_of(s_ck)
    ds = load_dataset(args.data, cache_dir=args.cache_dir)
    split = trained_split(spec.training, ds)
    if split is None or not split["test"]:
        print(f"{args.data} is not the dataset the student was trained on (no held-out split)", file=sys.stderr)
        return 2
    mean, std = np.asarray(spec.norm_mean, np.float32), np.asarray(spec.norm_std, np.float32)
    test = Windows(ds.takes_of(split["test"]), WINDOW_FRAMES, mean, std)
    idx = _spread(len(test), args.windows)
    y = targets(test, idx)
    n_sites = len(ds.face_sites)
    simulated = "SIMULATED" if ds.simulated else "recorded"
    report: dict[str, Any] = {"data": str(args.data), "simulated": ds.simulated, "test_subjects": split["test"],
                              "windows": int(len(idx)), "student": str(s_path), "teacher": str(t_path)}

    def batched(fn: Any, drop: np.ndarray | None = None) -> np.ndarray:
        out = []
        for s in range(0, len(idx), 1024):
            x, _ = test.batch(idx[s:s + 1024], drop_sites=None if drop is None else drop[s:s + 1024])
            out.append(fn(x))
        return np.concatenate(out)

    # (a) accuracy
    with tempfile.TemporaryDirectory() as tmp:
        rp = Path(tmp) / "ridge.npz"
        rp.write_bytes(s_ck["ridge"])
        ridge = RidgeBaseline.load(rp)
    preds: dict[str, np.ndarray] = {"ridge (baseline)": batched(ridge.predict)}
    with torch.no_grad():
        preds["teacher encoder regression (stage 1 head)"] = batched(
            lambda x: teacher.regress(torch.from_numpy(x)).numpy())
    steps = teacher.sampling_steps
    preds[f"teacher (DDIM {steps} steps)"] = predict(teacher, test, idx)
    preds["student float32 (PyTorch)"] = predict(student, test, idx)
    exported: dict[str, Any] = {}
    if model_dir is not None:
        from imusic.infer import load_model

        for prec in ("float32", "int8"):
            try:
                exported[prec] = load_model(model_dir, precision=prec, threads=1)
            except Exception as exc:  # a missing file or runtime: say so, keep going
                print(f"(no {prec} model from {model_dir}: {exc})", file=sys.stderr)
        for prec, m in exported.items():
            preds[f"student {prec} (TFLite, {m.backend})"] = batched(m.predict)
    mae = {k: float(np.abs(v - y).mean()) for k, v in preds.items()}
    r0 = mae["ridge (baseline)"]
    t_mae = mae[f"teacher (DDIM {steps} steps)"]
    _table(f"(a) MAE on held-out subjects {', '.join(split['test'])} ({len(idx)} windows, {simulated} data)",
           ["model", "MAE", "vs ridge", "vs teacher"],
           [[k, v, f"{100 * (v / r0 - 1):+.1f}%", f"{100 * (v / t_mae - 1):+.1f}%"] for k, v in mae.items()])
    report["mae"] = mae
    from imusic.arkit import BLENDSHAPES

    s_err = np.abs(preds["student float32 (PyTorch)"] - y).mean(axis=0)
    r_err = np.abs(preds["ridge (baseline)"] - y).mean(axis=0)
    t_err = np.abs(preds[f"teacher (DDIM {steps} steps)"] - y).mean(axis=0)
    median_err = np.abs(np.median(y, axis=0) - y).mean(axis=0)  # a constant per shape (test median)
    worst = np.argsort(-s_err)[:10]
    gaze = [i for i, n in enumerate(BLENDSHAPES) if n.startswith("eyeLook")]
    _table("    the student's 10 largest per-blendshape errors (share: of the student's overall MAE)",
           ["blendshape", "student", "teacher", "ridge", "test median", "share"],
           [[BLENDSHAPES[i], float(s_err[i]), float(t_err[i]), float(r_err[i]), float(median_err[i]),
             f"{100 * s_err[i] / s_err.sum():.1f}%"] for i in worst])
    print(f"    eye-gaze shapes (eyeLook*, 8 of 52): {100 * s_err[gaze].sum() / s_err.sum():.0f}% of the student's "
          f"MAE; the other 44 shapes average {float(np.delete(s_err, gaze).mean()):.4f}")
    report["student_mae_by_blendshape"] = {BLENDSHAPES[i]: float(s_err[i]) for i in range(len(BLENDSHAPES))}

    # (b) one IMU missing
    subjects_rows = []
    missing: dict[str, dict[str, float]] = {}
    candidates: dict[str, Any] = {"student float32 (PyTorch)": None}
    if "int8" in exported:
        candidates["student int8 (TFLite)"] = exported["int8"]
    for name, m in candidates.items():
        base = mae["student float32 (PyTorch)"] if m is None else mae[next(k for k in mae if k.startswith("student int8"))]
        per: dict[str, float] = {}
        for s, site in enumerate(ds.face_sites):
            drop = np.full(len(idx), s)
            p = predict(student, test, idx, drop_sites=drop) if m is None else batched(m.predict, drop)
            per[site] = float(np.abs(p - y).mean())
        missing[name] = per
        worst = max(per, key=lambda k: per[k])
        subjects_rows.append([name, base, per[worst], f"{100 * (per[worst] / base - 1):+.1f}%", worst])
    rows = [[site] + [missing[n][site] for n in missing] +
            [f"{100 * (missing[n][site] / (mae['student float32 (PyTorch)'] if n.endswith('(PyTorch)') else mae[next(k for k in mae if k.startswith('student int8'))]) - 1):+.1f}%"
             for n in missing] for site in ds.face_sites]
    _table("(b) MAE with one face IMU missing (marked invalid through the window)",
           ["missing IMU"] + [f"MAE {n}" for n in missing] + [f"rise {n}" for n in missing], rows)
    _table("    worst case", ["model", "intact MAE", "worst MAE", "rise", "IMU"], subjects_rows)
    report["missing_imu_mae"] = missing
    report["n_sites"] = n_sites

    # (c) latency, side by side
    x_all, _ = test.batch(idx[_spread(len(idx), args.latency_frames)])
    timers: dict[str, list[float]] = {"teacher": [], "student PyTorch": []}
    for prec in exported:
        timers[f"student {prec} TFLite"] = []
    teacher.eval()
    student.eval()
    with torch.no_grad():
        for k in range(len(x_all)):
            x1 = x_all[k:k + 1]
            xt = torch.from_numpy(x1)
            t0 = time.perf_counter()
            teacher(xt)
            timers["teacher"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            student(xt)
            timers["student PyTorch"].append(time.perf_counter() - t0)
            for prec, m in exported.items():
                t0 = time.perf_counter()
                m.predict(x1)
                timers[f"student {prec} TFLite"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in timers.items()}
    _table(f"(c) per-frame latency, one window at a time, 1 thread, {len(x_all)} frames each, interleaved "
           f"(teacher: DDIM {steps} steps, initial noise x {teacher.temperature:g})", ["model", "median ms", "teacher / this"],
           [[k, f"{v:.3f}", f"{med['teacher'] / v:.1f}x"] for k, v in med.items()])
    report["latency_ms_median"] = med

    # (d) the teacher's sampling settings, on the VALIDATION subjects (where they were chosen)
    val = Windows(ds.takes_of(split["val"]), WINDOW_FRAMES, mean, std)
    vidx = _spread(len(val), min(args.windows, 2000))
    yv = targets(val, vidx)
    grid_rows = []
    xv = torch.from_numpy(val.batch(vidx)[0])
    for temp in (0.0, 0.5, 1.0):
        row: list[Any] = [f"{temp:g}"]
        for n in (1, 4, 10):
            with torch.no_grad():
                pv = teacher.sample(xv, steps=n, generator=torch.Generator().manual_seed(0), temperature=temp)[:, -1]
            row.append(float(np.abs(pv.numpy() - yv).mean()))
        grid_rows.append(row)
    _table(f"(d) teacher MAE by initial-noise scale and DDIM steps, validation subjects {', '.join(split['val'])} "
           f"({len(vidx)} windows)", ["x_T scale", "1 step", "4 steps", "10 steps"], grid_rows)
    report["teacher_sampling_val"] = grid_rows

    # (e) size
    size_rows = [["teacher (PyTorch)", sum(p.numel() for p in teacher.parameters()), "-",
                  f"{Path(t_ck['_path']).stat().st_size / 1e6:.2f} MB (checkpoint)"],
                 ["student (PyTorch)", sum(p.numel() for p in student.parameters()), student.macs(),
                  f"{sum(p.numel() for p in student.parameters()) * 4 / 1e6:.3f} MB (float32 weights)"]]
    if model_dir is not None:
        for f in sorted(model_dir.iterdir()):
            if f.suffix in (".tflite", ".onnx"):
                size_rows.append([f.name, "", "", f"{f.stat().st_size / 1e6:.3f} MB"])
    _table("(e) size", ["model", "parameters", "MACs per frame", "size"], size_rows)
    report["student_macs"] = student.macs()
    report["student_params"] = sum(p.numel() for p in student.parameters())
    print(f"\nAll accuracy figures: {simulated} data ({args.data}), held-out subjects.")
    if args.json:
        print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
