"""``imusic edge-check``: models on emulated aarch64 (QEMU user mode, Debian bookworm's Python, the
aarch64 LiteRT wheel) against the same files on x86 (docs/edge.md).

Everything runs for real: the emulated Python is prepared once into the user's cache (about a
minute the first time: debootstrap, wheels, the plugin), then each check starts QEMU.

- the shipped default model, float32 and int8, on cortex-a72 (Raspberry Pi 4): outputs match
  x86, instructions counted, partitions read, the streaming runtime (features + model) run on
  the aarch64 side and compared (this is the CI check the issue asks for);
- the tiny exported student of tests/test_export.py on cortex-a76 (Raspberry Pi 5 / Jetson class);
- a graph with an op XNNPACK does not take (CUMSUM), to check the partition count and the ops
  named as fallbacks on both machines;
- instruction counts that follow the work: two models whose large layer differs 4x in width;
- the tolerances, and bad input (missing tools, missing model) as one-line errors.

Needs qemu-user (qemu-aarch64), debootstrap and a C compiler on the machine (Makefile, CI).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from imusic.edge import compare_outputs
from imusic.edge.check import FLOAT32_FLOOR_ULPS, FLOAT32_SPREAD_FACTOR
from test_export import exported_model, student_checkpoint  # noqa: F401  (session fixtures)
from testenv import assert_one_line_error, run_cli

EDGE_TIMEOUT_S = 1500  # the first test of a fresh machine also prepares the emulated Python


def edge_json(*args: str, **kw: Any) -> tuple[int, dict[str, Any]]:
    proc = run_cli("edge-check", *args, "--json", timeout=EDGE_TIMEOUT_S, **kw)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def assert_matches_x86(report: dict[str, Any], precisions: set[str]) -> None:
    assert set(report["precisions"]) == precisions
    for p, res in report["precisions"].items():
        assert res["guest_machine"] == "aarch64", p
        cmp = res["compare"]
        assert cmp["ok"] and cmp["max_diff"] <= cmp["tolerance"], (p, cmp)
        assert cmp["elements"] == res["windows"] * 52
        ins = res["instructions"]
        assert ins["invokes"] == res["windows"] and ins["per_frame"] > 10_000, (p, ins)
        # the same invoke on other windows costs the same instructions (no data-dependent paths)
        assert (ins["max"] - ins["min"]) <= 0.05 * ins["per_frame"], (p, ins)
        assert res["xnnpack"]["partitions"] >= 1 and res["same_partitioning"], (p, res["xnnpack"])
        if res["output_lsb"]:  # int8: LSB-exact or one LSB off
            assert cmp["unit"] == "LSB" and cmp["max_diff"] <= 1
    assert report["ok"]


@pytest.mark.timeout(EDGE_TIMEOUT_S)
def test_default_model_on_cortex_a72_matches_x86() -> None:
    code, r = edge_json("default", "--cpu", "cortex-a72")
    assert code == 0, r
    assert r["model"] == "default" and r["cpu"] == "cortex-a72" and r["data"]["source"] == "simulated"
    assert_matches_x86(r, {"float32", "int8"})
    assert r["windows"] == 64
    # the streaming runtime ran on the aarch64 side, both precisions, and agrees with x86
    assert [s["precision"] for s in r["stream"]] == ["float32", "int8"], r["stream_note"]
    for s in r["stream"]:
        assert s["ok"] and s["frames"] >= 400, s
        assert s["features"]["valid_agree"] and s["features"]["max_rel_diff"] < 1e-3, s
        assert s["model_on_same_features"]["ok"], s
        # features + model cost more than the model alone
        assert s["instructions_per_frame"] > r["precisions"][s["precision"]]["instructions"]["per_frame"]


@pytest.mark.timeout(EDGE_TIMEOUT_S)
def test_exported_student_on_cortex_a76(exported_model: Path) -> None:  # noqa: F811
    code, r = edge_json(str(exported_model), "--cpu", "cortex-a76", "--no-stream", "--windows", "16")
    assert code == 0, r
    assert r["cpu"] == "cortex-a76" and r["stream"] == [] and "no-stream" in r["stream_note"]
    assert_matches_x86(r, {"float32", "int8"})
    sizes = {p: res["size_bytes"] for p, res in r["precisions"].items()}
    assert sizes["int8"] < sizes["float32"]


def _tf_models(out: Path) -> None:
    """Tiny TFLite graphs with known structure, built with TensorFlow in a subprocess (TF's import
    would otherwise stay in the test process)."""
    script = r'''
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import tensorflow as tf
out = sys.argv[1]
rng = np.random.default_rng(0)
W, C = 48, 110

def save(name, module):
    fn = module.__call__.get_concrete_function()
    data = tf.lite.TFLiteConverter.from_concrete_functions([fn], module).convert()
    open(os.path.join(out, name), "wb").write(data)

class Split(tf.Module):  # FC, CUMSUM (not an XNNPACK op), FC: two partitions
    def __init__(self):
        self.w1 = tf.constant(rng.normal(0, 0.02, (W * C, 32)).astype(np.float32))
        self.w2 = tf.constant(rng.normal(0, 0.1, (32, 52)).astype(np.float32))
    @tf.function(input_signature=[tf.TensorSpec([1, W, C], tf.float32)])
    def __call__(self, x):
        h = tf.math.cumsum(tf.matmul(tf.reshape(x, [1, W * C]), self.w1), axis=1)
        return tf.sigmoid(tf.matmul(h, self.w2))

class Wide(tf.Module):  # one large FC of a given width, then a small one
    def __init__(self, width):
        self.w1 = tf.constant(rng.normal(0, 0.02, (W * C, width)).astype(np.float32))
        self.w2 = tf.constant(rng.normal(0, 0.1, (width, 52)).astype(np.float32))
    @tf.function(input_signature=[tf.TensorSpec([1, W, C], tf.float32)])
    def __call__(self, x):
        return tf.sigmoid(tf.matmul(tf.nn.relu(tf.matmul(tf.reshape(x, [1, W * C]), self.w1)), self.w2))

save("split-float32.tflite", Split())
save("wide32-float32.tflite", Wide(32))
save("wide128-float32.tflite", Wide(128))
np.save(os.path.join(out, "windows.npy"), rng.normal(0, 1, (8, W, C)).astype(np.float32))
'''
    import subprocess

    proc = subprocess.run([sys.executable, "-c", script, str(out)], check=False, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def tf_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tf_models")
    _tf_models(out)
    return out


@pytest.mark.timeout(EDGE_TIMEOUT_S)
def test_partitions_and_fallback_ops_of_a_split_graph(tf_models: Path) -> None:
    code, r = edge_json(str(tf_models / "split-float32.tflite"), "--data", str(tf_models / "windows.npy"))
    assert code == 0, r
    res = r["precisions"]["float32"]
    for side in ("xnnpack", "xnnpack_x86"):
        assert res[side]["partitions"] == 2, res[side]
        assert res[side]["fallback_ops"] == {"CUMSUM": 1}, res[side]
        assert res[side]["delegated_ops"].get("FULLY_CONNECTED") == 2, res[side]
    assert res["compare"]["ok"] and r["stream_note"] == "needs a model directory and a recording"


@pytest.mark.timeout(EDGE_TIMEOUT_S)
def test_instruction_counts_follow_the_work(tf_models: Path) -> None:
    per_frame = {}
    for width in (32, 128):
        code, r = edge_json(str(tf_models / f"wide{width}-float32.tflite"), "--data", str(tf_models / "windows.npy"))
        assert code == 0, r
        per_frame[width] = r["precisions"]["float32"]["instructions"]["per_frame"]
    # the large layer holds ~97% of the multiply-accumulates and is 4x wider: about 4x the work
    ratio = per_frame[128] / per_frame[32]
    assert 3.0 < ratio < 4.5, per_frame


def test_int8_tolerance_is_one_lsb() -> None:
    a = np.array([[-128, 0, 5, 127]], np.int8)
    ok = compare_outputs(a, a + np.array([[1, 0, -1, 0]], np.int8), lsb=0.004)
    assert ok["ok"] and ok["unit"] == "LSB" and ok["max_diff"] == 1 and ok["max_abs_diff"] == pytest.approx(0.004)
    bad = compare_outputs(a, a + np.array([[0, 2, 0, 0]], np.int8), lsb=0.004)
    assert not bad["ok"] and bad["max_diff"] == 2
    # int8 models with float outputs: the difference is read in units of the dequantised scale
    f = np.array([[0.0, 0.5, 1.0]], np.float32)
    assert compare_outputs(f, f + np.float32(0.004), lsb=0.004)["ok"]
    assert not compare_outputs(f, f + np.float32(0.009), lsb=0.004)["ok"]


def test_float_tolerance_is_ulp_level_unless_the_model_spreads_more() -> None:
    y = np.linspace(0, 1, 52, dtype=np.float32)[None]
    ulp = float(np.spacing(np.float32(1.0)))
    near = y.copy()
    near[0, 10] += np.float32(FLOAT32_FLOOR_ULPS * ulp)
    assert compare_outputs(y, near, None)["ok"]
    far = y.copy()
    far[0, 10] += np.float32(1e-4)  # a real divergence: 800 ulp
    assert not compare_outputs(y, far, None)["ok"]
    # x86's own kernels disagreeing by 5e-5 on these inputs make 1e-4 rounding, not a divergence
    assert compare_outputs(y, far, None, spread=1e-4 / FLOAT32_SPREAD_FACTOR * 1.01)["ok"]
    nan = y.copy()
    nan[0, 3] = np.nan
    assert not compare_outputs(y, nan, None)["ok"]
    assert not compare_outputs(y, y[:, :51], None)["ok"]


def test_missing_emulator_names_the_package(tf_models: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # no qemu-aarch64 anywhere on PATH
    proc = run_cli("edge-check", str(tf_models / "split-float32.tflite"), "--data", str(tf_models / "windows.npy"),
                   "--cache", str(tmp_path / "cache"), env=env)
    assert proc.returncode == 2
    assert_one_line_error(proc, "qemu-aarch64", "apt-get install qemu-user")


def test_missing_debootstrap_names_the_package(tf_models: Path, tmp_path: Path) -> None:
    import shutil

    qemu = shutil.which("qemu-aarch64")
    assert qemu, "qemu-aarch64 (package qemu-user) must be installed for the edge tests"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "qemu-aarch64").symlink_to(qemu)
    env = {**os.environ, "PATH": str(bin_dir)}  # qemu, but no debootstrap, for an empty cache
    proc = run_cli("edge-check", str(tf_models / "split-float32.tflite"), "--data", str(tf_models / "windows.npy"),
                   "--cache", str(tmp_path / "cache"), env=env)
    assert proc.returncode == 2
    assert_one_line_error(proc, "debootstrap", "apt-get install debootstrap")


def test_bad_models_are_one_line_errors(tf_models: Path, tmp_path: Path) -> None:
    assert_one_line_error(run_cli("edge-check", str(tmp_path / "nothing")), "no such model")
    assert_one_line_error(run_cli("edge-check", str(tmp_path)), "no model.json")
    # a bare file has no normalisation to make windows with: it needs windows given
    assert_one_line_error(run_cli("edge-check", str(tf_models / "split-float32.tflite")), "--data WINDOWS.npy")
