"""The side of ``imusic edge-check`` that runs a model: imported on x86, and run as a script by the
emulated aarch64 Python (``python3.11 guest.py REQUEST.json``), so both machines execute the same
lines. Module level needs only the standard library and numpy; LiteRT and imusic are imported
where used (the guest has the aarch64 wheels on its path).

Instruction marks: ``mark(k)`` makes the syscall ``lseek(-1, MARK_BASE + k, SEEK_SET)``, which
fails harmlessly; the QEMU plugin (``insn_count.c``) writes its running instruction count at each
one, so two marks bracket exactly the guest instructions executed between them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np

MARK_BASE = 0x1A7E5E00  # must match insn_count.c
MARKS_PER_CYCLE = 256  # the plugin accepts BASE + 0..255; the host reads marks in order


def mark(k: int) -> None:
    try:
        os.lseek(-1, MARK_BASE + (k % MARKS_PER_CYCLE), os.SEEK_SET)
    except OSError:
        pass


KERNELS = ("xnnpack", "builtin", "reference")


@contextlib.contextmanager
def quiet_info_lines() -> Iterator[None]:
    """LiteRT's native code writes "INFO: Created TensorFlow Lite XNNPACK delegate" straight to
    file descriptor 2: hold it while an interpreter is built, then pass on anything else."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            rest = [ln for ln in held.read().decode(errors="replace").splitlines(keepends=True)
                    if ln.strip() and not ln.startswith("INFO: ")]
            if rest:
                sys.stderr.write("".join(rest))


def open_interpreter(path: str, threads: int = 1, kernels: str = "xnnpack") -> Any:
    """A LiteRT interpreter, tensors allocated. kernels: "xnnpack" (the default delegate, what a
    device runs), "builtin" (LiteRT's optimised kernels without delegates) or "reference" (its
    plain reference kernels)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = {"xnnpack": OpResolverType.AUTO, "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                "reference": OpResolverType.BUILTIN_REF}[kernels]
    with quiet_info_lines():
        interp = Interpreter(model_path=path, num_threads=threads, experimental_op_resolver_type=resolver)
        interp.allocate_tensors()
    return interp


def graph_report(interp: Any) -> dict[str, Any]:
    """How LiteRT split the graph: XNNPACK partitions, ops inside them and ops left to the
    built-in kernels.

    After delegation the interpreter lists the original nodes followed by one ``DELEGATE`` node
    per partition; only the execution plan says which originals still run, and it is not exposed.
    It follows from the data flow: walking back from the graph outputs, a tensor is produced by a
    delegate node when one outputs it, else by the original node that writes it; the originals
    reached that way run on built-in kernels, the others were absorbed into a partition.
    """
    ops = interp._get_ops_details()
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    originals = [op for op in ops if op["op_name"] != "DELEGATE"]
    producer: dict[int, tuple[str, int]] = {}
    for op in originals:
        for t in op["outputs"]:
            producer[int(t)] = ("op", int(op["index"]))
    for op in delegates:  # a delegate replaces the original producer of its outputs
        for t in op["outputs"]:
            producer[int(t)] = ("delegate", int(op["index"]))
    by_index = {int(op["index"]): op for op in ops}
    running: set[int] = set()
    seen: set[int] = set()
    todo = [int(d["index"]) for d in interp.get_output_details()]
    while todo:
        t = todo.pop()
        if t in seen or t not in producer:
            continue
        seen.add(t)
        _kind, idx = producer[t]
        if idx not in running:
            running.add(idx)
            todo.extend(int(i) for i in by_index[idx]["inputs"] if int(i) >= 0)
    fallback = [by_index[i]["op_name"] for i in sorted(running) if by_index[i]["op_name"] != "DELEGATE"]
    delegated = [op["op_name"] for op in originals if int(op["index"]) not in running]
    return {
        "nodes": len(originals),
        "partitions": sum(1 for d in delegates if int(d["index"]) in running),
        "delegated_ops": dict(sorted(Counter(delegated).items())),
        "fallback_ops": dict(sorted(Counter(fallback).items())),
        "fallback_sequence": fallback,
    }


def _tensor_scale(interp: Any, index: int) -> float | None:
    for d in interp.get_tensor_details():
        if int(d["index"]) == index:
            scale, _zero = d["quantization"]
            return float(scale) if scale else None
    return None


def output_lsb(interp: Any) -> float | None:
    """One least significant bit of the output, in output units: the output's own scale when it
    is quantised, else the scale of the quantised tensor a final DEQUANTIZE reads (int8 models
    with float outputs); None for a float model."""
    out = interp.get_output_details()[0]
    scale, _zero = out["quantization"]
    if scale:
        return float(scale)
    for op in interp._get_ops_details():
        if op["op_name"] == "DEQUANTIZE" and int(out["index"]) in [int(t) for t in op["outputs"]]:
            return _tensor_scale(interp, int(op["inputs"][0]))
    return None


def model_input(interp: Any, x: np.ndarray) -> np.ndarray:
    """Float windows (N, W, C) as the model's input tensor type (quantised for int8 inputs)."""
    d = interp.get_input_details()[0]
    dtype = np.dtype(d["dtype"])
    if dtype == np.float32:
        return np.asarray(x, np.float32)
    scale, zero = d["quantization"]
    info = np.iinfo(dtype)
    q = np.round(np.asarray(x, np.float32) / np.float32(scale)) + zero
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantise_output(interp: Any, y: np.ndarray) -> np.ndarray:
    d = interp.get_output_details()[0]
    if np.dtype(d["dtype"]) == np.float32:
        return np.asarray(y, np.float32)
    scale, zero = d["quantization"]
    return ((y.astype(np.float32) - np.float32(zero)) * np.float32(scale)).astype(np.float32)


def run_windows(path: str, x_model: np.ndarray, *, marks: bool = False, empty_brackets: int = 0,
                kernels: str = "xnnpack") -> dict[str, Any]:
    """Invoke the model once per window of ``x_model`` (already in the input tensor's type, one
    window per row) and return raw outputs, the graph report and the output LSB.

    With ``marks``: ``empty_brackets`` pairs of marks around nothing (the bracket's own cost),
    then for every window a mark before and after ``invoke()``; the host reads the counts."""
    interp = open_interpreter(path, threads=1, kernels=kernels)
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    k = 0
    if marks:
        for _ in range(empty_brackets):
            mark(k)
            mark(k + 1)
            k += 2
    rows = []
    for i in range(len(x_model)):
        interp.set_tensor(inp["index"], x_model[i:i + 1])
        if marks:
            mark(k)
        interp.invoke()
        if marks:
            mark(k + 1)
            k += 2
        rows.append(np.array(interp.get_tensor(out["index"])[0]))
    return {"raw": np.stack(rows) if rows else np.zeros((0,), np.float32),
            "graph": graph_report(interp), "output_lsb": output_lsb(interp),
            "output_dtype": str(np.dtype(out["dtype"])), "input_dtype": str(np.dtype(inp["dtype"]))}


def run_stream(model_dir: str, precision: str, recording: str, *, max_frames: int | None = None,
               marks: bool = False) -> dict[str, Any]:
    """imusic's streaming runtime on a recording: every frame (the first ``max_frames``) through
    ``BlendshapeStream.update`` (features + model), marks around each update. Returns the
    blendshapes and the features the stream computed (to tell feature differences from model
    differences)."""
    from imusic.infer import BlendshapeStream, load_model
    from imusic.placement import load_layout
    from imusic.replay import replay_blocks

    model = load_model(model_dir, precision=precision, backend="auto", threads=1)
    layout = load_layout(model.spec.layout)
    stream = BlendshapeStream(model, layout, None)
    rows = []
    feats: list[np.ndarray] = []
    valid: list[np.ndarray] = []
    k = 0
    for block in replay_blocks(recording, model.spec.rate_hz).blocks:
        for frame in block.frames():
            if max_frames is not None and len(rows) >= max_frames:
                break
            if marks:
                mark(k)
            y = stream.update(frame)
            if marks:
                mark(k + 1)
                k += 2
            rows.append(np.asarray(y, np.float32))
            last = getattr(stream, "last_features", None)
            if last is not None:
                feats.append(np.asarray(last[0], np.float32))
                valid.append(np.asarray(last[1], bool))
    return {"blendshapes": np.stack(rows) if rows else np.zeros((0, 52), np.float32),
            "features": np.stack(feats) if feats else np.zeros((0, 0, 9), np.float32),
            "valid": np.stack(valid) if valid else np.zeros((0, 0), bool),
            "backend": str(getattr(model, "backend", "")), "precision": str(getattr(model, "precision", precision))}


def main(argv: list[str]) -> int:
    """Guest entry: ``guest.py REQUEST.json``; writes the request's ``out`` (.npz) and ``info``
    (.json). Request: {"mode": "windows", "model": path, "inputs": npz with "x", "empty_brackets",
    "kernels" (default "xnnpack")}
    or {"mode": "stream", "model_dir", "precision", "recording"}; "marks": bool."""
    with open(argv[1]) as f:
        req = json.load(f)
    if req["mode"] == "windows":
        x = np.load(req["inputs"])["x"]
        res = run_windows(req["model"], x, marks=req.get("marks", False),
                          empty_brackets=int(req.get("empty_brackets", 0)), kernels=req.get("kernels", "xnnpack"))
        np.savez(req["out"], raw=res.pop("raw"))
    elif req["mode"] == "stream":
        res = run_stream(req["model_dir"], req["precision"], req["recording"], max_frames=req.get("max_frames"),
                         marks=req.get("marks", False))
        np.savez(req["out"], blendshapes=res.pop("blendshapes"), features=res.pop("features"), valid=res.pop("valid"))
    else:
        raise SystemExit(f"unknown mode {req['mode']!r}")
    import platform

    res["machine"] = platform.machine()
    with open(req["info"], "w") as f:
        json.dump(res, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
