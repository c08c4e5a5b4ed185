"""Simulated takes recorded through the real firmware (imusic.sim.scenarios, `imusic simulate`,
`imusic emulate-node --sim`): what the chips were fed comes back out of the recording."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from testenv import assert_one_line_error, micropython_binary, run_cli

from imusic.livelink import read_csv
from imusic.placement import load_layout
from imusic.protocol import Hello, Status, decode_samples_bulk
from imusic.recording import ChunkKind, RecordingReader
from imusic.replay import replay_blocks
from imusic.sim.scenarios import record_scenario

pytestmark = pytest.mark.skipif(micropython_binary() is None, reason="micropython (unix port) not installed")

SEED = 3
DURATION_S = 10.0


@pytest.fixture(scope="module")
def take_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("take")
    return record_scenario("imusic", "expressions", seed=SEED, duration_s=DURATION_S, out_dir=out)


def _stream(path: Path) -> bytes:
    return b"".join(c.payload for c in RecordingReader(path).chunks(kinds=(ChunkKind.DATA,)))


def test_files_and_truth(take_dir: Path) -> None:
    for name in ("rec.imu", "blendshapes.csv", "truth.json", "truth.npz"):
        assert (take_dir / name).is_file(), name
    truth = json.loads((take_dir / "truth.json").read_text())
    layout = load_layout("imusic")
    assert truth["simulated"] is True and truth["scenario"] == "expressions" and truth["seed"] == SEED
    assert truth["sites"] == list(layout.sites) and set(truth["imus"]) == set(layout.sites)
    assert truth["period_us"] == 16666
    reader = RecordingReader(take_dir / "rec.imu")
    assert list(reader.links.values()) == ["emu://sim/node1"]
    assert reader.meta["simulated"] is True


def test_decoded_samples_are_what_the_chips_were_fed(take_dir: Path) -> None:
    truth = json.loads((take_dir / "truth.json").read_text())
    arrays = np.load(take_dir / "truth.npz")
    batch = decode_samples_bulk(_stream(take_dir / "rec.imu"))
    hello = next(m for m in batch.messages if isinstance(m, Hello))
    clock = truth["nodes"]["1"]
    assert hello.uid.hex() == clock["uid"]
    assert [i.site for i in hello.imus] == truth["sites"]
    samples = batch.nodes[1]
    period = truth["period_us"]
    rows = (samples.t_us - clock["offset_us"]) // period
    assert np.all((samples.t_us - clock["offset_us"]) % period == 0)
    assert np.array_equal(rows, np.arange(1, len(rows) + 1))  # every tick, none lost
    assert len(rows) == int(np.ceil(DURATION_S * 1e6 / period)) - 1
    accel_scale = np.array([i.accel_scale for i in hello.imus])[None, :, None]
    gyro_scale = np.array([i.gyro_scale for i in hello.imus])[None, :, None]
    accel = samples.accel * accel_scale
    gyro = samples.gyro * gyro_scale
    fed_accel = arrays["accel_mps2"][rows]
    fed_gyro = arrays["gyro_rads"][rows]
    # equal to within half a count (the chips round at their range) and the table's micro-units
    assert np.all(np.abs(accel - fed_accel) <= 0.5 * accel_scale + 2e-6)
    assert np.all(np.abs(gyro - fed_gyro) <= 0.5 * gyro_scale + 2e-6)
    mag_imus = [k for k, i in enumerate(hello.imus) if i.mag_chip]
    assert mag_imus == [k for k, s in enumerate(truth["sites"]) if truth["imus"][s]["mag"]]
    for k in mag_imus:
        scale = hello.imus[k].mag_scale
        assert np.all(np.abs(samples.mag[:, k] * scale - arrays["mag_uT"][rows, k]) <= 0.5 * scale + 2e-3)
    # the errors are really in there: the measured values differ from the ideal ones by more than a count
    assert np.abs(fed_gyro - arrays["true_gyro_rads"][rows]).mean() > 5 * gyro_scale.mean()
    statuses = [m for m in batch.messages if isinstance(m, Status)]
    # STATUS reports the first IMU's temperature register (1/256 degC steps on the QMI8658)
    assert statuses and abs(statuses[0].temp_cdeg - truth["imus"][truth["sites"][0]]["temp_register_cdeg"]) <= 1


def test_replayed_frames_line_up_with_the_truth(take_dir: Path) -> None:
    layout = load_layout("imusic")
    arrays = np.load(take_dir / "truth.npz")
    result = replay_blocks(take_dir / "rec.imu", layout.rate_hz)
    assert result.blocks and all(b.sites == layout.sites for b in result.blocks)
    report = result.nodes["1"]
    assert report["lost_frames"] == 0 and report["crc_errors"] == 0
    truth = json.loads((take_dir / "truth.json").read_text())
    assert report["clock_drift_ppm"] == pytest.approx(truth["nodes"]["1"]["drift_ppm"], abs=10.0)
    t = np.concatenate([b.t_host_s for b in result.blocks])
    gyro = np.concatenate([b.gyro_rads for b in result.blocks])
    accel = np.concatenate([b.accel_mps2 for b in result.blocks])
    valid = np.concatenate([b.valid for b in result.blocks])
    assert valid.all()
    assert len(t) >= DURATION_S * layout.rate_hz - 3
    sample_t = arrays["sample_t_s"]
    n = sample_t.shape[1]

    def truth_at(name: str) -> np.ndarray:
        values = arrays[name]
        return np.stack([np.stack([np.interp(t, sample_t[:, j], values[:, j, k]) for k in range(3)], axis=-1)
                         for j in range(n)], axis=1)

    expected_gyro = truth_at("gyro_rads")
    expected_accel = truth_at("accel_mps2")
    # time agreement: the shift that best explains the residual, from the truth's slope
    slope = np.gradient(expected_gyro, t, axis=0)
    shift_s = float(np.sum((gyro - expected_gyro) * slope) / np.sum(slope * slope))
    assert abs(shift_s) < 1e-3
    # values: within quantisation plus what a sub-millisecond clock error moves the fast signals
    tolerance = 0.5 * 512 * np.pi / 180 / 32768 + 1e-3 * np.abs(slope)
    assert np.mean(np.abs(gyro - expected_gyro) <= tolerance + 1e-3) > 0.99
    accel_slope = np.abs(np.gradient(expected_accel, t, axis=0))
    assert np.mean(np.abs(accel - expected_accel) <= 0.5 * 8 * 9.80665 / 32768 + 1e-3 * accel_slope + 2e-3) > 0.99


def test_blendshape_truth_reads_back(take_dir: Path) -> None:
    arrays = np.load(take_dir / "truth.npz")
    t_s, weights, _ = read_csv(take_dir / "blendshapes.csv")
    assert weights.shape == arrays["blendshapes"].shape == (int(DURATION_S * 60), 52)
    assert np.allclose(weights, arrays["blendshapes"], atol=1e-3)
    assert np.allclose(t_s, arrays["t_s"], atol=1e-3)
    assert weights.max() > 0.2  # an expressive take


def test_simulate_cli_writes_the_tree(tmp_path: Path) -> None:
    out = tmp_path / "data"
    proc = run_cli("simulate", "--layout", "minimal", "--subjects", "2", "--minutes", "0.1", "--seed", "5",
                   "--out", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["simulated"] is True and manifest["layout"] == "minimal"
    assert [s["id"] for s in manifest["subjects"]] == ["subject_01", "subject_02"]
    uids = [s["node_uids"]["1"] for s in manifest["subjects"]]
    assert uids[0] != uids[1]  # each subject wears their own rig
    for subject in manifest["subjects"]:
        for take in subject["takes"]:
            assert take["duration_s"] == pytest.approx(6.0)
            for name in ("rec.imu", "blendshapes.csv", "truth.json", "truth.npz"):
                assert (out / take["path"] / name).is_file()
    again = run_cli("simulate", "--layout", "minimal", "--minutes", "0.1", "--out", str(out))
    assert_one_line_error(again, "not empty")


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("simulate", "--layout", "nosuch", "--out", str(tmp_path / "a")), "nosuch")
    assert_one_line_error(run_cli("simulate", "--minutes", "0", "--out", str(tmp_path / "b")), "--minutes")
    assert_one_line_error(run_cli("simulate", "--scenario", "juggling", "--out", str(tmp_path / "c")), "juggling")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(run_cli("simulate", "--minutes", "0.1", "--out", str(blocker / "sub")), "--out")
    assert_one_line_error(run_cli("emulate-node", "--sim", "--layout", "nosuch"), "nosuch")
    assert_one_line_error(run_cli("emulate-node", "--layout", "minimal"), "--sim")


def test_emulate_node_sim_streams_the_layout(tmp_path: Path) -> None:
    stream = tmp_path / "node.bin"
    proc = run_cli("emulate-node", "--sim", "--layout", "compact", "--seed", "2", "--sim-seconds", "3",
                   "--scenario", "neutral", "--clock", "virtual", "--seconds", "5", "--link", f"file:{stream}",
                   timeout=120)
    assert proc.returncode == 0, proc.stderr
    batch = decode_samples_bulk(stream.read_bytes())
    hello = next(m for m in batch.messages if isinstance(m, Hello))
    assert tuple(i.site for i in hello.imus) == load_layout("compact").sites
    assert hello.rate_hz == 60
    assert len(batch.nodes[1]) >= 5 * 60 - 2  # the 3 s table looped past its end
