"""``imusic eval --model M --data DIR [--json] [--subjects auto|test|all|ID,ID]``: a model's
blendshape error on paired recordings, beside the ridge baseline, and its latency per frame.

Subjects by default ("auto"): the model's test split when DIR is the dataset it was trained on
(its metadata's training record), else every subject of DIR. ``--model default`` is the model
shipped with imusic. The MAE is over every labelled frame with a full window (docs/data.md).
"""

from __future__ import annotations

import argparse
import json
import sys

from imusic.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="model directory or file from imusic export, or 'default'")
    p.add_argument("--data", required=True, help="dataset directory (imusic simulate output, or takes of rec.imu + "
                                                 "Live Link Face CSV)")
    p.add_argument("--subjects", default="auto",
                   help="auto (default: the test split if DIR is the training dataset, else all) | test | all | "
                        "comma-separated subject ids")
    p.add_argument("--precision", default=None, help="int8 | float32: the model file to run (default int8)")
    p.add_argument("--backend", default="auto", help="auto | litert | tflite_runtime | onnxruntime")
    p.add_argument("--threads", default="1", help="interpreter threads (default 1)")
    p.add_argument("--latency-frames", default="300", help="frames streamed one by one for the latency (default 300)")
    p.add_argument("--max-windows", default=None, help="evaluate a seeded random subset of this many frames")
    p.add_argument("--no-cache", action="store_true", help="compute features without reading or writing DIR/.imusic-cache")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _int(name: str, text: str | None, lo: int) -> int | None:
    if text is None:
        return None
    try:
        v = int(text)
    except ValueError:
        raise UserError(f"{name} must be a whole number, not {text!r}") from None
    if v < lo:
        raise UserError(f"{name} must be at least {lo}, not {v}")
    return v


def run(args: argparse.Namespace) -> int:
    from imusic.evaluate import evaluate_model

    threads = _int("--threads", args.threads, 1)
    latency = _int("--latency-frames", args.latency_frames, 1)
    max_windows = _int("--max-windows", args.max_windows, 1)
    assert threads is not None and latency is not None
    # progress on a terminal only: a script reading stderr gets nothing but a possible error line
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if sys.stderr.isatty() else None
    result = evaluate_model(args.model, args.data, subjects=args.subjects, precision=args.precision,
                            backend=args.backend, threads=threads, latency_frames=latency, max_windows=max_windows,
                            cache=not args.no_cache, log=log)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    for line in format_result(result):
        print(line)
    return 0


def format_result(r: dict) -> list[str]:
    ridge = r.get("mae_ridge")
    lines = [f"model {r['model']} ({r['kind']}, {r['precision']} on {r['backend']}, {r['threads']} thread(s))",
             f"data  {r['data']}: {', '.join(r['subjects'])} ({r['subjects_chosen']}), {r['frames']} frames",
             f"      {r['note']}",
             "",
             f"{'MAE':14} {'model':>8} {'ridge':>8}"]

    def row(name: str, a: float, b: float | None) -> str:
        return f"{name:14} {a:8.4f} " + (f"{b:8.4f}" if b is not None else f"{'-':>8}")

    lines.append(row("overall", r["mae"], ridge))
    for region, v in r["mae_by_region"].items():
        lines.append(row(f"  {region}", v, (r.get("mae_ridge_by_region") or {}).get(region)))
    if ridge is not None and r.get("improvement_over_ridge") is not None:
        lines.append(f"model vs ridge: {100 * r['improvement_over_ridge']:+.1f}% lower MAE")
    elif r.get("ridge_note"):
        lines.append(r["ridge_note"])
    worst = sorted(r["mae_by_blendshape"].items(), key=lambda kv: -kv[1])[:5]
    lines.append("largest errors: " + ", ".join(f"{n} {v:.3f}" for n, v in worst))
    lines.append(f"latency per frame (streamed): median {r['latency_ms_median']:.3f} ms, "
                 f"p95 {r['latency_ms_p95']:.3f} ms over {r['latency_frames']} frames")
    return lines
