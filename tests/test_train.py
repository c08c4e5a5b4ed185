"""Training of the teacher and the student (imusic_model.train, `imusic train`) on a small
simulated set made here through the real firmware (6 subjects x 40 s, uncalibrated rigs): the
student beats the ridge baseline on the held-out subject, resume and seeds are exact, the
teacher's two stages and DDIM sampling work, a missing IMU is handled, DDP under torchrun runs,
and bad input is one line."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see imusic.commands.train)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from testenv import micropython_binary, run_cli  # noqa: E402

torch = pytest.importorskip("torch")

from imusic.data import Windows, load_dataset, trained_split  # noqa: E402
from imusic.modelio import ModelSpec  # noqa: E402
from imusic.ridge import RidgeBaseline  # noqa: E402
from imusic_model.checkpoint import build_model, load_checkpoint  # noqa: E402
from imusic_model.student import Student  # noqa: E402
from imusic_model.teacher import Teacher  # noqa: E402
from imusic_model.train import WINDOW_FRAMES, TrainConfig, predict, run, targets  # noqa: E402

pytestmark = pytest.mark.skipif(micropython_binary() is None, reason="micropython (unix port) not installed")

# in-process runs skip the ridge fit (only the CLI run below is compared with it)
SMALL = {"max_windows": 1024, "val_windows": 256, "batch": 128, "threads": 1, "progress": False, "ridge": False}


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train") / "sim"
    proc = run_cli("simulate", "--subjects", "6", "--minutes", "0.67", "--seed", "3", "--no-calibrate",
                   "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr
    load_dataset(out, workers=2)  # features into the dataset's cache once, for every run below
    return out


@pytest.fixture(scope="module")
def student_run(sim_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short real training run through the CLI (2 threads, as on the lead's machine)."""
    out = tmp_path_factory.mktemp("student")
    proc = run_cli("train", "student", "--data", str(sim_dir), "--out", str(out), "--epochs", "5",
                   "--threads", "2", "--no-progress", timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out


def _state_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _test_windows(ck: dict[str, Any], sim_dir: Path) -> Windows:
    spec = ModelSpec.from_json(ck["spec"])
    ds = load_dataset(sim_dir)
    split = trained_split(spec.training, ds)
    assert split is not None and split["test"]
    return Windows(ds.takes_of(split["test"]), WINDOW_FRAMES, np.asarray(spec.norm_mean, np.float32),
                   np.asarray(spec.norm_std, np.float32))


def test_student_beats_ridge_on_held_out_subject(student_run: Path, sim_dir: Path) -> None:
    ck = load_checkpoint(student_run / "best.pt", kind="student")
    spec = ModelSpec.from_json(ck["spec"])
    # the checkpoint contract
    assert spec.kind == "student" and spec.window_frames == WINDOW_FRAMES
    assert spec.training["simulated"] is True and "SIMULATED" in spec.training["data"]
    assert spec.training["dataset"]["seed"] == 3 and len(spec.training["split"]["test"]) == 1
    calib = np.asarray(ck["calib_x"])
    assert calib.dtype == np.float32 and calib.shape[1:] == (WINDOW_FRAMES, spec.channels) and 2 <= len(calib) <= 256
    assert (student_run / "last.pt").is_file() and (student_run / "ridge.npz").is_file()
    assert Student(**ck["arch"]).macs() == spec.training["macs_per_frame"]

    test = _test_windows(ck, sim_dir)
    idx = np.arange(len(test))
    y = targets(test, idx)
    model = build_model(ck)
    mae = float(np.abs(predict(model, test, idx) - y).mean())
    ridge = RidgeBaseline.load(student_run / "ridge.npz")
    mae_ridge = float(np.abs(ridge.predict(test.batch(idx)[0]) - y).mean())
    assert mae < mae_ridge, (mae, mae_ridge)


def test_student_runs_with_an_imu_missing(student_run: Path, sim_dir: Path) -> None:
    ck = load_checkpoint(student_run / "best.pt")
    model = build_model(ck)
    test = _test_windows(ck, sim_dir)
    idx = np.arange(0, len(test), 7)
    intact = predict(model, test, idx)
    for site in (0, 5, 10):
        p = predict(model, test, idx, drop_sites=np.full(len(idx), site))
        assert p.shape == (len(idx), 52) and np.isfinite(p).all() and p.min() >= 0.0 and p.max() <= 1.0
        assert not np.array_equal(p, intact)  # the validity flags reach the network


def test_resume_and_seeds_are_exact(sim_dir: Path, tmp_path: Path) -> None:
    """A teacher stopped at its stage boundary and resumed ends with the very weights of an
    uninterrupted run (also: the same seed gives the same weights, another seed others)."""
    cfg = dict(kind="teacher", data=str(sim_dir), stage1_epochs=1, epochs=1, **SMALL)
    run(TrainConfig(out=str(tmp_path / "a"), **cfg))
    run(TrainConfig(out=str(tmp_path / "b"), stop_after=1, **cfg))
    stopped = load_checkpoint(tmp_path / "b" / "last.pt")
    assert stopped["train_state"]["epoch"] == 1
    run(TrainConfig(out=str(tmp_path / "b"), resume=True, **cfg))
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert b["train_state"]["epoch"] == 2
    assert _state_equal(a["state_dict"], b["state_dict"])
    assert [h["stage"] for h in a["train_state"]["history"]] == [1, 2]
    def no_time(history: list[dict]) -> list[dict]:  # wall-clock seconds differ between runs
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert no_time(a["train_state"]["history"]) == no_time(b["train_state"]["history"])
    assert not _state_equal(stopped["state_dict"], b["state_dict"])

    run(TrainConfig(out=str(tmp_path / "c"), seed=1, **cfg))
    c = load_checkpoint(tmp_path / "c" / "last.pt")
    assert not _state_equal(a["state_dict"], c["state_dict"])


def test_student_seed_is_deterministic(sim_dir: Path, tmp_path: Path) -> None:
    cfg = dict(kind="student", data=str(sim_dir), epochs=1, **SMALL)
    run(TrainConfig(out=str(tmp_path / "a"), **cfg))
    run(TrainConfig(out=str(tmp_path / "b"), **cfg))
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert _state_equal(a["state_dict"], b["state_dict"])


def test_teacher_two_stages_and_ddim(sim_dir: Path, tmp_path: Path) -> None:
    run(TrainConfig(kind="teacher", data=str(sim_dir), out=str(tmp_path / "t"), stage1_epochs=1, epochs=1, **SMALL))
    ck = load_checkpoint(tmp_path / "t" / "best.pt", kind="teacher")
    assert [h["stage"] for h in ck["train_state"]["history"]] == [1, 2]
    assert ck["train_state"]["stage"] == 2  # best.pt is the diffusion model, not the stage-1 encoder
    teacher = build_model(ck)
    assert isinstance(teacher, Teacher)
    test = _test_windows(ck, sim_dir)
    x, _ = test.batch(np.arange(0, len(test), 50))
    xt = torch.from_numpy(x)
    for steps in (1, teacher.sampling_steps):
        seq = teacher.sample(xt, steps=steps, generator=torch.Generator().manual_seed(0))
        assert seq.shape == (len(x), teacher.seq_frames, 52)
        assert float(seq.min()) >= 0.0 and float(seq.max()) <= 1.0
    one = teacher(xt)
    assert one.shape == (len(x), 52) and torch.equal(one, teacher(xt))  # forward: a fixed seed

    # distillation: the teacher's outputs are computed once and cached in OUT
    s_out = tmp_path / "s"
    run(TrainConfig(kind="student", data=str(sim_dir), out=str(s_out), epochs=1, teacher=str(tmp_path / "t"),
                    **SMALL))
    cache = s_out / "teacher_targets.npz"
    stamp = cache.stat().st_mtime_ns
    distilled = load_checkpoint(s_out / "best.pt")
    assert distilled["spec"]["training"]["distilled_from"]["weight"] == 0.25
    run(TrainConfig(kind="student", data=str(sim_dir), out=str(s_out), epochs=2, teacher=str(tmp_path / "t"),
                    resume=True, **SMALL))
    assert cache.stat().st_mtime_ns == stamp


def test_finetune_keeps_normalisation(student_run: Path, sim_dir: Path, tmp_path: Path) -> None:
    base = load_checkpoint(student_run / "best.pt")
    run(TrainConfig(kind="student", data=str(sim_dir), out=str(tmp_path / "f"), epochs=1, finetune=True,
                    from_model=str(student_run / "best.pt"), **SMALL))
    ft = load_checkpoint(tmp_path / "f" / "best.pt")
    assert ft["spec"]["norm_mean"] == base["spec"]["norm_mean"] and ft["arch"] == base["arch"]
    assert ft["spec"]["training"]["finetuned_from"]["path"] == str(student_run / "best.pt")
    assert ft["train_state"]["config"]["lr"] == pytest.approx(base["train_state"]["config"]["lr"] / 10)


def test_ddp_under_torchrun(sim_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "imusic.cli",
         "train", "student", "--data", str(sim_dir), "--out", str(out), "--epochs", "1", "--max-windows", "1024",
         "--batch", "128", "--val-windows", "256", "--threads", "1", "--no-progress"],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ck = load_checkpoint(out / "last.pt")
    assert ck["spec"]["training"]["processes"] == 2
    assert proc.stderr.count("epoch 1/1:") == 1  # rank 0 alone prints


def test_bad_inputs_are_one_line(sim_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    not_ckpt = tmp_path / "model.pt"
    not_ckpt.write_text("not a checkpoint")
    cases = [
        (["train", "student", "--data", str(empty), "--out", str(tmp_path / "o1")], "no takes"),
        (["train", "student", "--finetune", "--from", str(not_ckpt), "--data", str(sim_dir), "--out",
          str(tmp_path / "o2")], "not a PyTorch checkpoint"),
        (["train", "student", "--from", str(not_ckpt), "--data", str(sim_dir), "--out", str(tmp_path / "o3")],
         "--finetune"),
        (["train", "teacher", "--data", str(sim_dir), "--out", str(tmp_path / "o4"), "--epochs", "zero"],
         "--epochs must be an integer"),
        (["train", "student", "--data", str(sim_dir), "--out", str(tmp_path / "o5"), "--resume"], "no "),
    ]
    for args, words in cases:
        proc = run_cli(*args, timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (args, proc.stderr)
        assert lines[0].startswith("imusic: error:") and words in lines[0], (args, lines)
    # a finished run's directory is not overwritten by a new run
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "last.pt").write_bytes(b"x")
        proc = run_cli("train", "student", "--data", str(sim_dir), "--out", d, timeout=120)
        assert proc.returncode == 2 and "--resume" in proc.stderr
