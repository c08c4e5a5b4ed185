"""Evaluation (imusic.evaluate, `imusic eval`): the error tables against hand computations, the
ridge baseline on the same windows, streaming latency, the choice of subjects, and the CLI on a
real exported model (the tiny student `imusic export` writes for tests/test_export.py) and a small
simulated set made here (3 subjects x 20 s, through the real firmware)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from imusic.arkit import BLENDSHAPES, INDEX, REGIONS
from imusic.data import (
    DataError,
    Dataset,
    Windows,
    describe_dataset,
    load_dataset,
    norm_stats,
    split_by_subject,
)
from imusic.evaluate import evaluate_windows, select_subjects, streaming_latency
from imusic.ridge import RidgeBaseline
from test_export import exported_model, student_checkpoint  # noqa: F401  (session fixtures: the exported model)
from testenv import assert_one_line_error, micropython_binary, run_cli

pytestmark = pytest.mark.skipif(micropython_binary() is None, reason="micropython (unix port) not installed")

W = 48


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "sim"
    proc = run_cli("simulate", "--subjects", "3", "--minutes", "0.34", "--seed", "8", "--no-calibrate",
                   "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def ds(sim_dir: Path) -> Dataset:
    return load_dataset(sim_dir)


@pytest.fixture(scope="module")
def windows(ds: Dataset) -> Windows:
    mean, std = norm_stats(ds.takes)
    return Windows(ds.takes, W, mean, std)


def test_error_tables_match_a_hand_computation(windows: Windows) -> None:
    x, y = windows.arrays()
    # a constant prediction: its error is known in closed form
    const = np.full(52, 0.1, np.float32)
    got = evaluate_windows(lambda xb: np.tile(const, (len(xb), 1)), windows, batch_size=300)
    per = np.abs(y.astype(np.float64) - const).mean(axis=0)
    assert got["frames"] == len(windows) == len(y)
    assert got["mae"] == pytest.approx(float(per.mean()), rel=1e-6)
    assert set(got["mae_by_region"]) == set(REGIONS) and list(got["mae_by_blendshape"]) == list(BLENDSHAPES)
    for region, names in REGIONS.items():
        assert got["mae_by_region"][region] == pytest.approx(float(np.mean([per[INDEX[n]] for n in names])), rel=1e-6)
    assert got["mae_by_blendshape"]["jawOpen"] == pytest.approx(float(per[INDEX["jawOpen"]]), rel=1e-6)
    assert got["mae_ridge"] is None
    # the ridge baseline runs on the same windows: as the model, it scores the same
    ridge = RidgeBaseline(W, windows.channels, step=16).fit(x, y)
    both = evaluate_windows(ridge.predict, windows, ridge=ridge)
    assert both["mae"] == pytest.approx(both["mae_ridge"], rel=1e-6)
    assert both["improvement_over_ridge"] == pytest.approx(0, abs=1e-6)
    assert both["mae"] == pytest.approx(float(np.abs(ridge.predict(x) - y).mean()), rel=1e-5)
    # a subset
    part = evaluate_windows(lambda xb: np.zeros((len(xb), 52), np.float32), windows, max_windows=100, seed=3)
    assert part["frames"] == 100


def test_streaming_latency_times_every_frame_in_order(ds: Dataset) -> None:
    take = ds.takes[0]
    seen: list[int] = []

    def push(f: np.ndarray, v: np.ndarray) -> None:
        seen.append(len(seen))
        assert f.shape == (11, 9) and v.shape == (11,)

    lat = streaming_latency(push, take.feats, take.valid, frames=50, warmup=5)
    assert seen == list(range(55)) and lat["latency_frames"] == 50
    assert 0 < lat["latency_ms_median"] <= lat["latency_ms_p95"]


def test_subjects_default_to_the_test_split_of_the_training_dataset(ds: Dataset) -> None:
    split = split_by_subject(ds, seed=2)
    training = {"simulated": True, "dataset": describe_dataset(ds), "split": split}
    assert select_subjects(ds, "auto", training)[0] == split["test"]
    assert select_subjects(ds, "test", training)[0] == split["test"]
    assert select_subjects(ds, "all", training)[0] == ds.subjects
    other = {"dataset": dict(describe_dataset(ds), seed=999, path="/elsewhere"), "split": split}
    subjects, how = select_subjects(ds, "auto", other)
    assert subjects == ds.subjects and "all" in how
    with pytest.raises(DataError, match="not the dataset the model was trained on"):
        select_subjects(ds, "test", other)
    assert select_subjects(ds, " subject_02 ,subject_01", None)[0] == ["subject_02", "subject_01"]
    with pytest.raises(DataError, match="no subject subject_07"):
        select_subjects(ds, "subject_01,subject_07", None)


# -- the CLI on a real exported model ------------------------------------------------------------------
def test_eval_cli_json_on_an_exported_model(exported_model: Path, sim_dir: Path, ds: Dataset) -> None:  # noqa: F811
    from imusic.infer import load_model
    from imusic.modelio import ModelSpec

    proc = run_cli("eval", "--model", str(exported_model), "--data", str(sim_dir), "--json", "--latency-frames", "120",
                   timeout=300)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    for key in ("mae", "mae_ridge", "mae_by_region", "mae_by_blendshape", "latency_ms_median", "latency_ms_p95",
                "frames", "simulated", "subjects", "model", "precision", "backend"):
        assert key in r, key
    assert r["simulated"] is True and "SIMULATED" in r["note"] and r["precision"] == "int8"
    assert r["subjects"] == ds.subjects  # the model was not trained on this set: every subject
    spec = ModelSpec.load(exported_model / "model.json")
    win = Windows(ds.takes, spec.window_frames, np.asarray(spec.norm_mean), np.asarray(spec.norm_std))
    assert r["frames"] == len(win)
    assert set(r["mae_by_region"]) == set(REGIONS) and len(r["mae_by_blendshape"]) == 52
    assert 0 < r["mae"] < 1 and 0 < r["mae_ridge"] < 1 and r["latency_frames"] == 120
    assert 0 < r["latency_ms_median"] <= r["latency_ms_p95"]
    # the same numbers in-process, with the runtime's model and the ridge file beside it
    model = load_model(exported_model)
    ridge = RidgeBaseline.load(exported_model / "ridge.npz")
    again = evaluate_windows(model.predict, win, ridge=ridge)
    assert again["mae"] == pytest.approx(r["mae"], rel=1e-6) and again["mae_ridge"] == pytest.approx(r["mae_ridge"], rel=1e-6)

    text = run_cli("eval", "--model", str(exported_model), "--data", str(sim_dir), "--subjects", "subject_03",
                   "--latency-frames", "60", timeout=300)
    assert text.returncode == 0, text.stderr
    assert "SIMULATED" in text.stdout and "ridge" in text.stdout and "latency per frame" in text.stdout
    assert "subject_03 (subjects named)" in text.stdout


def test_eval_cli_uses_the_training_test_split(exported_model: Path, sim_dir: Path, ds: Dataset,  # noqa: F811
                                               tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(exported_model, model)
    meta = json.loads((model / "model.json").read_text())
    split = split_by_subject(ds, seed=5)
    meta["training"] = {"simulated": True, "dataset": describe_dataset(ds), "split": split}
    (model / "model.json").write_text(json.dumps(meta))
    proc = run_cli("eval", "--model", str(model), "--data", str(sim_dir), "--json", "--latency-frames", "30",
                   timeout=300)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["subjects"] == split["test"] and r["subjects_chosen"].startswith("test split")


def test_eval_cli_bad_inputs_are_one_line_errors(exported_model: Path, sim_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    m = str(exported_model)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_cli("eval", "--model", m, "--data", str(empty)), "no takes")
    no_rec = tmp_path / "norec" / "s1" / "t1"
    no_rec.mkdir(parents=True)
    shutil.copyfile(sim_dir / "subject_01" / "take_01" / "blendshapes.csv", no_rec / "blendshapes.csv")
    assert_one_line_error(run_cli("eval", "--model", m, "--data", str(tmp_path / "norec")), "no recording")
    bad_csv = tmp_path / "badcsv" / "s1" / "t1"
    bad_csv.mkdir(parents=True)
    shutil.copyfile(sim_dir / "subject_01" / "take_01" / "rec.imu", bad_csv / "rec.imu")
    (bad_csv / "face.csv").write_text("Timecode,BlendShapeCount,HeadYaw\n00:00:00:00.000,61,0.1\n")
    assert_one_line_error(run_cli("eval", "--model", m, "--data", str(tmp_path / "badcsv")), "missing column")
    assert_one_line_error(run_cli("eval", "--model", m, "--data", str(sim_dir), "--subjects", "subject_09"),
                          "no subject subject_09")
    assert_one_line_error(run_cli("eval", "--model", m, "--data", str(sim_dir), "--subjects", "test"),
                          "not the dataset the model was trained on")
    assert_one_line_error(run_cli("eval", "--model", m, "--data", str(sim_dir), "--threads", "zero"), "--threads")
    assert_one_line_error(run_cli("eval", "--model", str(tmp_path / "nomodel"), "--data", str(sim_dir)), "nomodel")
