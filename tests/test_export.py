"""``imusic export``: a recording's frames (``imusic.export``: each format written and read back
to the same numbers, NaN where NaN; the CSV layout; bad files and a missing h5py get one clear
line), and a student checkpoint to a model directory (``imusic_model.export``: the files, the
recipe's traps, the parity guard, refusals, and the export on a freshly installed environment)."""

from __future__ import annotations

import csv
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
from imusic.align import Frame, FrameBlock
from imusic.errors import UserError
from imusic.export import (
    FORMATS,
    FrameArrays,
    csv_columns,
    read_csv,
    read_frames,
    read_hdf5,
    read_npz,
    write_frames,
)
from testenv import REPO, assert_one_line_error, run_cli

SITES = ("zygomaticus_l", "zygomaticus_r", "frontalis_c", "masseter_l")
NODE_IDS = (1, 1, 2, 2)
SUFFIX = {"npz": ".npz", "csv": ".csv", "hdf5": ".h5"}


def make_frames(n_frames: int, seed: int = 3, sites: tuple[str, ...] = SITES,
                node_ids: tuple[int, ...] = NODE_IDS) -> list[Frame]:
    """Frames with gaps (invalid IMUs as NaN), an IMU without magnetometer, and awkward floats."""
    rng = np.random.default_rng(seed)
    n = len(sites)
    frames = []
    for k in range(n_frames):
        valid = rng.random(n) > 0.2
        accel = rng.standard_normal((n, 3)) * 9.8
        gyro = rng.standard_normal((n, 3)) * 1e-3
        mag = rng.standard_normal((n, 3)) * 40
        mag[-1] = np.nan  # no magnetometer on the last IMU
        if k == 1:  # values text formats like to mangle
            accel[0] = (5e-324, -0.0, 1 / 3)
            gyro[0] = (1e308, -2.2250738585072014e-308, 0.1)
        for a in (accel, gyro, mag):
            a[~valid] = np.nan
        frames.append(Frame(t_host_s=1234.5 + k / 60 + rng.random() * 1e-9, accel_mps2=accel, gyro_rads=gyro,
                            mag_uT=mag, valid=valid, sites=sites, node_ids=node_ids))
    return frames


def assert_same_bits(a: np.ndarray, b: np.ndarray) -> None:
    """Equal shapes, NaN exactly where NaN, every other value bit for bit (so -0.0 stays -0.0)."""
    assert a.shape == b.shape and a.dtype == b.dtype
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    assert np.array_equal(nan_a, nan_b)
    assert np.array_equal(a[~nan_a].view(np.int64), b[~nan_b].view(np.int64))


def assert_same_frames(a: FrameArrays, b: FrameArrays) -> None:
    for name in ("t_host_s", "accel_mps2", "gyro_rads", "mag_uT"):
        assert_same_bits(getattr(a, name), getattr(b, name))
    assert b.valid.dtype == bool and np.array_equal(a.valid, b.valid)
    assert (a.sites, a.node_ids, a.meta) == (b.sites, b.node_ids, b.meta)


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_gives_the_same_numbers(tmp_path: Path, fmt: str) -> None:
    frames = make_frames(50)
    meta = {"rate_hz": 60.0, "source": "rec.imu", "nodes": {"1": {"board": "emulated"}}}
    path = write_frames(tmp_path / f"frames{SUFFIX[fmt]}", frames, meta=meta)
    back = read_frames(path)
    assert len(back) == 50 and back.accel_mps2.shape == (50, 4, 3) and back.valid.shape == (50, 4)
    assert_same_frames(FrameArrays.from_frames(frames, meta=meta), back)
    assert np.isnan(back.accel_mps2[~back.valid]).all() and np.isnan(back.mag_uT[:, -1]).all()
    # ... and back into Frame objects equal to the originals
    for original, again in zip(frames, back.frames()):
        assert again.t_host_s == original.t_host_s and again.sites == original.sites
        assert np.array_equal(again.gyro_rads, original.gyro_rads, equal_nan=True)
    # the format is also chosen by name, whatever the suffix
    other = write_frames(tmp_path / "frames.bin", frames, fmt=fmt)
    assert_same_frames(FrameArrays.from_frames(frames), read_frames(other, fmt=fmt))


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_float64_bit_pattern_survives(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(11)
    bits = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=(200, 3, 3), dtype=np.int64)
    values = bits.view(np.float64).copy()  # subnormals, infinities, huge and tiny exponents
    values[np.isnan(values)] = np.nan  # NaN payloads are not numbers to keep
    arrays = FrameArrays(t_host_s=np.arange(200) / 60, accel_mps2=values, gyro_rads=values[::-1], mag_uT=-values,
                         valid=rng.random((200, 3)) > 0.5, sites=("a", "b", "c"), node_ids=(4, 4, 9))
    back = read_frames(write_frames(tmp_path / f"x{SUFFIX[fmt]}", arrays))
    assert_same_frames(arrays, back)


def test_blocks_and_frames_stack_alike() -> None:
    frames = make_frames(30)
    stacked = FrameArrays.from_frames(frames)
    block = FrameBlock(stacked.t_host_s[10:], stacked.accel_mps2[10:], stacked.gyro_rads[10:], stacked.mag_uT[10:],
                       stacked.valid[10:], SITES, NODE_IDS)
    assert_same_frames(stacked, FrameArrays.from_frames([*frames[:10], block]))


def test_csv_is_one_row_per_frame_with_named_columns(tmp_path: Path) -> None:
    frames = make_frames(5)
    path = write_frames(tmp_path / "frames.csv", frames)
    with open(path, newline="") as f:
        rows = list(csv.reader(line for line in f if not line.startswith("#")))
    header, body = rows[0], rows[1:]
    assert header == csv_columns(SITES)
    assert header[:2] == ["t_host_s", "zygomaticus_l.accel_x_mps2"]
    assert "masseter_l.mag_z_uT" in header and "frontalis_c.gyro_y_rads" in header and "zygomaticus_r.valid" in header
    assert len(body) == 5 and all(len(row) == len(header) for row in body)
    for k, frame in enumerate(frames):
        row = dict(zip(header, body[k]))
        assert float(row["t_host_s"]) == frame.t_host_s
        for i, site in enumerate(SITES):
            assert row[f"{site}.valid"] == ("1" if frame.valid[i] else "0")
            value = frame.accel_mps2[i, 2]
            text = row[f"{site}.accel_z_mps2"]
            assert text == "" if np.isnan(value) else float(text) == value  # NaN is an empty field


def test_csv_columns_stay_unique_and_sites_exact(tmp_path: Path) -> None:
    sites = ("cheek", "cheek", "", "with,comma")
    arrays = FrameArrays.from_frames(make_frames(3, sites=sites, node_ids=(1, 2, 2, 3)))
    header = csv_columns(sites)
    assert len(set(header)) == len(header) and not any("," in c for c in header)
    back = read_csv(write_frames(tmp_path / "dup.csv", arrays))
    assert back.sites == sites
    assert_same_frames(arrays, back)


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_frames_keeps_the_layout(tmp_path: Path, fmt: str) -> None:
    empty = FrameArrays.from_frames([], sites=SITES, node_ids=NODE_IDS, meta={"note": "nothing aligned"})
    back = read_frames(write_frames(tmp_path / f"empty{SUFFIX[fmt]}", empty))
    assert len(back) == 0 and back.accel_mps2.shape == (0, 4, 3) and back.sites == SITES
    assert back.meta == {"note": "nothing aligned"}


def test_layout_change_is_refused_in_one_line() -> None:
    frames = make_frames(3) + make_frames(2, sites=SITES[:2], node_ids=NODE_IDS[:2])
    with pytest.raises(UserError) as info:
        FrameArrays.from_frames(frames)
    assert "frame 3" in str(info.value) and "\n" not in str(info.value)


def test_existing_targets_are_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "frames.npz"
    path.write_bytes(b"keep me")
    with pytest.raises(UserError, match="already exists"):
        write_frames(path, make_frames(2))
    assert path.read_bytes() == b"keep me"
    write_frames(path, make_frames(2), overwrite=True)
    assert len(read_frames(path)) == 2
    with pytest.raises(UserError, match="suffix"):
        write_frames(tmp_path / "frames.xlsx", make_frames(2))


@pytest.mark.parametrize("reader, content, needle", [
    (read_npz, None, "no such file"),
    (read_npz, b"IMUREC\x00\x01", "not a readable npz"),
    (read_csv, b"a,b\n1,2\n", "not an imusic CSV export"),
    (read_csv, b"\xff\xfe\x00binary", "not an imusic CSV export"),
    (read_hdf5, b"plain text", "not an HDF5 file"),
    (read_hdf5, "dir", "is a directory"),
])
def test_foreign_files_get_one_line(tmp_path: Path, reader, content: bytes | str | None, needle: str) -> None:
    path = tmp_path / "input"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        assert isinstance(content, bytes)
        path.write_bytes(content)
    with pytest.raises(UserError) as info:
        reader(path)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_a_damaged_csv_names_the_problem(tmp_path: Path) -> None:
    path = write_frames(tmp_path / "frames.csv", make_frames(4))
    lines = path.read_text().splitlines()
    lines[-1] = lines[-1].rsplit(",", 1)[0]  # a row one field short
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="frame 3 has"):
        read_csv(path)


def test_hdf5_without_h5py_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py now raises ImportError
    with pytest.raises(UserError) as info:
        write_frames(tmp_path / "frames.h5", make_frames(2))
    assert "h5py" in str(info.value) and "imusic[hdf5]" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "frames.h5").exists()


# == model export: `imusic export CKPT.pt --out DIR` ==============================================
# A tiny student trained for a few steps on random windows with a fabricated (valid) spec of the
# imusic layout: enough for parity (every file against PyTorch on the same inputs); accuracy on
# real or simulated data is the training tests' business. Built once per session and shared with
# tests/test_infer.py.

WINDOW = 48
_BUILT: dict[str, Any] = {}  # session cache: test_infer imports these helpers


def model_spec(layout_name: str = "imusic", window: int = WINDOW) -> Any:
    from imusic.features import feature_spec
    from imusic.infer import sha256_of
    from imusic.modelio import ModelSpec
    from imusic.placement import load_layout

    layout = load_layout(layout_name)
    n = len(layout.face_sites)
    rng = np.random.default_rng(5)
    return ModelSpec(kind="student", feature_spec=feature_spec(layout, 60.0), window_frames=window,
                     norm_mean=rng.normal(0, 0.1, n * 9).round(4).tolist(),
                     norm_std=rng.uniform(0.5, 2.0, n * 9).round(4).tolist(),
                     training={"simulated": True, "dataset": "random windows (tests/test_export.py)"})


def random_windows(n_windows: int, n_face: int, seed: int, window: int = WINDOW) -> np.ndarray:
    """Inputs shaped like assemble_input's: N(0,1) features, 0 and flag 0 where a site is missing
    (one site dropped per window with probability 0.3, and the first window entirely empty)."""
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n_windows, window, n_face * 9)).astype(np.float32)
    valid = np.ones((n_windows, window, n_face), dtype=bool)
    drop = rng.random(n_windows) < 0.3
    valid[drop, :, rng.integers(0, n_face, int(drop.sum()))] = False
    valid[0] = False
    feats[~np.repeat(valid, 9, axis=-1)] = 0.0
    return np.concatenate([feats, valid.astype(np.float32)], axis=-1)


def targets(x: np.ndarray, seed: int = 1) -> np.ndarray:
    """Blendshapes in (0, 1) that depend on the newest frames: something a student can learn."""
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((x.shape[-1], 52)).astype(np.float32) / np.sqrt(x.shape[-1])
    return (1.0 / (1.0 + np.exp(-4.0 * x[:, -8:, :].mean(axis=1) @ proj))).astype(np.float32)


def make_checkpoint(path: Path, *, kind: str = "student", steps: int = 150, ridge: bool = True, seed: int = 0,
                    spec: Any = None) -> Path:
    import torch

    from imusic.ridge import RidgeBaseline
    from imusic_model.student import Student

    torch.set_num_threads(1)
    spec = spec if spec is not None else model_spec()
    n_face = len(spec.face_sites)
    x = random_windows(512, n_face, seed, spec.window_frames)
    y = targets(x)
    torch.manual_seed(seed)
    student = Student(spec.window_frames, spec.channels)
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,))
        loss = torch.mean((student(xt[idx]) - yt[idx]) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ckpt: dict[str, Any] = {"kind": kind, "arch": student.arch_dict(), "state_dict": student.state_dict(),
                            "spec": spec.to_json(), "calib_x": x[:128], "train_state": {"step": steps}}
    if ridge:
        ridge_path = path.with_name(path.stem + "-ridge.npz")
        RidgeBaseline(spec.window_frames, spec.channels).fit(x, y).save(ridge_path)
        ckpt["ridge"] = ridge_path.read_bytes()
    torch.save(ckpt, path)
    return path


def torch_reference(ckpt_path: Path, x: np.ndarray) -> np.ndarray:
    from imusic_model.export import build_student, load_checkpoint, torch_predict

    return torch_predict(build_student(load_checkpoint(ckpt_path)), x)


def built(key: str, factory: Any) -> Any:
    if key not in _BUILT:
        _BUILT[key] = factory()
    return _BUILT[key]


@pytest.fixture(scope="session")
def student_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built("checkpoint", lambda: make_checkpoint(tmp_path_factory.mktemp("ckpt") / "student.pt"))


@pytest.fixture(scope="session")
def exported_model(student_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`imusic export` of the tiny student, as a user runs it; the directory it wrote."""
    def export() -> Path:
        out = tmp_path_factory.mktemp("export") / "model"
        t0 = time.perf_counter()
        proc = run_cli("export", str(student_checkpoint), "--out", str(out), timeout=900)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        _BUILT["export_stdout"] = proc.stdout
        _BUILT["export_s"] = time.perf_counter() - t0
        return out
    return built("exported", export)


@pytest.fixture(scope="session")
def sim_take(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 15 s simulated take of the imusic layout, through the real firmware."""
    def simulate() -> Path:
        out = tmp_path_factory.mktemp("sim") / "sim"
        proc = run_cli("simulate", "--layout", "imusic", "--subjects", "1", "--minutes", "0.25", "--seed", "3",
                       "--out", str(out), timeout=300)
        assert proc.returncode == 0, proc.stderr
        return out / "subject_01" / "take_01"
    return built("sim", simulate)


def test_export_writes_the_model_directory(exported_model: Path, student_checkpoint: Path) -> None:
    from imusic.infer import sha256_of
    from imusic.modelio import ModelSpec

    names = {p.name for p in exported_model.iterdir()}
    assert names == {"model.json", "model-float32.tflite", "model-int8.tflite", "model.onnx", "ridge.npz"}
    spec = ModelSpec.load(exported_model / "model.json")
    assert spec.files == {"float32": "model-float32.tflite", "int8": "model-int8.tflite", "onnx": "model.onnx"}
    assert spec.to_json() | {"files": {}} == model_spec().to_json()  # the checkpoint's spec, unchanged
    meta = json.loads((exported_model / "model.json").read_text())["export"]
    assert meta["opset"] == 17 and meta["tools"]["onnx2tf"] == "1.29.24" and meta["tools"]["onnxsim"] == "0.4.36"
    assert meta["calibration_windows"] == 96 and meta["held_windows"] == 32
    for name in spec.files.values():
        assert meta["sizes_bytes"][name] == (exported_model / name).stat().st_size <= 1024 * 1024
    # the int8 file is the small one: int8 weights (about a quarter of float32's, plus graph)
    assert meta["sizes_bytes"]["model-int8.tflite"] < 0.5 * meta["sizes_bytes"]["model-float32.tflite"]
    parity = meta["parity"]
    assert parity["float32"]["max_abs"] <= 1e-4 and parity["onnx"]["max_abs"] <= 1e-4
    assert 0 < parity["int8"]["max_abs"] <= 0.05 and parity["int8"]["output_lsb"] > 0
    # the CLI says what it wrote
    out = _BUILT["export_stdout"]
    assert "model-int8.tflite" in out and "LSB" in out and "ridge baseline" in out


def test_ridge_baseline_travels_with_the_model(exported_model: Path, student_checkpoint: Path) -> None:
    from imusic.ridge import RidgeBaseline

    ridge = RidgeBaseline.load(exported_model / "ridge.npz")
    original = RidgeBaseline.load(student_checkpoint.with_name("student-ridge.npz"))
    x = random_windows(8, 11, seed=9)
    np.testing.assert_array_equal(ridge.predict(x), original.predict(x))


def test_exported_graph_is_the_recipe(exported_model: Path) -> None:
    """Opset 17 in one file (the dynamo exporter writes 18 and a .onnx.data), input imu (1, 48, 110)
    and output blendshapes (1, 52), no Erf; the TFLite input is not transposed (-kat)."""
    import onnx

    from imusic.infer import load_model

    graph = onnx.load(str(exported_model / "model.onnx"))
    assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert not list(exported_model.glob("*.data"))
    dims = [[d.dim_value for d in t.type.tensor_type.shape.dim] for t in (graph.graph.input[0], graph.graph.output[0])]
    assert (graph.graph.input[0].name, graph.graph.output[0].name) == ("imu", "blendshapes")
    assert dims == [[1, 48, 110], [1, 52]]
    assert "Erf" not in {n.op_type for n in graph.graph.node}
    for precision in ("float32", "int8"):
        model = load_model(exported_model, precision=precision)
        assert model.backend == "litert" and model._runner.input_shape == (1, 48, 110)  # noqa: SLF001


def test_int8_file_is_integer_inside(exported_model: Path) -> None:
    """Full-integer: every weight tensor and every activation between the input's quantise and the
    output's dequantise is int8/int32, not float (a dynamic-range file would pass parity too)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(exported_model / "model-int8.tflite"))
    ops = it._get_ops_details()  # noqa: SLF001
    names = [op["op_name"] for op in ops]
    assert names[0] == "QUANTIZE" and names[-1] == "DEQUANTIZE" and names.count("DEQUANTIZE") == 1, names
    for op in ops[1:-1]:
        for index in [*op["inputs"], *op["outputs"]]:
            if index < 0:
                continue
            detail = it._get_tensor_details(int(index), 0)  # noqa: SLF001
            assert detail["dtype"] in (np.int8, np.int32), (op["op_name"], detail["name"], detail["dtype"])


def test_parity_guard_refuses_a_wrong_conversion(exported_model: Path, student_checkpoint: Path,
                                                 tmp_path: Path) -> None:
    """The check that refuses to write: the same files against a student whose weights differ a little."""
    import torch

    from imusic.infer import sha256_of
    from imusic.modelio import ModelSpec
    from imusic_model.export import (FILE_NAMES, INT8_MAX_ABS, INT8_MEAN_ABS, ExportError, build_student,
                                     check_parity, export_onnx, load_checkpoint, run_onnx2tf)

    ckpt = load_checkpoint(student_checkpoint)
    other = build_student(ckpt)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    held = random_windows(16, 11, seed=4)
    with pytest.raises(ExportError) as info:
        check_parity(exported_model, other, held, ["float32", "int8"])
    assert "differs from PyTorch" in str(info.value) and "\n" not in str(info.value)
    # a wrong int8 file beside right ONNX and float32 ones: the int8 bound alone must refuse it
    # (the perturbed student's own conversion, with int8 range calibration on the same windows)
    mixed = tmp_path / "mixed"
    shutil.copytree(exported_model, mixed)
    export_onnx(other, ModelSpec.load(mixed / "model.json"), tmp_path / "other.onnx")
    files = run_onnx2tf(tmp_path / "other.onnx", tmp_path / "conv", np.clip(random_windows(64, 11, seed=5), -4, 4))
    shutil.copyfile(files["int8"], mixed / FILE_NAMES["int8"])
    meta = json.loads((mixed / "model.json").read_text())  # as a converter bug would: listed as its own
    meta["export"]["sha256"][FILE_NAMES["int8"]] = sha256_of(mixed / FILE_NAMES["int8"])
    (mixed / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError) as info:
        check_parity(mixed, build_student(ckpt), held, ["float32", "int8"])
    assert str(info.value).startswith("int8 differs from PyTorch"), str(info.value)
    # and the true student passes the same check, with int8 well inside its bounds
    parity = check_parity(exported_model, build_student(ckpt), held, ["float32", "int8"])
    assert parity["float32"]["max_abs"] <= 1e-4
    assert parity["int8"]["mean_abs"] <= INT8_MEAN_ABS / 2 and parity["int8"]["max_abs"] <= INT8_MAX_ABS / 2


def test_no_int8_and_force(exported_model: Path, student_checkpoint: Path, tmp_path: Path) -> None:
    from imusic.infer import load_model
    from imusic.modelio import ModelSpecError

    out = tmp_path / "model"
    shutil.copytree(exported_model, out)
    assert_one_line_error(run_cli("export", str(student_checkpoint), "--out", str(out)), "--force")
    proc = run_cli("export", str(student_checkpoint), "--out", str(out), "--no-int8", "--force", timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert not (out / "model-int8.tflite").exists()  # the older export's int8 file is gone with it
    assert json.loads((out / "model.json").read_text())["files"] == {"float32": "model-float32.tflite",
                                                                     "onnx": "model.onnx"}
    assert load_model(out, precision="float32").precision == "float32"
    with pytest.raises(ModelSpecError, match="lists no int8 file"):
        load_model(out)


def _ckpt_variant(student_checkpoint: Path, path: Path, **changes: Any) -> Path:
    import torch

    raw = torch.load(student_checkpoint, map_location="cpu", weights_only=False)
    raw.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del raw[key]
    torch.save(raw, path)
    return path


def test_export_refusals_are_one_line(student_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = str(student_checkpoint)
    out = str(tmp_path / "out")
    teacher = _ckpt_variant(student_checkpoint, tmp_path / "teacher.pt", kind="teacher")
    assert_one_line_error(run_cli("export", str(teacher), "--out", out), "teacher", "not exported")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    assert_one_line_error(run_cli("export", str(garbage), "--out", out), "not a readable PyTorch checkpoint")
    assert_one_line_error(run_cli("export", str(tmp_path / "missing.pt"), "--out", out), "no such checkpoint")
    bad_calib = _ckpt_variant(student_checkpoint, tmp_path / "calib.pt", calib_x=np.zeros((4, 32, 110), np.float32))
    assert_one_line_error(run_cli("export", str(bad_calib), "--out", out), "calib_x", "(48, 110)")
    no_calib = _ckpt_variant(student_checkpoint, tmp_path / "nocalib.pt", calib_x=None)
    assert_one_line_error(run_cli("export", str(no_calib), "--out", out), "lacks 'calib_x'")
    spec = model_spec().to_json()
    newer = _ckpt_variant(student_checkpoint, tmp_path / "v9.pt",
                          spec={**spec, "feature_spec": {**spec["feature_spec"], "feature_version": 99}})
    assert_one_line_error(run_cli("export", str(newer), "--out", out), "feature version 99")
    assert_one_line_error(run_cli("export", ckpt), "--out DIR is required")
    assert_one_line_error(run_cli("export", ckpt, "--out", out, "--to", "npz"), "--to and --rate are for a recording")
    assert_one_line_error(run_cli("export", ckpt, "--out", out, "--no-int8", "--no-float32"), "nothing to export")
    assert not (tmp_path / "out").exists()
    # and a recording still needs its format
    assert_one_line_error(run_cli("export", str(tmp_path / "rec.imu")), "--to is required")


def test_recordings_still_export_frames(sim_take: Path, tmp_path: Path) -> None:
    out = tmp_path / "frames.npz"
    proc = run_cli("export", str(sim_take / "rec.imu"), "--to", "npz", "--out", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr
    frames = read_frames(out)
    assert len(frames) > 800 and frames.n_imus == 12 and frames.meta["rate_hz"] == 60.0


def test_exact_gelu_is_refused_before_conversion(tmp_path: Path) -> None:
    from torch import nn

    from imusic_model.export import ExportError, export_onnx

    net = nn.Sequential(nn.Flatten(), nn.Linear(48 * 110, 52), nn.GELU())
    with pytest.raises(ExportError, match="FlexErf"):
        export_onnx(net.eval(), model_spec(), tmp_path / "gelu.onnx")
    tanh = nn.Sequential(nn.Flatten(), nn.Linear(48 * 110, 52), nn.GELU(approximate="tanh"))
    export_onnx(tanh.eval(), model_spec(), tmp_path / "tanh.onnx")  # tanh-GELU has no Erf


def test_missing_or_wrong_tools_say_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from imusic_model import export as ex

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("onnx2tf", "tensorflow") else real_find_spec(name, *a))
    with pytest.raises(ex.ExportError) as info:
        ex.check_tools()
    message = str(info.value)
    assert "onnx2tf, tensorflow" in message and "\n" not in message
    assert "pip install 'imusic[export]'" in message and "--no-deps tf-keras==2.21.0 onnx2tf==1.29.24" in message
    monkeypatch.setattr(importlib.util, "find_spec", real_find_spec)
    monkeypatch.setattr(ex, "_version", lambda dist: "0.8.1" if dist == "onnxsim" else "1.0")
    with pytest.raises(ex.ExportError, match="onnxsim==0.4.36"):
        ex.check_tools()


# -- export on a fresh machine ---------------------------------------------------------------------
def _copy_source(dst: Path) -> Path:
    """The working tree as it is (committed or not), without environments and caches."""
    shutil.copytree(REPO, dst, ignore=shutil.ignore_patterns(
        ".venv*", ".cache", ".git", "__pycache__", "build", "*.egg-info", ".pytest_cache", "node_modules"))
    return dst


PARITY_SCRIPT = """
import json, sys
import numpy as np
from imusic.infer import load_model
from imusic_model.export import build_student, load_checkpoint, torch_predict, int8_output_scale
ckpt, model_dir, x_path = sys.argv[1:4]
x = np.load(x_path)
ref = torch_predict(build_student(load_checkpoint(ckpt)), x)
out = {"lsb": int8_output_scale(model_dir + "/model-int8.tflite")}
for name, kw in {"float32": {"precision": "float32"}, "int8": {"precision": "int8"},
                 "onnx": {"backend": "onnxruntime"}}.items():
    m = load_model(model_dir, **kw)
    out[name] = float(np.abs(m.predict(x) - ref).max())
    out[name + "_backend"] = m.backend
print(json.dumps(out))
"""


@pytest.mark.slow_install
@pytest.mark.timeout(2400)
def test_export_on_a_fresh_environment(student_checkpoint: Path, tmp_path: Path) -> None:
    """A new venv (no system site packages), `pip install '.[export]'`, the --no-deps step, then
    `imusic export` there and parity with that environment's torch. Proves the extra installs
    cleanly next to the runtime set on a new machine (pip takes the machine's configured mirror)."""
    src = _copy_source(tmp_path / "src")
    venv = tmp_path / "venv"
    bin_dir = venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '')}"
    timings: dict[str, float] = {}

    def step(name: str, cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)
        timings[name] = time.perf_counter() - t0
        assert proc.returncode == 0, f"{name}: {' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        return proc

    step("venv", [sys.executable, "-m", "venv", str(venv)], 300)
    step("install_export", [str(bin_dir / "pip"), "install", "-q", f"{src}[export]"], 1800)
    step("install_no_deps", [str(bin_dir / "pip"), "install", "-q", "--no-deps", "tf-keras==2.21.0",
                             "onnx2tf==1.29.24"], 600)
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    where = step("where", [str(bin_dir / "python"), "-c", "import imusic, imusic_model; "
                           "print(imusic.__file__); print(imusic_model.__file__)"], 60)
    assert all(str(venv) in line for line in where.stdout.splitlines()), where.stdout  # not this checkout
    out = tmp_path / "model"
    step("export", [str(bin_dir / "imusic"), "export", str(student_checkpoint), "--out", str(out)], 1200)
    x = random_windows(24, 11, seed=21)
    np.save(tmp_path / "x.npy", x)
    proc = step("parity", [str(bin_dir / "python"), "-c", PARITY_SCRIPT, str(student_checkpoint), str(out),
                           str(tmp_path / "x.npy")], 300)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"fresh environment: {json.dumps({k: round(v, 1) for k, v in timings.items()})} s; parity {result}")
    assert result["float32"] <= 1e-4 and result["onnx"] <= 1e-4
    assert result["int8"] <= 8 * result["lsb"]
    backends = (result["float32_backend"], result["int8_backend"], result["onnx_backend"])
    assert backends == ("litert", "litert", "onnxruntime")
