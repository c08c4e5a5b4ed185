"""A trained student checkpoint to the files ``imusic.infer`` runs: PyTorch -> ONNX -> onnx2tf ->
float32 and full-integer int8 TFLite, checked against PyTorch before anything is written.

Steps (docs/runtime.md, "Export"), each guarding against a trap measured on this toolchain:

1. ONNX with ``torch.onnx.export(..., opset_version=17, dynamo=False)``: the dynamo exporter
   ignores the opset and writes a separate weights file. The graph must have no ``Erf`` (exact
   GELU), which onnx2tf turns into ``FlexErf`` that LiteRT cannot run.
2. onnx2tf (a subprocess of this Python, its chatter kept and shown only when it fails) on a
   COPY of the .onnx, since it overwrites its input with a simplified one. ``-kat imu`` keeps the
   (1, W, C) input as it is (else it is transposed like an image); ``-cind imu calib.npy 0 1``
   gives it representative windows (already normalised by ``assemble_input``, hence mean 0, std
   1), without which it refuses int8 for a non-image input; ``-oiqt -qt per-channel`` makes the
   int8 files. onnxsim newer than 0.4 made onnx2tf write silently wrong models: refused up front.
3. The int8 file kept is onnx2tf's ``*_integer_quant.tflite``: int8 weights and activations with
   float32 input and output (a quantise op in, a dequantise op out), so the runtime feeds the
   same float window to every precision. The int8-I/O variant was no faster on LiteRT here and
   would move the quantisation into Python.
4. Parity on held-out calibration windows (every fourth; the rest calibrate): ONNX on
   onnxruntime, float32 and int8 TFLite on LiteRT, each through ``imusic.infer.load_model`` on the
   staged directory (so the metadata and tensor checks run too), against PyTorch. Over the bounds
   nothing is written.

The model directory: ``model.json`` (``ModelSpec`` with ``files``, plus an ``export`` record: tool
versions, parity, sizes, file checksums), ``model-float32.tflite``, ``model-int8.tflite``,
``model.onnx``, and ``ridge.npz`` when the checkpoint carries a ridge baseline.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from imusic.errors import UserError
from imusic.infer import METADATA_FILE, load_model, sha256_of
from imusic.modelio import INPUT_NAME, OUTPUT_NAME, ModelSpec, ModelSpecError

__all__ = ["EXPORT_INSTALL", "FILE_NAMES", "FLOAT32_MAX_ABS", "INT8_MAX_ABS", "INT8_MEAN_ABS", "OPSET", "ExportError",
           "ExportReport", "export_checkpoint", "load_checkpoint", "run_onnx2tf"]

OPSET = 17
# TFLite float32 against PyTorch: the same arithmetic in another order (measured ~1e-7).
FLOAT32_MAX_ABS = 1e-4
# int8 against PyTorch, in blendshape units (0-1; one output LSB is ~0.004). Quantisation error is
# small on average but has a tail: trainings of the student measured a mean of 0.2-0.3 LSB and a
# worst window of 7-13 LSB (0.026-0.049). A conversion bug moves most outputs (the onnxsim 0.8.1
# one gave a worst of 0.08-0.23), so the mean is what is bounded tightly and the worst case loosely.
INT8_MEAN_ABS = 0.005
INT8_MAX_ABS = 0.15
FILE_NAMES = {"float32": "model-float32.tflite", "int8": "model-int8.tflite", "onnx": "model.onnx"}
RIDGE_FILE = "ridge.npz"
EXPORT_INSTALL = "pip install 'imusic[export]' then pip install --no-deps tf-keras==2.21.0 onnx2tf==1.29.24"
ONNX2TF_TIMEOUT_S = 1800.0
TOOLS = {"torch": "torch", "onnx": "onnx", "onnxruntime": "onnxruntime", "onnx2tf": "onnx2tf",
         "onnxsim": "onnxsim", "tensorflow": "tensorflow", "tf_keras": "tf_keras", "ai_edge_litert": "ai_edge_litert"}


class ExportError(UserError):
    """A checkpoint that cannot be exported, a missing tool, or a conversion that failed parity."""


@dataclass
class Checkpoint:
    path: Path
    kind: str
    arch: dict[str, Any]
    state_dict: dict[str, Any]
    spec: ModelSpec
    calib_x: np.ndarray  # (N, W, C) float32, normalised model inputs
    ridge: Any = None


@dataclass
class ExportReport:
    out_dir: Path
    files: dict[str, str]
    sizes_bytes: dict[str, int]
    parity: dict[str, dict[str, float]]
    seconds: dict[str, float]
    tools: dict[str, str]
    ridge: str | None = None
    notes: list[str] = field(default_factory=list)


# -- tools ------------------------------------------------------------------------------------------
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def tool_versions() -> dict[str, str]:
    names = {"torch": ["torch"], "onnx": ["onnx"], "onnxruntime": ["onnxruntime"], "onnx2tf": ["onnx2tf"],
             "onnxsim": ["onnxsim"], "tensorflow": ["tensorflow-cpu", "tensorflow"],
             "tf-keras": ["tf-keras", "tf_keras"],
             "ai-edge-litert": ["ai-edge-litert"], "imusic": ["imusic"]}
    out: dict[str, str] = {}
    for name, dists in names.items():
        for dist in dists:
            v = _version(dist)
            if v:
                out[name] = v if dist == dists[0] else f"{v} ({dist})"
                break
    return out


def check_tools() -> None:
    """One line naming what to install when an export tool is missing (before any work starts)."""
    missing = [name for name, module in TOOLS.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise ExportError(f"model export needs {', '.join(missing)}: {EXPORT_INSTALL}")
    onnxsim = _version("onnxsim") or "0"
    major_minor = tuple(int(p) for p in (onnxsim.split(".") + ["0"])[:2] if p.isdigit())
    if major_minor >= (0, 5):
        raise ExportError(f"onnxsim {onnxsim} makes onnx2tf write wrong models (measured with 0.8.1); "
                          "pip install onnxsim==0.4.36")


# -- checkpoint -------------------------------------------------------------------------------------
def load_checkpoint(path: str | Path) -> Checkpoint:
    """A student checkpoint (``imusic train student``), checked; a teacher's is refused."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise ExportError(f"{p}: no such checkpoint" if not p.exists() else f"{p} is not a checkpoint file")
    try:
        # a checkpoint holds numpy arrays and dicts beside the weights; it is the user's own
        # training output, trusted like the code that trained it
        raw = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises pickle, zip and runtime errors for foreign files
        text = str(exc).strip().splitlines()
        why = text[0] if text else type(exc).__name__
        raise ExportError(f"{p} is not a readable PyTorch checkpoint ({why})") from None
    if not isinstance(raw, dict) or "kind" not in raw or "spec" not in raw:
        raise ExportError(f"{p} is not an imusic checkpoint (no \"kind\" and \"spec\"): train one with `imusic train`")
    kind = str(raw["kind"])
    if kind == "teacher":
        raise ExportError(f"{p} is a teacher checkpoint: the teacher is the offline reference and is not exported; "
                          "export the student distilled from it (imusic train student)")
    if kind != "student":
        raise ExportError(f"{p} is a {kind!r} checkpoint; only a student is exported")
    for key in ("arch", "state_dict", "calib_x"):
        if key not in raw:
            raise ExportError(f"{p}: student checkpoint lacks {key!r}")
    spec = ModelSpec.from_json(raw["spec"], f"{p} (spec)")
    spec.check_runtime()
    calib = raw["calib_x"]
    calib_x = np.asarray(calib.detach().cpu().numpy() if hasattr(calib, "detach") else calib, dtype=np.float32)
    if calib_x.ndim != 3 or calib_x.shape[1:] != spec.input_shape[1:] or len(calib_x) < 2:
        raise ExportError(f"{p}: calib_x is {calib_x.shape}, export needs at least 2 windows of "
                          f"{spec.input_shape[1:]} (the spec's window and channels)")
    if not np.isfinite(calib_x).all():
        raise ExportError(f"{p}: calib_x holds NaN or infinite values")
    return Checkpoint(path=p, kind=kind, arch=dict(raw["arch"]), state_dict=raw["state_dict"], spec=spec,
                      calib_x=calib_x, ridge=raw.get("ridge"))


def build_student(ckpt: Checkpoint) -> Any:
    import torch

    from imusic_model.student import Student

    try:
        model = Student(**ckpt.arch)
        model.load_state_dict(ckpt.state_dict)
    except (TypeError, RuntimeError, KeyError) as exc:
        text = str(exc).strip().splitlines()
        raise ExportError(f"{ckpt.path}: its weights do not fit this imusic's student "
                          f"({text[0] if text else type(exc).__name__})") from None
    model.eval()
    with torch.no_grad():
        y = model(torch.from_numpy(ckpt.calib_x[:1]))
    if tuple(y.shape) != (1, len(ckpt.spec.blendshapes)):
        raise ExportError(f"{ckpt.path}: the student gives {tuple(y.shape)} for one window, not (1, 52)")
    return model


def torch_predict(model: Any, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy().astype(np.float32)


# -- conversion -------------------------------------------------------------------------------------
def export_onnx(model: Any, spec: ModelSpec, path: Path) -> None:
    import warnings

    import onnx
    import torch

    example = torch.zeros(spec.input_shape, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter announces itself: dynamo=False is deliberate
        torch.onnx.export(model, (example,), str(path), opset_version=OPSET, dynamo=False,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    graph = onnx.load(str(path))
    ops = {node.op_type for node in graph.graph.node}
    if "Erf" in ops:
        raise ExportError("the student uses exact GELU (ONNX Erf), which onnx2tf turns into FlexErf that LiteRT "
                          "cannot run: use nn.ReLU or nn.GELU(approximate='tanh')")


def run_onnx2tf(onnx_path: Path, work: Path, calib: np.ndarray | None) -> dict[str, Path]:
    """onnx2tf on a copy of ``onnx_path`` in ``work``; {"float32": ..., "int8": ..., "int8_io": ...}
    (the int8 entries when ``calib`` windows are given). Its output is shown only on failure."""
    work.mkdir(parents=True, exist_ok=True)
    src = work / "convert.onnx"  # onnx2tf overwrites its input with a simplified copy
    shutil.copyfile(onnx_path, src)
    out = work / "tf"
    cmd = [sys.executable, "-m", "onnx2tf", "-i", str(src), "-o", str(out), "-kat", INPUT_NAME]
    if calib is not None:
        np.save(work / "calib.npy", np.ascontiguousarray(calib, dtype=np.float32))
        cmd += ["-oiqt", "-qt", "per-channel", "-cind", INPUT_NAME, str(work / "calib.npy"), "[0.0]", "[1.0]"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1")
    try:
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=ONNX2TF_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ExportError(f"onnx2tf did not finish in {ONNX2TF_TIMEOUT_S:.0f} s") from None
    files = {"float32": out / "convert_float32.tflite"}
    if calib is not None:
        files["int8"] = out / "convert_integer_quant.tflite"
        files["int8_io"] = out / "convert_full_integer_quant.tflite"
    missing = [k for k, f in files.items() if not f.is_file()]
    if proc.returncode != 0 or missing:
        sys.stderr.write(proc.stdout[-20000:] + proc.stderr[-20000:])
        what = f"exit status {proc.returncode}" if proc.returncode else f"no {', '.join(missing)} file written"
        raise ExportError(f"onnx2tf failed ({what}); its output is above")
    return files


# -- parity -----------------------------------------------------------------------------------------
def _errors(got: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    d = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean())}


def int8_output_scale(path: Path) -> float | None:
    """The scale of the int8 tensor dequantised into the output (one LSB in blendshape units)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    out_index = int(it.get_output_details()[0]["index"])
    for op in it._get_ops_details():  # noqa: SLF001 - the public API has no op graph
        if op["op_name"] == "DEQUANTIZE" and out_index in list(op["outputs"]):
            q = it._get_tensor_details(int(op["inputs"][0]), 0)["quantization"]  # noqa: SLF001
            return float(q[0]) or None
    q = it.get_output_details()[0]["quantization"]
    return float(q[0]) or None


def check_parity(stage: Path, model: Any, held: np.ndarray, precisions: list[str]) -> dict[str, dict[str, float]]:
    """Each written file through the runtime against PyTorch on ``held`` windows; ExportError past a bound."""
    ref = torch_predict(model, held)
    parity: dict[str, dict[str, float]] = {}
    runs = [("onnx", "onnxruntime", None)] + [(p, "litert", p) for p in precisions]
    for name, backend, precision in runs:
        try:
            runtime = load_model(stage, precision=precision, backend=backend, threads=1)
        except ModelSpecError as exc:
            raise ExportError(f"the converted {name} file does not load in imusic.infer: {exc}") from None
        parity[name] = _errors(runtime.predict(held), ref)
    # per file: (bound on the worst element, bound on the mean; None: the worst element says it all)
    bounds = {"onnx": (FLOAT32_MAX_ABS, None), "float32": (FLOAT32_MAX_ABS, None), "int8": (INT8_MAX_ABS, INT8_MEAN_ABS)}
    if "int8" in parity:
        scale = int8_output_scale(stage / FILE_NAMES["int8"])
        if scale:
            parity["int8"]["output_lsb"] = scale
            parity["int8"]["max_abs_lsb"] = parity["int8"]["max_abs"] / scale
    for name, err in parity.items():
        max_bound, mean_bound = bounds[name]
        if err["max_abs"] > max_bound:
            what, bound = f"by up to {err['max_abs']:.3g} on", max_bound
        elif mean_bound is not None and err["mean_abs"] > mean_bound:
            what, bound = f"by {err['mean_abs']:.3g} on average over", mean_bound
        else:
            continue
        raise ExportError(f"{name} differs from PyTorch {what} {len(held)} held-out windows (bound {bound:g}): "
                          "conversion is wrong, nothing written")
    return parity


# -- the whole export -------------------------------------------------------------------------------
def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file, not a model directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"{out} exists and is not empty: use --force to overwrite the model in it")
    if not out.parent.is_dir():
        raise ExportError(f"{out}: no such directory {out.parent}")


def _write_ridge(ckpt: Checkpoint, stage: Path) -> str | None:
    """The ridge baseline fit on the same split, checked to fit the model's windows: the
    checkpoint's "ridge" (the bytes of ``RidgeBaseline.save``'s npz, or a dict of its arrays),
    else a ridge.npz beside the checkpoint. None when there is neither."""
    from imusic.ridge import RidgeBaseline

    target = stage / RIDGE_FILE
    if isinstance(ckpt.ridge, (bytes, bytearray)):
        target.write_bytes(bytes(ckpt.ridge))
        source = "the checkpoint"
    elif isinstance(ckpt.ridge, dict):
        arrays = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in ckpt.ridge.items()}
        with open(target, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
        source = "the checkpoint"
    elif (ckpt.path.parent / RIDGE_FILE).is_file():
        shutil.copyfile(ckpt.path.parent / RIDGE_FILE, target)
        source = str(ckpt.path.parent / RIDGE_FILE)
    else:
        return None
    ridge = RidgeBaseline.load(target)
    if (ridge.window_frames, ridge.channels) != ckpt.spec.input_shape[1:]:
        raise ExportError(f"the ridge baseline from {source} takes windows of {(ridge.window_frames, ridge.channels)}, "
                          f"the model {ckpt.spec.input_shape[1:]}: it was fit on other data")
    return source


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path, *, int8: bool = True, float32: bool = True,
                      force: bool = False, log: Callable[[str], None] | None = None) -> ExportReport:
    """Export a student checkpoint to ``out_dir`` (see the module docstring); nothing is written
    unless every file passed parity."""
    import torch

    say = log or (lambda _msg: None)
    t0 = time.perf_counter()
    out = Path(out_dir)
    if not (int8 or float32):
        raise ExportError("--no-int8 and --no-float32 together leave nothing to export")
    check_tools()
    _prepare_out(out, force)
    ckpt = load_checkpoint(ckpt_path)
    model = build_student(ckpt)
    calib = ckpt.calib_x
    held_mask = (np.arange(len(calib)) % 4) == 3
    if not held_mask.any():
        held_mask[-1] = True
    held, calib_set = calib[held_mask], calib[~held_mask]
    precisions = [p for p, on in (("float32", float32), ("int8", int8)) if on]
    seconds: dict[str, float] = {}
    notes: list[str] = []

    stage = Path(tempfile.mkdtemp(prefix=".imusic-export-", dir=out.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="imusic-onnx2tf-") as tmp:
            t = time.perf_counter()
            export_onnx(model, ckpt.spec, stage / FILE_NAMES["onnx"])
            seconds["onnx_s"] = time.perf_counter() - t
            say(f"ONNX (opset {OPSET}) written; converting with onnx2tf ({'float32 and int8' if int8 else 'float32'})")
            t = time.perf_counter()
            converted = run_onnx2tf(stage / FILE_NAMES["onnx"], Path(tmp), calib_set if int8 else None)
            seconds["onnx2tf_s"] = time.perf_counter() - t
            for precision in precisions:
                shutil.copyfile(converted[precision], stage / FILE_NAMES[precision])
        files = {p: FILE_NAMES[p] for p in (*precisions, "onnx")}
        sizes = {name: (stage / name).stat().st_size for name in files.values()}
        export_info: dict[str, Any] = {
            "tools": tool_versions(), "opset": OPSET, "checkpoint": ckpt.path.name,
            "checkpoint_sha256": sha256_of(ckpt.path), "created_unix_s": time.time(),
            "int8": "full-integer weights and activations, float32 input/output (quantise/dequantise inside)",
            "calibration_windows": int(len(calib_set)), "held_windows": int(len(held)),
            "sizes_bytes": sizes, "sha256": {name: sha256_of(stage / name) for name in files.values()},
        }
        spec = ModelSpec(**{**ckpt.spec.to_json(), "files": files})
        _write_metadata(stage / METADATA_FILE, spec, export_info)
        t = time.perf_counter()
        torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
        parity = check_parity(stage, model, held, precisions)
        seconds["parity_s"] = time.perf_counter() - t
        ridge_from = _write_ridge(ckpt, stage)
        if ridge_from is None:
            notes.append("no ridge baseline in the checkpoint or beside it: ridge.npz not written")
        seconds["total_s"] = time.perf_counter() - t0
        export_info.update(parity=parity, seconds={k: round(v, 2) for k, v in seconds.items()},
                           ridge=ridge_from)
        _write_metadata(stage / METADATA_FILE, spec, export_info)
        _publish(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return ExportReport(out_dir=out, files=files, sizes_bytes=sizes, parity=parity, seconds=seconds,
                        tools=export_info["tools"], ridge=ridge_from, notes=notes)


def _write_metadata(path: Path, spec: ModelSpec, export_info: dict[str, Any]) -> None:
    import json

    spec.validate(str(path))
    path.write_text(json.dumps({**spec.to_json(), "export": export_info}, indent=1))


def _publish(stage: Path, out: Path) -> None:
    """Move the staged files in; model.json last, and files of an older export it no longer lists go."""
    out.mkdir(exist_ok=True)
    ours = {*FILE_NAMES.values(), RIDGE_FILE, METADATA_FILE}
    (out / METADATA_FILE).unlink(missing_ok=True)
    for name in ours - {p.name for p in stage.iterdir()}:
        (out / name).unlink(missing_ok=True)
    for f in sorted(stage.iterdir(), key=lambda f: f.name == METADATA_FILE):
        os.replace(f, out / f.name)
