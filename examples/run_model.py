"""Blendshapes from a rig with an exported model, the way a live capture runs on a small board:
aligned frames -> features (head motion removed) -> one inference per frame.

    python examples/run_model.py --model default --source rec.imu          # replay a recording
    python examples/run_model.py --model DIR --source /dev/ttyACM0 --calibration rig.json
    python examples/run_model.py --model DIR --source rec.imu --precision float32 --json

--model: a directory written by `imusic export` (or "default", the shipped one); --source: a .imu
recording or any session URL (serial port, udp://:PORT, emu://...). Prints the strongest
blendshapes twice a second and, at the end, the median time per frame (features + inference) and
per inference alone. Bad input (a model whose metadata does not fit, a missing file) is one line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from imusic.arkit import BLENDSHAPES
from imusic.errors import UserError
from imusic.infer import BlendshapeStream, load_model


def run(args: argparse.Namespace) -> int:
    import imusic
    from imusic.session import recording_url

    model = load_model(args.model, precision=args.precision, backend=args.backend, threads=args.threads)
    stream = BlendshapeStream(model, args.layout or model.spec.layout, args.calibration)
    source = recording_url(args.source) if args.source.endswith(".imu") else args.source
    frame_ms: list[float] = []
    weights = np.zeros(len(BLENDSHAPES), np.float32)
    with imusic.Session.open([source], rate_hz=model.spec.rate_hz) as session:
        for n, frame in enumerate(session.frames(timeout_s=2.0)):
            t0 = time.perf_counter()
            weights = stream.update(frame)
            frame_ms.append((time.perf_counter() - t0) * 1e3)
            if not args.json and n % 30 == 0:
                top = np.argsort(weights)[::-1][:4]
                print(f"t={frame.t_host_s:8.3f}s  " + "  ".join(f"{BLENDSHAPES[i]} {weights[i]:.2f}" for i in top))
            if args.max_frames and n + 1 >= args.max_frames:
                break
    # inference alone, on the last window, after the stream has warmed everything up
    window = stream.stream.window()
    inference_ms = []
    for _ in range(200):
        t0 = time.perf_counter()
        model.predict_window(window)
        inference_ms.append((time.perf_counter() - t0) * 1e3)
    report = {"model": str(model.path), "backend": model.backend, "precision": model.precision,
              "threads": model.threads, "frames": len(frame_ms),
              "frame_ms_median": float(np.median(frame_ms)) if frame_ms else None,
              "inference_ms_median": float(np.median(inference_ms)),
              "last": {name: round(float(v), 4) for name, v in zip(BLENDSHAPES, weights)}}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['frames']} frames; {model.precision} on {model.backend} ({model.threads} thread): median "
              f"{report['frame_ms_median']:.3f} ms per frame, {report['inference_ms_median']:.3f} ms per inference")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", help="model directory, a model file, or 'default'")
    p.add_argument("--source", "--recording", required=True, help="a .imu recording or a session URL")
    p.add_argument("--calibration", default=None, help="the rig's calibration file (imusic calibrate)")
    p.add_argument("--layout", default=None, help="the rig's layout (default: the model's)")
    p.add_argument("--precision", choices=("int8", "float32"), default=None)
    p.add_argument("--backend", choices=("auto", "litert", "tflite_runtime", "onnxruntime"), default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-frames", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON report instead")
    args = p.parse_args(argv)
    try:
        return run(args)
    except UserError as exc:
        print(f"run_model: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
