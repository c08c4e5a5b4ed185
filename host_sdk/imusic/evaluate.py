"""How good a blendshape model is on paired recordings, beside the ridge baseline, and how fast.

``evaluate_windows(predict, windows, ridge=...)``: mean absolute error over every window (each
one frame: its newest) overall, per face region (``imusic.arkit.REGIONS``) and per blendshape,
for the model and for the ridge baseline on the very same windows. ``streaming_latency``: the
time of one streamed inference per frame (median and 95th percentile). ``evaluate_model`` runs
both for an exported model (``imusic.infer``) on a dataset directory (``imusic.data``); it is
what ``imusic eval`` prints.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imusic.arkit import BLENDSHAPES, INDEX, N_BLENDSHAPES, REGIONS
from imusic.errors import UserError

__all__ = ["evaluate_model", "evaluate_windows", "mae_tables", "select_subjects", "streaming_latency"]

LATENCY_FRAMES = 300
RIDGE_FILE = "ridge.npz"


def mae_tables(abs_err_sum: np.ndarray, frames: int) -> dict[str, Any]:
    """{"mae", "mae_by_region", "mae_by_blendshape"} from per-blendshape sums of |error| over
    ``frames`` frames. A region's MAE is the mean over its shapes (all frames count alike)."""
    per = abs_err_sum / max(frames, 1)
    return {"mae": float(per.mean()),
            "mae_by_region": {r: float(np.mean([per[INDEX[n]] for n in names])) for r, names in REGIONS.items()},
            "mae_by_blendshape": {n: float(per[i]) for i, n in enumerate(BLENDSHAPES)}}


def evaluate_windows(predict: Callable[[np.ndarray], np.ndarray], windows: Any, *,
                     ridge: Any = None, ridge_windows: Any = None, batch_size: int = 512,
                     max_windows: int | None = None, seed: int = 0) -> dict[str, Any]:
    """MAE of ``predict`` ((N, W, C) -> (N, 52)) on ``windows`` (``imusic.data.Windows``), and of
    ``ridge`` (a ``RidgeBaseline``) on the same windows (``ridge_windows``: the same windows
    normalised its own way, when that differs). max_windows: a seeded random subset."""
    n = len(windows)
    if n == 0:
        raise UserError("no windows to evaluate (takes shorter than a window, or no labelled frames)")
    idx = np.arange(n)
    if max_windows is not None and max_windows < n:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=max_windows, replace=False))
    err = np.zeros(N_BLENDSHAPES)
    err_ridge = np.zeros(N_BLENDSHAPES)
    rw = ridge_windows if ridge_windows is not None else windows
    for s in range(0, len(idx), batch_size):
        part = idx[s:s + batch_size]
        x, y = windows.batch(part)
        p = np.asarray(predict(x), np.float64)
        if p.shape != y.shape:
            raise UserError(f"the model gave {p.shape} for {len(part)} windows, expected {y.shape}")
        err += np.abs(p - y).sum(axis=0)
        if ridge is not None:
            xr = x if rw is windows else rw.batch(part)[0]
            err_ridge += np.abs(ridge.predict(xr) - y).sum(axis=0)
    out = mae_tables(err, len(idx))
    out["frames"] = len(idx)
    if ridge is not None:
        r = mae_tables(err_ridge, len(idx))
        out["mae_ridge"] = r["mae"]
        out["mae_ridge_by_region"] = r["mae_by_region"]
        out["mae_ridge_by_blendshape"] = r["mae_by_blendshape"]
        out["improvement_over_ridge"] = float(1.0 - out["mae"] / r["mae"]) if r["mae"] > 0 else None
    else:
        out["mae_ridge"] = None
    return out


def streaming_latency(push: Callable[[np.ndarray, np.ndarray], Any], feats: np.ndarray, valid: np.ndarray, *,
                      frames: int = LATENCY_FRAMES, warmup: int = 10) -> dict[str, Any]:
    """Milliseconds per ``push(feats_t (n, 9), valid_t (n,))`` over up to ``frames`` frames in
    order (after ``warmup`` untimed ones): median, 95th percentile and the count."""
    total = min(len(feats), warmup + frames)
    if total <= warmup:
        raise UserError(f"latency needs more than {warmup} frames, the take has {len(feats)}")
    times = []
    for k in range(total):
        t0 = time.perf_counter()
        push(feats[k], valid[k])
        dt = time.perf_counter() - t0
        if k >= warmup:
            times.append(dt * 1e3)
    a = np.asarray(times)
    return {"latency_ms_median": float(np.median(a)), "latency_ms_p95": float(np.percentile(a, 95)),
            "latency_frames": len(a)}


def select_subjects(ds: Any, which: str, training: dict[str, Any] | None) -> tuple[list[str], str]:
    """(subject ids, how they were chosen). which: "auto" (the training's test split when ``ds``
    is the dataset the model was trained on, else all), "test", "all", or comma-separated ids."""
    from imusic.data import DataError, trained_split

    split = trained_split(training or {}, ds)
    w = which.strip()
    if w == "auto":
        if split is not None and split["test"]:
            return _known(ds, split["test"], "the model's test split"), "test split of the training dataset"
        return ds.subjects, "all subjects (not the dataset the model was trained on)"
    if w == "test":
        if split is None or not split["test"]:
            raise DataError(f"--subjects test: {ds.root} is not the dataset the model was trained on (its training "
                            "record names another dataset or no split); use all or subject ids")
        return _known(ds, split["test"], "the model's test split"), "test split of the training dataset"
    if w == "all":
        return ds.subjects, "all subjects"
    ids = [s.strip() for s in w.split(",") if s.strip()]
    if not ids:
        raise DataError("--subjects names no subject")
    return _known(ds, ids, "--subjects"), "subjects named"


def _known(ds: Any, ids: Sequence[str], what: str) -> list[str]:
    from imusic.data import DataError

    unknown = [s for s in ids if s not in set(ds.subjects)]
    if unknown:
        raise DataError(f"{what}: no subject {', '.join(unknown)} in {ds.root} (subjects: {', '.join(ds.subjects)})")
    return list(ids)


def _ridge_beside(model_path: Path) -> Path:
    d = model_path if model_path.is_dir() else model_path.parent
    return d / RIDGE_FILE


def evaluate_model(model: str | Path = "default", data: str | Path = ".", *, subjects: str = "auto",
                   precision: str | None = None, backend: str = "auto", threads: int = 1,
                   latency_frames: int = LATENCY_FRAMES, max_windows: int | None = None, cache: bool = True,
                   batch_size: int = 512, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """An exported model on a dataset directory: MAE (overall, by region, by blendshape), the ridge
    baseline beside the model on the same windows, streaming latency per frame."""
    from imusic.data import Windows, load_dataset, settings_from_dict
    from imusic.infer import StreamingInference, load_model
    from imusic.ridge import RidgeBaseline

    m = load_model(model, precision=precision, backend=backend, threads=threads)
    spec = m.spec
    ds = load_dataset(data, layout=spec.layout, settings=settings_from_dict(spec.feature_spec.get("settings")),
                      rate_hz=spec.rate_hz, cache=cache, log=log)
    spec.check_features(ds.feature_spec, f"the features of {ds.root}")
    chosen, how = select_subjects(ds, which=subjects, training=spec.training)
    takes = ds.takes_of(chosen)
    mean, std = np.asarray(spec.norm_mean, np.float32), np.asarray(spec.norm_std, np.float32)
    windows = Windows(takes, spec.window_frames, mean, std)

    ridge = ridge_windows = None
    ridge_note = None
    rpath = _ridge_beside(Path(m.path))
    if rpath.is_file():
        ridge = RidgeBaseline.load(rpath)
        if (ridge.window_frames, ridge.channels) != (spec.window_frames, spec.channels):
            raise UserError(f"{rpath} takes windows of {(ridge.window_frames, ridge.channels)}, the model "
                            f"{(spec.window_frames, spec.channels)}: it belongs to another model")
        if ridge.norm_mean is not None and ridge.norm_std is not None and not (
                np.allclose(ridge.norm_mean, mean) and np.allclose(ridge.norm_std, std)):
            ridge_windows = Windows(takes, spec.window_frames, ridge.norm_mean, ridge.norm_std)
    else:
        ridge_note = f"no {RIDGE_FILE} beside the model: no baseline"
    if log is not None:
        log(f"evaluating {len(windows)} frames of {len(chosen)} subject(s) ({how})")
    result = evaluate_windows(m.predict, windows, ridge=ridge, ridge_windows=ridge_windows, batch_size=batch_size,
                              max_windows=max_windows)

    stream = StreamingInference(m)
    first = max(takes, key=lambda t: t.frames)
    result.update(streaming_latency(stream.push, first.feats, first.valid, frames=latency_frames))
    result.update({
        "model": str(m.path), "kind": spec.kind, "precision": m.precision, "backend": m.backend, "threads": threads,
        "data": str(ds.root), "simulated": ds.simulated, "subjects": chosen, "subjects_chosen": how,
        "takes": len(takes), "calibrated_takes": sum(1 for t in takes if t.calibration), "window_frames": spec.window_frames, "layout": spec.layout,
        "feature_version": spec.feature_spec["feature_version"],
        "trained_on_simulated": spec.training.get("simulated"),
        "note": ("SIMULATED data (imusic.sim): figures on simulated subjects, not people"
                 if ds.simulated else "recorded data"),
    })
    if ridge_note:
        result["ridge_note"] = ridge_note
    return result
