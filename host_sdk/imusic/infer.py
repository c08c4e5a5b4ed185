"""Run an exported blendshape model on the host or a small board: no torch, no TensorFlow.

- ``load_model(path | "default", precision, backend, threads)``: a model directory written by
  ``imusic export`` (``model.json`` beside ``model-int8.tflite``, ``model-float32.tflite`` and
  ``model.onnx``), or one of those files. ``.tflite`` runs on LiteRT (``ai-edge-litert``), or on
  ``tflite_runtime`` where a device has only that; ``.onnx`` on onnxruntime. The metadata is read
  and checked at load: format, feature version, the file's checksum, and the tensor names and
  shapes against the window, layout and blendshapes it describes. Anything off is one
  ``ModelSpecError`` line naming what differs.
- ``StreamingInference(model).push(feats, valid)``: a ring buffer of the last W feature frames
  (frames before it filled count as missing IMUs), one inference per pushed frame.
- ``BlendshapeStream(model, layout, calibration).update(frame)``: aligned frames in, blendshapes
  out (``imusic.features`` then ``StreamingInference``).

docs/runtime.md describes the export, the backends and the metadata.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from imusic.errors import UserError
from imusic.modelio import INPUT_NAME, OUTPUT_NAME, ModelSpec, ModelSpecError, assemble_input

if TYPE_CHECKING:
    from imusic.align import Frame
    from imusic.calibration import Calibration
    from imusic.placement import Layout

__all__ = ["BACKENDS", "DEFAULT_MODEL_DIR", "METADATA_FILE", "PRECISIONS", "BackendError", "BlendshapeStream",
           "Model", "ModelSpecError", "StreamingInference", "load_model", "sha256_of"]

BACKENDS = ("auto", "litert", "tflite_runtime", "onnxruntime")
PRECISIONS = ("int8", "float32")
METADATA_FILE = "model.json"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "default"
N_BLENDSHAPES = 52


class BackendError(UserError):
    """The runtime a model needs is missing or cannot run here."""


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# -- backends ---------------------------------------------------------------------------------------
class _Runner(Protocol):
    input_name: str
    output_name: str | None  # None where the file does not keep the name (TFLite int8 signatures)
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]

    def run(self, x: np.ndarray) -> np.ndarray:
        """One window (1, W, C) float32 -> (52,) float32."""
        ...


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _tflite_interpreter_class(backend: str) -> type[Any]:
    module = {"litert": "ai_edge_litert.interpreter", "tflite_runtime": "tflite_runtime.interpreter"}[backend]
    if backend == "tflite_runtime" and _have("tflite_runtime") and not _tflite_runtime_fits_numpy():
        # its last release (2.14) is built against NumPy 1.x: it imports, then fails opening a model
        raise BackendError(f"tflite_runtime {_dist_version('tflite-runtime')} needs numpy<2 (this is numpy "
                           f"{np.__version__}): use ai-edge-litert (pip install ai-edge-litert==2.3.0)")
    try:
        return importlib.import_module(module).Interpreter
    except ImportError:
        hint = ("pip install ai-edge-litert==2.3.0" if backend == "litert"
                else "the older runtime some devices ship; imusic's default is ai-edge-litert")
        raise BackendError(f"backend {backend} is not installed ({hint})") from None


def _dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _tflite_runtime_fits_numpy() -> bool:
    if int(np.__version__.split(".")[0]) < 2:
        return True
    parts = _dist_version("tflite-runtime").split(".")
    try:
        return (int(parts[0]), int(parts[1])) > (2, 14)
    except (ValueError, IndexError):
        return False


def _tflite_backend(backend: str) -> tuple[str, type[Any]]:
    """(backend, Interpreter class); "auto" is LiteRT, else tflite_runtime where that is what there is."""
    if backend != "auto":
        return backend, _tflite_interpreter_class(backend)
    errors: list[str] = []
    for candidate in ("litert", "tflite_runtime"):
        try:
            return candidate, _tflite_interpreter_class(candidate)
        except BackendError as exc:
            errors.append(str(exc))
    raise BackendError(f"no usable TFLite runtime: {errors[0]}; {errors[1]}")


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """LiteRT's C++ side prints "INFO: Created TensorFlow Lite XNNPACK delegate" on the process's
    stderr (no setting turns it off), which would be a second line under a one-line error: hold fd 2
    while the interpreter is built and pass on anything but INFO lines."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines(keepends=True)
                    if line.strip() and not line.startswith("INFO: ")]
            if kept:
                sys.stderr.write("".join(kept))


class _TfliteRunner:
    """A .tflite file on LiteRT or tflite_runtime (same Interpreter API). Quantised input/output
    tensors (full-int8 I/O) are quantised and dequantised here with the file's scale/zero-point."""

    def __init__(self, path: Path, interpreter_class: type[Any], threads: int) -> None:
        with _quiet_native_stderr():
            self._it = interpreter_class(model_path=str(path), num_threads=threads)
            self._it.allocate_tensors()
        inputs, outputs = self._it.get_input_details(), self._it.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelSpecError(f"{path.name} has {len(inputs)} inputs and {len(outputs)} outputs; an imusic model "
                                 f"has one of each ({INPUT_NAME!r}, {OUTPUT_NAME!r})")
        i, o = inputs[0], outputs[0]
        self._in_index, self._out_index = int(i["index"]), int(o["index"])
        self.input_shape = tuple(int(v) for v in i["shape"])
        self.output_shape = tuple(int(v) for v in o["shape"])
        # onnx2tf keeps the ONNX input name in the signature; the int8 file's output is "output_0"
        signatures = self._it.get_signature_list() or {}
        sig = next(iter(signatures.values()), {})
        sig_inputs, sig_outputs = list(sig.get("inputs", [])), list(sig.get("outputs", []))
        self.input_name = sig_inputs[0] if len(sig_inputs) == 1 else str(i["name"])
        self.output_name = OUTPUT_NAME if sig_outputs == [OUTPUT_NAME] else None
        self._in_dtype = np.dtype(i["dtype"])
        self._out_dtype = np.dtype(o["dtype"])
        self._in_q = self._quant(i, "input")
        self._out_q = self._quant(o, "output")

    @staticmethod
    def _quant(detail: dict[str, Any], what: str) -> tuple[float, int] | None:
        dtype = np.dtype(detail["dtype"])
        if dtype == np.float32:
            return None
        if dtype not in (np.dtype(np.int8), np.dtype(np.uint8)):
            raise ModelSpecError(f"model {what} tensor is {dtype}; imusic runs float32 or int8/uint8 I/O")
        scale, zero = detail["quantization"]
        if not scale:
            raise ModelSpecError(f"model {what} tensor is {dtype} without a quantisation scale")
        return float(scale), int(zero)

    def run(self, x: np.ndarray) -> np.ndarray:
        if self._in_q is not None:
            scale, zero = self._in_q
            info = np.iinfo(self._in_dtype)
            x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(self._in_dtype)
        self._it.set_tensor(self._in_index, x)
        self._it.invoke()
        y = self._it.get_tensor(self._out_index).reshape(-1)
        if self._out_q is not None:
            scale, zero = self._out_q
            return ((y.astype(np.float32) - np.float32(zero)) * np.float32(scale)).astype(np.float32)
        return y


class _OnnxRunner:
    def __init__(self, path: Path, threads: int) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("backend onnxruntime is not installed (pip install 'imusic[onnx]')") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelSpecError(f"{path.name} has {len(inputs)} inputs and {len(outputs)} outputs; an imusic model "
                                 f"has one of each ({INPUT_NAME!r}, {OUTPUT_NAME!r})")
        self.input_name = str(inputs[0].name)
        self.output_name: str | None = str(outputs[0].name)
        self.input_shape = tuple(int(v) if isinstance(v, int) else -1 for v in inputs[0].shape)
        self.output_shape = tuple(int(v) if isinstance(v, int) else -1 for v in outputs[0].shape)

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._session.run(None, {self.input_name: x})[0],
                          dtype=np.float32).reshape(-1)


def _have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# -- the model --------------------------------------------------------------------------------------
class Model:
    """A loaded model: ``predict`` windows, or stream frames through ``StreamingInference``.

    spec: the checked ``ModelSpec``; backend: "litert" | "tflite_runtime" | "onnxruntime";
    precision: "int8" | "float32"; path: the model file; export: what ``imusic export`` recorded
    (tool versions, parity at export), empty for files made otherwise."""

    def __init__(self, spec: ModelSpec, runner: _Runner, *, backend: str, precision: str, path: Path,
                 threads: int, export: dict[str, Any] | None = None) -> None:
        self.spec = spec
        self.backend = backend
        self.precision = precision
        self.path = path
        self.threads = threads
        self.export: dict[str, Any] = dict(export or {})
        self._runner = runner
        self._shape = spec.input_shape

    @property
    def window_frames(self) -> int:
        return self.spec.window_frames

    @property
    def channels(self) -> int:
        return self.spec.channels

    def predict_window(self, window: np.ndarray) -> np.ndarray:
        """One inference: a (W, C) or (1, W, C) window (``assemble_input``'s output) -> (52,)."""
        x = np.ascontiguousarray(window, dtype=np.float32)
        if x.size != self._shape[1] * self._shape[2] or x.shape[-2:] != self._shape[1:]:
            raise ValueError(f"a window is {self._shape[1:]} (frames, channels), got {x.shape}")
        return self._runner.run(x.reshape(self._shape))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(N, W, C) windows -> (N, 52) blendshapes (the files take one window per inference)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 2:
            return self.predict_window(x)
        if x.ndim != 3 or x.shape[1:] != self._shape[1:]:
            raise ValueError(f"predict takes (N, {self._shape[1]}, {self._shape[2]}) windows, got {x.shape}")
        out = np.empty((len(x), N_BLENDSHAPES), dtype=np.float32)
        for k in range(len(x)):
            out[k] = self.predict_window(x[k])
        return out

    def __repr__(self) -> str:
        return (f"Model({self.path.name}, {self.precision} on {self.backend}, layout {self.spec.layout!r}, "
                f"window {self.spec.window_frames})")


def _read_metadata(meta_path: Path, model_path: Path) -> tuple[ModelSpec, dict[str, Any]]:
    if not meta_path.is_file():
        if model_path.is_dir():
            raise ModelSpecError(f"{model_path} has no {METADATA_FILE}: not a model directory written by "
                                 "`imusic export`")
        raise ModelSpecError(f"{model_path.name} has no {METADATA_FILE} beside it: a model file needs its metadata "
                             "(imusic export writes both; keep them together)")
    spec = ModelSpec.load(meta_path)
    try:
        raw = json.loads(meta_path.read_text())
    except (OSError, ValueError):  # ModelSpec.load has just read it; a race is not worth a message
        raw = {}
    export = raw.get("export") if isinstance(raw, dict) else None
    spec.check_runtime()
    return spec, dict(export) if isinstance(export, dict) else {}


def _describe(spec: ModelSpec) -> str:
    return (f"window {spec.window_frames} x {spec.channels} channels (layout {spec.layout!r}, "
            f"{len(spec.face_sites)} face sites)")


def _check_tensors(spec: ModelSpec, runner: _Runner, file: Path) -> None:
    shape = tuple(runner.input_shape)
    if len(shape) != 3 or shape[1:] != spec.input_shape[1:] or shape[0] not in (1, -1):
        got = f"(1, {shape[1]}, {shape[2]})" if len(shape) == 3 else str(shape)
        raise ModelSpecError(f"{file.name} takes input {got}, {METADATA_FILE} describes {spec.input_shape}: "
                             f"{_describe(spec)}; the metadata belongs to another model")
    if runner.input_name != INPUT_NAME:
        raise ModelSpecError(f"{file.name}'s input is named {runner.input_name!r}, an imusic model's is {INPUT_NAME!r}")
    if tuple(runner.output_shape)[-1:] != (len(spec.blendshapes),) or len(runner.output_shape) != 2:
        raise ModelSpecError(f"{file.name} gives output {tuple(runner.output_shape)}, {METADATA_FILE} lists "
                             f"{len(spec.blendshapes)} blendshapes")
    if runner.output_name is not None and runner.output_name != OUTPUT_NAME:
        raise ModelSpecError(f"{file.name}'s output is named {runner.output_name!r}, an imusic model's is "
                             f"{OUTPUT_NAME!r}")


def _resolve(path: str | Path) -> tuple[Path, Path]:
    """(model file or directory, its model.json)."""
    if str(path) == "default":
        p = DEFAULT_MODEL_DIR
        if not (p / METADATA_FILE).is_file():
            raise ModelSpecError(f"no default model is installed ({p} has no {METADATA_FILE}); pass a model "
                                 "directory written by `imusic export`")
        return p, p / METADATA_FILE
    p = Path(path)
    if p.is_dir():
        return p, p / METADATA_FILE
    if p.is_file():
        return p, p.parent / METADATA_FILE
    raise ModelSpecError(f"{p}: no such model file or directory")


def _choose_file(spec: ModelSpec, p: Path, precision: str | None, backend: str) -> tuple[str, Path]:
    """(precision, model file) for a directory or a named file."""
    listed = ", ".join(f"{k}: {v}" for k, v in spec.files.items()) or "none"
    if p.is_file():
        keys = [k for k, v in spec.files.items() if v == p.name]
        if not keys:
            raise ModelSpecError(f"{p.name} is not a file its {METADATA_FILE} lists (files: {listed})")
        key = keys[0]
        own = "float32" if key == "onnx" else key
        if precision is not None and precision != own:
            raise UserError(f"{p.name} is the {own} model, not {precision}")
        return own, p
    if backend == "onnxruntime":
        if precision == "int8":
            raise UserError("the ONNX file is float32: int8 runs on LiteRT (backend litert or auto)")
        key, precision = "onnx", "float32"
    else:
        precision = precision or "int8"
        key = precision
    if key not in spec.files:
        raise ModelSpecError(f"{p / METADATA_FILE} lists no {key} file (files: {listed})")
    return precision, p / spec.files[key]


def load_model(path: str | Path = "default", precision: str | None = None, backend: str = "auto",
               threads: int = 1) -> Model:
    """Load a model directory (or one of its files) with its metadata checked.

    precision: "int8" (the default for a directory) or "float32"; a named file is what it is.
    backend: "auto" runs .tflite on LiteRT, else tflite_runtime if that is what the device has;
    "onnxruntime" runs the directory's .onnx (float32). threads: the interpreter's thread count.
    """
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    if precision is not None and precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UserError(f"threads must be a whole number >= 1, got {threads!r}")
    p, meta_path = _resolve(path)
    spec, export = _read_metadata(meta_path, p)
    if backend == "auto" and p.is_dir() and precision is None and "onnx" in spec.files and _have("onnxruntime"):
        try:
            _tflite_backend("auto")
        except BackendError:
            backend = "onnxruntime"  # no TFLite runtime on this machine, but the float32 ONNX file runs
    chosen_precision, file = _choose_file(spec, p, precision, backend)
    if not file.is_file():
        raise ModelSpecError(f"{file}: listed in {METADATA_FILE} but missing")
    expected = (export.get("sha256") or {}).get(file.name)
    if expected and sha256_of(file) != expected:
        raise ModelSpecError(f"{file.name} is not the file its {METADATA_FILE} was written with (checksum differs): "
                             "re-export, or keep each model's files together")

    runner: _Runner
    if file.suffix == ".onnx":
        if backend not in ("auto", "onnxruntime"):
            raise UserError(f"{file.name} is ONNX: it runs on onnxruntime, not {backend}")
        backend = "onnxruntime"
        try:
            runner = _OnnxRunner(file, threads)
        except (BackendError, ModelSpecError):
            raise
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
            raise ModelSpecError(f"{file.name}: onnxruntime cannot open it ({_first_line(exc)})") from None
    elif file.suffix == ".tflite":
        if backend == "onnxruntime":
            raise UserError(f"{file.name} is TFLite: it runs on litert or tflite_runtime, not onnxruntime")
        backend, interpreter = _tflite_backend(backend)
        try:
            runner = _TfliteRunner(file, interpreter, threads)
        except ModelSpecError:
            raise
        except Exception as exc:  # the interpreters raise RuntimeError, ValueError, SystemError, ...
            raise ModelSpecError(f"{file.name}: {backend} cannot run it ({_first_line(exc)})") from None
    else:
        raise ModelSpecError(f"{file.name}: not a .tflite or .onnx model file")
    _check_tensors(spec, runner, file)
    return Model(spec, runner, backend=backend, precision=chosen_precision, path=file, threads=threads, export=export)


# -- streaming --------------------------------------------------------------------------------------
class StreamingInference:
    """Feature frames in, blendshapes out: the last W frames in a ring buffer, one inference per push.

    Each pushed frame is turned into its input row once (``assemble_input``: normalised, invalid
    sites zeroed, validity flags); the buffer holds every row twice so that the window, oldest
    first, is always one contiguous slice. Until W frames have been pushed the older rows are
    frames with every IMU missing, which the student was trained to handle (IMU dropout)."""

    def __init__(self, model: Model) -> None:
        self.model = model
        spec = model.spec
        self.window_frames = spec.window_frames
        self.n_face = len(spec.face_sites)
        self._mean = np.asarray(spec.norm_mean, dtype=np.float32)
        self._std = np.asarray(spec.norm_std, dtype=np.float32)
        self._empty_row = self._row(np.full((self.n_face, 9), np.nan, np.float32), np.zeros(self.n_face, bool))
        self._rows = np.empty((2 * self.window_frames, spec.channels), dtype=np.float32)
        self.reset()

    def _row(self, feats: np.ndarray, valid: np.ndarray) -> np.ndarray:
        return assemble_input(feats[None], valid[None], self._mean, self._std)[0]

    def reset(self) -> None:
        """Forget every frame (a new take, or after a long gap)."""
        self._rows[:] = self._empty_row
        self._pos = 0
        self.frames_pushed = 0

    @property
    def filled(self) -> bool:
        """True once W frames have been pushed."""
        return self.frames_pushed >= self.window_frames

    def window(self) -> np.ndarray:
        """The current model input (W, C), oldest frame first (a copy)."""
        return self._rows[self._pos:self._pos + self.window_frames].copy()

    def push(self, feats: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """One frame's features (n_face, 9) and validity (n_face,) -> (52,) blendshapes for it."""
        f = np.asarray(feats, dtype=np.float32)
        v = np.asarray(valid, dtype=bool)
        if f.shape != (self.n_face, 9) or v.shape != (self.n_face,):
            raise ValueError(f"push takes features ({self.n_face}, 9) and valid ({self.n_face},), "
                             f"got {f.shape} and {v.shape}")
        row = self._row(f, v)
        w = self.window_frames
        k = self._pos
        self._rows[k] = row
        self._rows[k + w] = row
        self._pos = (k + 1) % w
        self.frames_pushed += 1
        return self.model.predict_window(self._rows[self._pos:self._pos + w])

    def push_block(self, feats: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(T, n_face, 9) and (T, n_face) -> (T, 52): ``push`` for each frame in order."""
        return np.stack([self.push(f, v) for f, v in zip(feats, valid)]) if len(feats) else \
            np.zeros((0, N_BLENDSHAPES), np.float32)


class BlendshapeStream:
    """Aligned frames of a rig in, blendshapes out: ``FeatureExtractor`` (head motion removed) then
    ``StreamingInference``, one inference per frame.

    layout: a layout name or ``imusic.placement.Layout``; it must be the model's (same sites in the
    same order, same head reference); features are computed with the settings the model was
    trained with. calibration: the rig's ``Calibration`` (or a path to its file), or None; frames a
    Session already corrected with the same calibration pass uncorrected a second time, frames
    another calibration corrected are refused. Frames must come at the model's rate
    (``model.spec.rate_hz``)."""

    def __init__(self, model: Model, layout: str | Layout, calibration: Calibration | str | Path | None = None) -> None:
        from imusic.data import settings_from_dict
        from imusic.features import FeatureExtractor, feature_spec
        from imusic.placement import load_layout

        lay = load_layout(layout) if isinstance(layout, str) else layout
        spec = model.spec
        # the feature settings the model was trained with (the defaults unless training chose others)
        settings = settings_from_dict(spec.feature_spec.get("settings"))
        spec.check_features(feature_spec(lay, spec.rate_hz, settings), f"features of layout {lay.name!r}")
        cal: Calibration | None
        if isinstance(calibration, (str, Path)):
            from imusic.calibration import Calibration

            cal = Calibration.load(calibration)
        else:
            cal = calibration
        self.model = model
        self.layout = lay
        self.extractor = FeatureExtractor(lay, cal, spec.rate_hz, settings)
        self.stream = StreamingInference(model)
        self.last_features: tuple[np.ndarray, np.ndarray] | None = None

    def update(self, frame: Frame) -> np.ndarray:
        """One aligned frame -> (52,) blendshapes (``imusic.arkit.BLENDSHAPES`` order, 0-1)."""
        feats, valid = self.extractor.update(frame)
        self.last_features = (feats, valid)
        return self.stream.push(feats, valid)

    def reset(self) -> None:
        self.extractor.reset()
        self.stream.reset()
