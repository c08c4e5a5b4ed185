"""Calibration end to end on emulated rigs: the simulator's takes recorded through the real firmware
(imusic.sim.scenarios.record_scenario), every step against the rig's truth, the CLI and the session."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imusic.calibration import Calibration
from imusic.calibration.emulated import emulated_calibration
from imusic.errors import UserError
from imusic.session import Session, recording_url
from testenv import assert_one_line_error, micropython_binary, run_cli

pytestmark = pytest.mark.skipif(micropython_binary() is None, reason="the MicroPython unix port is not installed")

STEPS = ("gyro", "accel", "mag", "clock", "neutral")


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("rig")
    report = emulated_calibration(layout="imusic", seed=3, out_dir=out, save_to=out / "calibration.json")
    return out, report


def test_every_step_meets_its_target_against_the_truth(rig: tuple[Path, dict[str, Any]]) -> None:
    _, report = rig
    rows = report["results"]
    assert {r["step"] for r in rows} == set(STEPS)
    assert sum(r["step"] == "gyro" for r in rows) == 12  # every IMU of the layout
    for r in rows:
        assert set(r) >= {"step", "imu", "site", "estimate", "truth", "residual", "unit", "target", "ok"}
        assert r["ok"], r
    # the calibration did something: the raw data are far from the targets
    mag = [r for r in rows if r["step"] == "mag"]
    assert mag and all(r["raw_spread_pct"] > 5 * r["target"] for r in mag)
    gyro_truth = [np.linalg.norm(r["truth"]["bias_dps"]) for r in rows if r["step"] == "gyro"]
    assert max(gyro_truth) > 10 * 0.05


def test_neutral_step_fits_each_face_sites_lever_arm(rig: tuple[Path, dict[str, Any]]) -> None:
    out, report = rig
    rows = [r for r in report["results"] if r["step"] == "neutral"]
    assert len(rows) == 11
    fitted = np.array([r["lever_arm_error_mm"] for r in rows])
    catalogue = np.array([r["catalogue_lever_arm_error_mm"] for r in rows])
    # the rigid-body fit of the neutral capture finds where each IMU sits on this face (the subject's
    # face size and each IMU's placement error) to about a millimetre, the catalogue to several
    assert fitted.max() < 2.0, fitted
    assert fitted.mean() < 0.5 * catalogue.mean(), (fitted, catalogue)
    saved = Calibration.load(out / "calibration.json").neutral_lever_arms_m()
    assert set(saved) == {r["site"] for r in rows}
    for r in rows:
        assert np.allclose(saved[r["site"]] * 1e3, r["estimate"]["lever_arm_mm"], atol=0.01)


def test_neutral_step_matches_each_face_gyro_to_the_reference(rig: tuple[Path, dict[str, Any]]) -> None:
    """Against the chips' true gain and cross-axis matrices: the corrected face gyros read the head
    reference's rates turned by the stored rest pose to a small fraction of a percent, on every
    axis, including the roll the capture's head hardly turns about (a ridge sized to the capture's
    energy left 0.4-0.9 % there)."""
    _, report = rig
    left = np.array([r["gyro_gain_error_pct"] for r in report["results"] if r["step"] == "neutral"])
    assert len(left) == 11 and left.max() < 0.3, left


def test_accel_step_fits_each_gyros_own_gain_from_the_turns(rig: tuple[Path, dict[str, Any]]) -> None:
    """The six-pose capture's turns give every gyro its absolute gain (which no other step sees: the
    neutral step matches the face gyros to the head reference's): the chips' 1-3 % scale and
    cross-axis errors fall to a fraction of a percent."""
    _, report = rig
    rows = [r for r in report["results"] if r["step"] == "accel"]
    assert len(rows) == 12 and all(r["gyro_scale_fitted"] for r in rows)
    left = np.array([r["gyro_gain_error_pct"] for r in rows])
    assert left.max() < 1.0 and np.median(left) < 0.4, left


def test_a_session_applies_the_calibration_to_a_replay_and_refuses_another_rig(
        rig: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, _ = rig
    rec = out / "table_rest_take0" / "rec.imu"
    cal_path = out / "calibration.json"
    with Session.open([recording_url(rec)]) as raw_session:
        raw = np.array([f.gyro_rads for f in raw_session.frames()])
    with Session.open([recording_url(rec)], calibration=cal_path) as session:
        corrected = np.array([f.gyro_rads for f in session.frames()])
    assert raw.shape == corrected.shape
    raw_bias = np.degrees(np.abs(np.nanmean(raw, axis=0))).max()
    left = np.degrees(np.abs(np.nanmean(corrected, axis=0))).max()
    assert left < 0.05 < raw_bias, (left, raw_bias)
    # a rig of another seed has other node uids: refused with one line naming the node
    other = emulated_calibration(layout="imusic", seed=4, steps=["gyro"], out_dir=tmp_path / "other",
                                 save_to=tmp_path / "other.json")
    assert other["results"]
    with Session.open([recording_url(rec)], calibration=tmp_path / "other.json") as session:
        with pytest.raises(UserError, match=r"calibration for other hardware: node 1 \(uid [0-9a-f]{16}\)") as exc:
            list(session.frames())
    assert "\n" not in str(exc.value)


def test_a_live_session_refuses_a_calibration_for_other_hardware(rig: tuple[Path, dict[str, Any]]) -> None:
    out, _ = rig
    with Session.open(["emu://?imus=2&rate=60&node_id=1"], calibration=out / "calibration.json") as session:
        with pytest.raises(UserError, match="calibration for other hardware: node 1"):
            for _ in session.frames(timeout_s=5.0):
                pass


def test_cli_emulated_calibration_prints_every_step(tmp_path: Path) -> None:
    proc = run_cli("calibrate", "--emulate", "--sim", "--layout", "compact", "--seed", "5", "--json",
                   "--out", str(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert {r["step"] for r in report["results"]} == set(STEPS)
    assert all(r["ok"] for r in report["results"])
    cal = Calibration.load(tmp_path / "calibration.json")
    assert cal.neutral and cal.head_reference
    # the file's steps come back from the CLI, and a step run again from a recording replaces its own entries
    proc = run_cli("calibrate", "gyro", "--from", str(tmp_path / "table_rest_take0" / "rec.imu"),
                   "--file", str(tmp_path / "calibration.json"), "--json")
    assert proc.returncode == 0, proc.stderr
    again = Calibration.load(tmp_path / "calibration.json")
    assert again.neutral == cal.neutral
    assert [e.get("accel") for e in again.to_json()["imus"]] == [e.get("accel") for e in cal.to_json()["imus"]]
    show = run_cli("calibrate", "show", "--file", str(tmp_path / "calibration.json"))
    assert show.returncode == 0 and "gyro bias" in show.stdout


def test_cli_refuses_a_moving_subject_at_the_gyro_step_with_one_line(tmp_path: Path) -> None:
    cal = tmp_path / "calibration.json"
    proc = run_cli("calibrate", "gyro", "--emulate", "--sim", "--layout", "minimal", "--scenario", "expressions",
                   "--out", str(tmp_path), timeout=120)
    assert_one_line_error(proc, "calibrate gyro", "IMU", "moving")
    assert proc.returncode == 2
    assert not cal.exists()
    # the same recording through the guided step: the same refusal, and an existing file is kept
    good = run_cli("calibrate", "gyro", "--emulate", "--sim", "--layout", "minimal", "--out", str(tmp_path / "ok"))
    assert good.returncode == 0, good.stderr
    before = (tmp_path / "ok" / "calibration.json").read_bytes()
    proc = run_cli("calibrate", "gyro", "--from", str(tmp_path / "expressions_take0" / "rec.imu"),
                   "--file", str(tmp_path / "ok" / "calibration.json"))
    assert_one_line_error(proc, "calibrate gyro", "IMU", "moving")
    assert (tmp_path / "ok" / "calibration.json").read_bytes() == before
