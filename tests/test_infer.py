"""The runtime (``imusic.infer``) on real converted files: parity of TFLite float32 and int8
(LiteRT) and ONNX (onnxruntime) with PyTorch on the same inputs, streaming against batch, the
feature pipeline end to end on a simulated take, metadata mismatches refused in one line, the
tflite_runtime fallback, and the shipped default model.

The model is the tiny student of tests/test_export.py, exported once per session by `imusic export`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imusic.errors import UserError
from imusic.infer import BackendError, BlendshapeStream, StreamingInference, load_model
from imusic.modelio import ModelSpec, ModelSpecError, assemble_input
from test_export import (  # noqa: F401  (session fixtures shared with the export tests)
    exported_model,
    model_spec,
    random_windows,
    sim_take,
    student_checkpoint,
    torch_reference,
)
from testenv import REPO, assert_one_line_error

N_FACE = 11
EXAMPLE = REPO / "examples" / "run_model.py"

# int8 against PyTorch, in units of the output's quantisation step (its scale, ~1/255 when the
# outputs span 0-1). Every int8 layer rounds its activations to its own step (half an LSB each),
# the student has five of them before the output, and the rounding of a layer is scaled by the
# weights after it, so a correct conversion ends a few output LSB away; a mis-wired conversion
# (a transposed input, the onnxsim bug) is tens of LSB away. Measured: max 2-4, mean ~1.
INT8_MAX_LSB = 8.0
INT8_MEAN_LSB = 2.0


def output_lsb(model_dir: Path) -> float:
    from imusic_model.export import int8_output_scale

    scale = int8_output_scale(model_dir / "model-int8.tflite")
    assert scale is not None and 1e-4 < scale < 0.02
    return scale


@pytest.fixture(scope="module")
def held_windows() -> np.ndarray:
    return random_windows(64, N_FACE, seed=31)  # not the training nor the calibration windows


@pytest.fixture(scope="module")
def reference(student_checkpoint: Path, held_windows: np.ndarray) -> np.ndarray:
    return torch_reference(student_checkpoint, held_windows)


# -- parity ----------------------------------------------------------------------------------------
def test_float32_tflite_matches_pytorch(exported_model: Path, held_windows: np.ndarray, reference: np.ndarray) -> None:
    model = load_model(exported_model, precision="float32")
    assert (model.backend, model.precision, model.path.name) == ("litert", "float32", "model-float32.tflite")
    got = model.predict(held_windows)
    assert got.shape == (64, 52) and got.dtype == np.float32
    assert np.abs(got - reference).max() <= 1e-4
    assert reference.std() > 0.05  # a trained model whose outputs move: parity means something


def test_int8_tflite_matches_pytorch_within_a_few_lsb(exported_model: Path, held_windows: np.ndarray,
                                                     reference: np.ndarray) -> None:
    model = load_model(exported_model)  # int8 is the default
    assert (model.backend, model.precision) == ("litert", "int8")
    err = np.abs(model.predict(held_windows) - reference)
    lsb = output_lsb(exported_model)
    assert err.max() <= INT8_MAX_LSB * lsb, (err.max() / lsb)
    assert err.mean() <= INT8_MEAN_LSB * lsb, (err.mean() / lsb)
    assert err.max() > 0  # it is really the quantised file


def test_onnx_matches_pytorch(exported_model: Path, held_windows: np.ndarray, reference: np.ndarray) -> None:
    model = load_model(exported_model, backend="onnxruntime")
    assert (model.backend, model.precision, model.path.name) == ("onnxruntime", "float32", "model.onnx")
    assert np.abs(model.predict(held_windows) - reference).max() <= 1e-4


def test_threads_give_the_same_answer(exported_model: Path, held_windows: np.ndarray) -> None:
    one = load_model(exported_model, precision="float32", threads=1).predict(held_windows[:8])
    two = load_model(exported_model, precision="float32", threads=2)
    assert two.threads == 2
    np.testing.assert_allclose(two.predict(held_windows[:8]), one, atol=1e-6)


def test_a_file_loads_with_the_metadata_beside_it(exported_model: Path, held_windows: np.ndarray) -> None:
    by_file = load_model(exported_model / "model-float32.tflite")
    assert by_file.precision == "float32" and by_file.spec.layout == "imusic"
    np.testing.assert_array_equal(by_file.predict(held_windows[:4]),
                                  load_model(exported_model, precision="float32").predict(held_windows[:4]))
    assert load_model(exported_model / "model.onnx").backend == "onnxruntime"
    with pytest.raises(UserError, match="is the float32 model, not int8"):
        load_model(exported_model / "model-float32.tflite", precision="int8")


def test_quantised_io_is_handled_in_the_runtime(exported_model: Path, held_windows: np.ndarray, tmp_path: Path) -> None:
    """A full-int8 file with int8 input and output (onnx2tf's *_full_integer_quant) gives the
    int8-inside/float-I/O file's answers: the runtime quantises the window and dequantises the
    output with the file's own scale and zero point."""
    from imusic_model.export import run_onnx2tf

    files = run_onnx2tf(exported_model / "model.onnx", tmp_path / "work", random_windows(96, N_FACE, seed=0))
    meta = json.loads((exported_model / "model.json").read_text())
    meta.pop("export")  # no checksums: these are not the exported files
    dirs = {}
    for variant in ("int8_io", "int8"):
        d = dirs[variant] = tmp_path / variant
        d.mkdir()
        shutil.copyfile(files[variant], d / "model-int8.tflite")
        (d / "model.json").write_text(json.dumps({**meta, "files": {"int8": "model-int8.tflite"}}))

    quantised_io = load_model(dirs["int8_io"])
    runner: Any = quantised_io._runner  # noqa: SLF001
    assert runner._in_q is not None and runner._out_q is not None  # noqa: SLF001
    float_io = load_model(dirs["int8"])
    assert float_io._runner._in_q is None  # type: ignore[attr-defined]  # noqa: SLF001
    a, b = quantised_io.predict(held_windows), float_io.predict(held_windows)
    scale = runner._out_q[0]  # noqa: SLF001
    # the same int8 graph; only where the input is quantised (by Python or by the file) differs
    assert np.abs(a - b).max() <= 2 * scale + 1e-6
    assert np.abs(a - b).mean() <= 0.25 * scale


# -- streaming -------------------------------------------------------------------------------------
def random_feature_frames(n_frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n_frames, N_FACE, 9)).astype(np.float32)
    valid = rng.random((n_frames, N_FACE)) > 0.1
    valid[40:45, 3] = False  # a site missing for a while
    feats[~valid] = np.nan  # what FeatureExtractor gives for a missing site
    return feats, valid


def batch_windows(feats: np.ndarray, valid: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """The window ending at each frame, frames before the first counted as missing, assembled in one go."""
    w = spec.window_frames
    pad_f = np.full((w - 1, *feats.shape[1:]), np.nan, np.float32)
    pad_v = np.zeros((w - 1, valid.shape[1]), bool)
    f, v = np.concatenate([pad_f, feats]), np.concatenate([pad_v, valid])
    idx = np.arange(len(feats))[:, None] + np.arange(w)[None, :]
    return assemble_input(f[idx], v[idx], np.asarray(spec.norm_mean), np.asarray(spec.norm_std))


@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_streaming_equals_batch_predict(exported_model: Path, precision: str) -> None:
    model = load_model(exported_model, precision=precision)
    feats, valid = random_feature_frames(130, seed=2)  # more than two windows: the ring wraps
    stream = StreamingInference(model)
    got = []
    for k in range(len(feats)):
        got.append(stream.push(feats[k], valid[k]))
        assert stream.filled == (k + 1 >= model.window_frames)
    windows = batch_windows(feats, valid, model.spec)
    np.testing.assert_array_equal(stream.window(), windows[-1])
    np.testing.assert_array_equal(np.array(got), model.predict(windows))
    # before the buffer filled, the older rows are frames with every site missing
    stream.reset()
    stream.push(feats[0], valid[0])
    early = stream.window()
    assert (early[:-1] == 0).all() and (early[-1, N_FACE * 9:] == valid[0]).all()
    np.testing.assert_array_equal(stream.push_block(feats[1:10], valid[1:10]),
                                  np.array(got[1:10]))


def test_streaming_rejects_frames_of_another_shape(exported_model: Path) -> None:
    stream = StreamingInference(load_model(exported_model))
    with pytest.raises(ValueError, match=r"\(11, 9\)"):
        stream.push(np.zeros((5, 9)), np.ones(5, bool))


def test_blendshape_stream_runs_the_feature_pipeline(exported_model: Path, sim_take: Path) -> None:
    """Aligned frames of a simulated take in: the same as features_of_block (the training path)
    followed by StreamingInference, frame for frame."""
    from imusic.features import features_of_block
    from imusic.placement import load_layout
    from imusic.replay import replay_blocks

    model = load_model(exported_model, precision="float32")
    frames = [f for b in replay_blocks(sim_take / "rec.imu", 60.0).blocks for f in b.frames()][:240]
    stream = BlendshapeStream(model, "imusic")
    got = np.array([stream.update(f) for f in frames])
    assert got.shape == (240, 52) and ((got >= 0) & (got <= 1)).all()
    feats, valid = features_of_block(frames, load_layout("imusic"))
    assert valid[-1].all()  # features flow once the rest pose is captured
    ref = StreamingInference(model).push_block(feats, valid)
    np.testing.assert_array_equal(got, ref)


# -- metadata checked at load ----------------------------------------------------------------------
def _edited_copy(exported_model: Path, tmp_path: Path, edit: Any) -> Path:
    out = tmp_path / "model"
    shutil.copytree(exported_model, out)
    meta = json.loads((out / "model.json").read_text())
    edit(meta, out)
    if (out / "model.json").exists():  # (unless the edit took it away)
        (out / "model.json").write_text(json.dumps(meta))
    return out


def _other_layout(meta: dict[str, Any], _out: Path) -> None:
    compact = model_spec("compact").to_json()
    meta.update(feature_spec=compact["feature_spec"], norm_mean=compact["norm_mean"], norm_std=compact["norm_std"])


def _other_feature_version(meta: dict[str, Any], _out: Path) -> None:
    meta["feature_spec"]["feature_version"] += 1


def _other_window(meta: dict[str, Any], _out: Path) -> None:
    meta["window_frames"] = 32


def _no_metadata(meta: dict[str, Any], out: Path) -> None:
    (out / "model.json").rename(out / "elsewhere.json")


def _foreign_json(meta: dict[str, Any], _out: Path) -> None:
    meta.pop("format")


def _swapped_file(meta: dict[str, Any], out: Path) -> None:
    shutil.copyfile(out / "model-float32.tflite", out / "model-int8.tflite")


def _missing_file(meta: dict[str, Any], out: Path) -> None:
    (out / "model-int8.tflite").unlink()


MISMATCHES = {
    "another layout": (_other_layout, ["takes input (1, 48, 110)", "(1, 48, 50)", "layout 'compact'"]),
    "another feature version": (_other_feature_version, ["feature version 3", "computes version 2"]),
    "another window": (_other_window, ["takes input (1, 48, 110)", "window 32"]),
    "no model.json": (_no_metadata, ["has no model.json"]),
    "not imusic metadata": (_foreign_json, ["not imusic model metadata"]),
    "another model's file": (_swapped_file, ["model-int8.tflite", "checksum differs"]),
    "a listed file missing": (_missing_file, ["model-int8.tflite", "missing"]),
}


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_mismatched_metadata_is_one_line(exported_model: Path, tmp_path: Path, case: str) -> None:
    edit, needles = MISMATCHES[case]
    if case == "another feature version":
        from imusic.features import FEATURE_VERSION

        needles = [f"feature version {FEATURE_VERSION + 1}", f"computes version {FEATURE_VERSION}"]
    model_dir = _edited_copy(exported_model, tmp_path, edit)
    with pytest.raises(ModelSpecError) as info:
        load_model(model_dir)
    message = str(info.value)
    assert "\n" not in message and all(n in message for n in needles), message
    # the same through a command line that loads models (the example script's error handling)
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--model", str(model_dir), "--recording", "unused.imu"],
                          capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc)
    assert proc.returncode == 2 and all(n in proc.stderr for n in needles), proc.stderr


def test_a_file_without_metadata_is_refused(exported_model: Path, tmp_path: Path) -> None:
    alone = tmp_path / "model-int8.tflite"
    shutil.copyfile(exported_model / "model-int8.tflite", alone)
    with pytest.raises(ModelSpecError, match="has no model.json beside it"):
        load_model(alone)
    stranger = tmp_path / "other.tflite"
    shutil.copyfile(exported_model / "model-int8.tflite", stranger)
    shutil.copyfile(exported_model / "model.json", tmp_path / "model.json")
    with pytest.raises(ModelSpecError, match="is not a file its model.json lists"):
        load_model(stranger)


def test_stream_refuses_another_layout(exported_model: Path) -> None:
    model = load_model(exported_model)
    with pytest.raises(ModelSpecError) as info:
        BlendshapeStream(model, "compact")
    assert "layout 'imusic'" in str(info.value) and "'compact'" in str(info.value)


def test_bad_arguments_are_user_errors(exported_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import imusic.infer as infer

    with pytest.raises(UserError, match="int8 runs on LiteRT"):
        load_model(exported_model, precision="int8", backend="onnxruntime")
    with pytest.raises(UserError, match="unknown backend"):
        load_model(exported_model, backend="tensorrt")
    with pytest.raises(UserError, match="threads"):
        load_model(exported_model, threads=0)
    with pytest.raises(UserError, match="not onnxruntime"):
        load_model(exported_model / "model-int8.tflite", backend="onnxruntime")
    with pytest.raises(ModelSpecError, match="no such model"):
        load_model(tmp_path / "nowhere")
    monkeypatch.setattr(infer, "DEFAULT_MODEL_DIR", tmp_path / "empty")
    with pytest.raises(ModelSpecError, match="no default model is installed"):
        load_model("default")


def test_missing_runtime_is_one_line(exported_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither LiteRT nor tflite_runtime importable: the error says what to install; with an ONNX
    file and onnxruntime at hand, "auto" runs that instead (float32)."""
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    with pytest.raises(BackendError) as info:
        load_model(exported_model, precision="int8")
    assert "ai-edge-litert" in str(info.value) and "\n" not in str(info.value)
    fallback = load_model(exported_model)
    assert (fallback.backend, fallback.precision) == ("onnxruntime", "float32")


# -- tflite_runtime where a device has only that ---------------------------------------------------
TFLITE_RUNTIME_SCRIPT = """
import json, sys
import numpy as np
from imusic.infer import load_model
model_dir, x_path = sys.argv[1:3]
x = np.load(x_path)
out = {}
for precision in ("float32", "int8"):
    m = load_model(model_dir, precision=precision)
    out[precision] = {"backend": m.backend, "y": m.predict(x).tolist()}
import importlib.util
out["litert_present"] = importlib.util.find_spec("ai_edge_litert") is not None
print(json.dumps(out))
"""


@pytest.mark.slow_install
@pytest.mark.timeout(1200)
def test_tflite_runtime_fallback_on_a_device_without_litert(exported_model: Path, tmp_path: Path) -> None:
    """A venv with tflite_runtime 2.14 and numpy<2 (what an older Raspberry Pi image has) and no
    ai-edge-litert: "auto" runs the same files there and gives LiteRT's answers."""
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env["PYTHONPATH"] = str(REPO / "host_sdk")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "numpy<2", "tflite-runtime==2.14.0", "scipy",
                          "pyyaml", "imufusion>=1.3.3,<2", "construct==2.10.70", "pyserial"],
                         capture_output=True, text=True, timeout=900, env=env)
    assert pip.returncode == 0, pip.stderr[-4000:]
    install_s = time.perf_counter() - t0
    x = random_windows(16, N_FACE, seed=41)
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", TFLITE_RUNTIME_SCRIPT, str(exported_model),
                           str(tmp_path / "x.npy")], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"tflite_runtime venv installed in {install_s:.0f} s")
    assert not result["litert_present"]
    for precision in ("float32", "int8"):
        assert result[precision]["backend"] == "tflite_runtime"
        here = load_model(exported_model, precision=precision).predict(x)
        there = np.array(result[precision]["y"], dtype=np.float32)
        err = np.abs(there - here)
        if precision == "float32":
            assert err.max() <= 1e-5
        else:
            # Another release's int8 kernels round some intermediate activations the other way; the
            # student's stacked layers carry those one-LSB steps to about half its outputs (measured:
            # max 2 LSB, mean 0.44 LSB). A wrong fallback (scales, zero points, layout) is off by far more.
            lsb = output_lsb(exported_model)
            assert err.max() <= 3.01 * lsb and err.mean() <= 0.6 * lsb, (err.max() / lsb, err.mean() / lsb)


# -- the example -----------------------------------------------------------------------------------
def test_example_streams_a_recording(exported_model: Path, sim_take: Path) -> None:
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--model", str(exported_model), "--recording",
                           str(sim_take / "rec.imu"), "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["frames"] > 800 and report["precision"] == "int8" and report["backend"] == "litert"
    assert len(report["last"]) == 52 and all(0 <= v <= 1 for v in report["last"].values())
    assert report["inference_ms_median"] > 0 and report["frame_ms_median"] > 0


# -- the shipped model -----------------------------------------------------------------------------
def test_default_model_runs_on_a_simulated_take(sim_take: Path) -> None:
    """The model shipped in host_sdk/imusic/models/default: loads by name, says it was trained on
    simulated data, fits the size budget, streams a simulated take of its layout (frames in,
    through the features) and follows the truth better than a constant, int8 within 5% of float32."""
    from imusic.data import load_dataset
    from imusic.replay import replay_blocks

    int8 = load_model("default")
    float32 = load_model("default", precision="float32")
    spec = int8.spec
    assert spec.layout == "imusic" and spec.training.get("simulated") is True
    for name in spec.files.values():
        assert (int8.path.parent / name).stat().st_size <= 1024 * 1024
    assert (int8.path.parent / "MODEL_CARD.md").is_file() and (int8.path.parent / "ridge.npz").is_file()
    frames = [f for b in replay_blocks(sim_take / "rec.imu", spec.rate_hz).blocks for f in b.frames()]
    # the rig's calibration, as the dataset loader finds it (take dir, else subject dir)
    cal = next((p for p in (sim_take / "calibration.json", sim_take.parent / "calibration.json") if p.is_file()), None)
    stream = BlendshapeStream(int8, "imusic", cal)
    y_frames = np.array([stream.update(f) for f in frames])
    assert y_frames.shape == (len(frames), 52) and ((y_frames >= 0) & (y_frames <= 1)).all()
    take = load_dataset(sim_take.parents[1], cache=False).takes[0]
    y8 = StreamingInference(int8).push_block(take.feats, take.valid)
    y32 = StreamingInference(float32).push_block(take.feats, take.valid)
    np.testing.assert_array_equal(y8[-100:], y_frames[-100:])  # the dataset's features are the stream's
    keep = take.label_valid & (np.arange(take.frames) >= spec.window_frames)
    target = take.blendshapes[keep]
    mae8, mae32 = np.abs(y8[keep] - target).mean(), np.abs(y32[keep] - target).mean()
    mae_constant = np.abs(target.mean(axis=0) - target).mean()
    assert mae32 < mae_constant and mae8 < mae_constant, (mae8, mae32, mae_constant)
    assert mae8 <= 1.05 * mae32, (mae8, mae32)
