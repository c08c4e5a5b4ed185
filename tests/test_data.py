"""Training data from paired recordings (imusic.data), the ridge baseline (imusic.ridge) and the
per-subject calibration of `imusic simulate`, on small simulated sets made here through the real
firmware (5 subjects x 20 s uncalibrated; 1 subject x 12 s calibrated)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from imusic.arkit import INDEX
from imusic.data import (
    CACHE_DIR,
    AlignmentError,
    DataError,
    Dataset,
    Take,
    Windows,
    align_signals,
    align_take,
    chin_site,
    load_dataset,
    norm_stats,
    split_by_subject,
    tap_signal,
)
from imusic.features import FeatureSettings, features_of_block
from imusic.livelink import read_csv, write_csv
from imusic.modelio import assemble_input
from imusic.ridge import RidgeBaseline, RidgeError
from testenv import micropython_binary, run_cli

pytestmark = pytest.mark.skipif(micropython_binary() is None, reason="micropython (unix port) not installed")

W = 48
DT = 1 / 60


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "sim"
    proc = run_cli("simulate", "--subjects", "5", "--minutes", "0.34", "--seed", "3", "--no-calibrate",
                   "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def ds(sim_dir: Path) -> Dataset:
    return load_dataset(sim_dir)


def _load_block(take_dir: Path):  # the frames every feature is made from, as bench/bench_features.py reads them
    from imusic.data import _load_block as load

    return load(take_dir / "rec.imu", 60.0)


def _real_style_take(src: Path, dst: Path, *, csv_shift_s: float = 0.0, drop_csv_s: float = 0.0,
                     csv_from: Path | None = None) -> Path:
    """A take as a user's recording would be: rec.imu and a Live Link Face CSV, no simulator truth.
    The CSV's clock runs csv_shift_s ahead of the host's (t_csv = t_host + shift) and starts
    drop_csv_s late."""
    dst.mkdir(parents=True)
    shutil.copyfile(src / "rec.imu", dst / "rec.imu")
    t, w, _ = read_csv((csv_from or src) / "blendshapes.csv")
    keep = t >= t[0] + drop_csv_s
    write_csv(dst / "MySlate_7_iPhone.csv", t[keep] + csv_shift_s, w[keep])
    return dst


# -- loading, labels, windows -------------------------------------------------------------------------
def test_dataset_takes_features_and_labels_match_the_truth(ds: Dataset, sim_dir: Path) -> None:
    assert ds.simulated and ds.subjects == [f"subject_{i:02d}" for i in range(1, 6)]
    assert ds.layout.name == "imusic" and ds.face_sites == list(ds.layout.face_sites)
    take = ds.takes[0]
    assert take.alignment["method"] == "simulated" and take.alignment["offset_s"] == 0.0
    assert take.calibration is None  # made with --no-calibrate
    # features are features_of_block on the replayed frames (the runtime's path)
    block = _load_block(take.path)
    feats, valid = features_of_block(block, ds.layout)
    np.testing.assert_array_equal(take.t_s, block.t_host_s)
    np.testing.assert_array_equal(take.valid, valid)
    np.testing.assert_allclose(take.feats, feats, rtol=0, atol=0)
    # labels: the simulator's blendshapes at the frame times (the CSV shares the host timeline)
    truth = np.load(take.path / "truth.npz")
    want = np.stack([np.interp(take.t_s, truth["t_s"], truth["blendshapes"][:, j]) for j in range(52)], axis=1)
    inside = take.t_s <= truth["t_s"][-1]
    assert take.label_valid[inside].all() and not take.label_valid[~inside].any()
    np.testing.assert_allclose(take.blendshapes[inside], want[inside], atol=1e-6)


def test_windows_are_the_newest_frame_label_and_skip_the_start(ds: Dataset) -> None:
    takes = ds.takes[:2]
    mean, std = norm_stats(takes)
    win = Windows(takes, W, mean, std)
    expected = sum(int((t.label_valid & t.valid.any(axis=1))[W - 1:].sum()) for t in takes)
    assert len(win) == expected and win.channels == 11 * 10
    _, ends = win.locate(np.arange(len(win)))
    assert ends.min() >= W - 1  # no window reaches before its take's start
    rng = np.random.default_rng(0)
    idx = rng.choice(len(win), 64, replace=False)
    x, y = win.batch(idx)
    assert x.shape == (64, W, 110) and y.shape == (64, 52) and x.dtype == y.dtype == np.float32
    k, e = win.locate(idx)
    for row in range(64):
        t = takes[int(k[row])]
        sl = slice(int(e[row]) - W + 1, int(e[row]) + 1)
        np.testing.assert_array_equal(x[row], assemble_input(t.feats[sl], t.valid[sl], mean, std))
        np.testing.assert_array_equal(y[row], t.blendshapes[e[row]])
    # stride, dropout of a site through the whole window, a subset of rows
    assert abs(len(Windows(takes, W, mean, std, stride=4)) - len(win) / 4) <= len(takes) + 1
    xd, _ = win.batch(idx[:3], drop_sites=[2, -1, 10])
    assert (xd[0, :, 99 + 2] == 0).all() and (xd[0, :, 18:27] == 0).all() and (xd[2, :, 99 + 10] == 0).all()
    np.testing.assert_array_equal(xd[1], x[1])
    xs, _ = win.batch(idx[:3], frames=[0, 47])
    np.testing.assert_array_equal(xs, x[:3][:, [0, 47]])
    # lazily: the object holds index arrays, never windows
    held = sum(v.nbytes for v in vars(win).values() if isinstance(v, np.ndarray))
    assert held <= 16 * len(win) + 4 * (len(mean) * 2 + W)
    xa, ya = win.arrays(max_windows=10, seed=1)
    assert xa.shape == (10, W, 110) and np.isfinite(ya).all()


def test_norm_stats_over_valid_frames_with_a_floor(ds: Dataset) -> None:
    takes = ds.takes[:3]
    mean, std = norm_stats(takes)
    site = chin_site(ds.face_sites)
    assert site is not None and ds.face_sites[site] == "mentalis"
    vals = np.concatenate([t.feats[t.valid[:, site], site] for t in takes])
    np.testing.assert_allclose(mean[site * 9:site * 9 + 9], vals.mean(axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(std[site * 9:site * 9 + 9], vals.std(axis=0), rtol=1e-3, atol=1e-6)
    t0 = takes[0]
    flat = Take("flat", t0.path, "s", t0.t_s, np.ones_like(t0.feats), t0.valid, t0.blendshapes, t0.label_valid,
                True, None, {})
    m1, s1 = norm_stats([flat])
    assert np.allclose(m1, 1.0) and np.allclose(s1, 1e-3)


def test_split_by_subject_is_disjoint_and_seeded(ds: Dataset) -> None:
    split = split_by_subject(ds, seed=0)
    assert split == split_by_subject(ds, seed=0)
    parts = [set(split[k]) for k in ("train", "val", "test")]
    assert sum(len(p) for p in parts) == 5 and set().union(*parts) == set(ds.subjects)
    assert len(split["test"]) == 1 and len(split["val"]) == 1 and len(split["train"]) == 3
    tests = {tuple(split_by_subject(ds, seed=s)["test"]) for s in range(8)}
    assert len(tests) > 1  # the seed moves subjects between splits
    for s in range(8):
        sp = split_by_subject(ds, seed=s, n_val=1, n_test=2)
        assert not set(sp["test"]) & set(sp["train"]) and not set(sp["val"]) & set(sp["train"])
        assert {t.subject for t in ds.takes_of(sp["train"])}.isdisjoint(sp["test"])
    with pytest.raises(DataError, match="at least 2 subjects"):
        split_by_subject(["only"])
    with pytest.raises(DataError, match="no subject 'subject_09'"):
        ds.takes_of(["subject_09"])


# -- the cache ------------------------------------------------------------------------------------------
def test_cache_is_used_and_invalidated_by_a_feature_settings_change(ds: Dataset, sim_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "one"
    shutil.copytree(sim_dir / "subject_02" / "take_01", root / "subject_02" / "take_01",
                    ignore=shutil.ignore_patterns("truth.npz"))
    first = load_dataset(root)
    assert not first.takes[0].from_cache and len(list((root / CACHE_DIR).glob("*.npz"))) == 1
    again = load_dataset(root)
    assert again.takes[0].from_cache
    np.testing.assert_array_equal(again.takes[0].feats, first.takes[0].feats)
    other = FeatureSettings(track_bias=False, facial_accel_gate_mps2=None)
    changed = load_dataset(root, settings=other)
    assert not changed.takes[0].from_cache
    assert not np.allclose(np.nan_to_num(changed.takes[0].feats), np.nan_to_num(first.takes[0].feats))
    assert changed.feature_spec["settings"]["track_bias"] is False
    assert len(list((root / CACHE_DIR).glob("*.npz"))) == 1  # the stale file is replaced, not kept
    assert not load_dataset(root).takes[0].from_cache  # and the default settings are recomputed, not stale
    # a damaged cache file is recomputed, not trusted
    for f in (root / CACHE_DIR).glob("*.npz"):
        f.write_bytes(b"not an npz")
    assert not load_dataset(root).takes[0].from_cache
    assert not load_dataset(root, cache=False).takes[0].from_cache


# -- alignment ------------------------------------------------------------------------------------------
def test_aligner_recovers_a_known_offset_of_a_real_style_take(sim_dir: Path, tmp_path: Path) -> None:
    src = sim_dir / "subject_01" / "take_01"
    shift = 7.381  # the phone's clock runs 7.381 s ahead of the host's, and its CSV starts 1.5 s late
    _real_style_take(src, tmp_path / "alice" / "take1", csv_shift_s=shift, drop_csv_s=1.5)
    got = load_dataset(tmp_path, layout="imusic")
    take = got.takes[0]
    assert not take.simulated and take.subject == "alice"
    a = take.alignment
    assert a["method"] == "xcorr" and a["ok"]
    assert abs(a["offset_s"] - (-shift)) < DT  # t_host = t_csv + offset
    assert a["peak_r"] > 0.9 and a["peak_ratio"] > 2
    truth = np.load(src / "truth.npz")
    ok = take.label_valid
    assert ok.sum() > 0.8 * len(ok) and not ok[take.t_s < 1.5].any()
    want = np.interp(take.t_s[ok], truth["t_s"], truth["blendshapes"][:, INDEX["jawOpen"]])
    assert np.abs(take.blendshapes[ok, INDEX["jawOpen"]] - want).max() < 0.02


def test_aligner_refuses_a_csv_of_another_take_and_takes_an_explicit_offset(sim_dir: Path, tmp_path: Path) -> None:
    d = _real_style_take(sim_dir / "subject_01" / "take_01", tmp_path / "bob" / "take1",
                         csv_from=sim_dir / "subject_03" / "take_01")
    with pytest.raises(AlignmentError) as exc:
        load_dataset(tmp_path, layout="imusic")
    msg = str(exc.value)
    assert "\n" not in msg and "cannot align" in msg and "alignment.json" in msg and "jaw correlation" in msg
    (d / "alignment.json").write_text(json.dumps({"offset_s": 0.25}))
    got = load_dataset(tmp_path, layout="imusic").takes[0].alignment
    assert got["method"] == "given" and got["offset_s"] == 0.25
    got = load_dataset(tmp_path, layout="imusic", offsets={"bob/take1": -0.5}).takes[0].alignment
    assert got["offset_s"] == -0.5


def test_aligner_on_noise_and_the_chin_tap(ds: Dataset) -> None:
    take = ds.takes[3]
    chin = chin_site(ds.face_sites)
    assert chin is not None
    t_csv, w, _ = read_csv(take.path / "blendshapes.csv")
    rng = np.random.default_rng(4)
    noise = rng.normal(size=take.feats.shape).astype(np.float32)
    refused = align_take("t", take.t_s, noise, take.valid, None, t_csv, w, ds.face_sites)
    assert not refused.ok and refused.method == "none" and refused.peak_r is not None and refused.peak_r < 0.35
    # a tap: a sharp spike on the chin IMU at 3.0 s and the jaw snapping in the CSV at the same instant,
    # on a CSV clock 42.5 s behind the host's (real tap signal from the recording, spike added)
    tap = tap_signal(_load_block(take.path), ds.layout)
    i0 = int(np.searchsorted(take.t_s, 3.0))
    tap = tap.copy()
    tap[i0] += 50 * float(tap[: int(15 / DT)].max())
    offset = 42.5
    w2 = w.copy()
    k0 = int(np.searchsorted(t_csv, take.t_s[i0]))
    w2[k0:k0 + 2, INDEX["jawOpen"]] += 0.7
    tc2 = t_csv - offset
    only_tap = align_signals(take.t_s, noise[:, chin, 3:6].astype(float), take.valid[:, chin], tap, tc2, w2)
    assert only_tap.ok and only_tap.method == "tap" and abs(only_tap.offset_s - offset) <= DT + 1e-9
    both = align_signals(take.t_s, take.feats[:, chin, 3:6].astype(float), take.valid[:, chin], tap, tc2, w2)
    assert both.ok and both.method == "tap+xcorr" and abs(both.offset_s - offset) < DT
    # without the spike there is no tap, and jaw correlation alone finds the same offset
    plain = align_signals(take.t_s, take.feats[:, chin, 3:6].astype(float), take.valid[:, chin],
                          tap_signal(_load_block(take.path), ds.layout), tc2, w)
    assert plain.method == "xcorr" and abs(plain.offset_s - offset) < DT


# -- bad input -----------------------------------------------------------------------------------------
def test_bad_directories_are_one_line_errors(sim_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no takes"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(DataError, match="no such directory"):
        load_dataset(tmp_path / "nowhere")
    no_rec = tmp_path / "norec" / "s1" / "t1"
    no_rec.mkdir(parents=True)
    shutil.copyfile(sim_dir / "subject_01" / "take_01" / "blendshapes.csv", no_rec / "blendshapes.csv")
    with pytest.raises(DataError, match="no recording"):
        load_dataset(tmp_path / "norec")
    bad_csv = tmp_path / "badcsv" / "s1" / "t1"
    bad_csv.mkdir(parents=True)
    shutil.copyfile(sim_dir / "subject_01" / "take_01" / "rec.imu", bad_csv / "rec.imu")
    (bad_csv / "take.csv").write_text("Timecode,Foo\n00:00:00:00.000,1\n")
    from imusic.errors import UserError

    with pytest.raises(UserError, match="missing column EyeBlinkLeft"):
        load_dataset(tmp_path / "badcsv", layout="imusic")


# -- ridge ---------------------------------------------------------------------------------------------
def test_ridge_beats_the_mean_on_a_held_out_subject(ds: Dataset, tmp_path: Path) -> None:
    split = split_by_subject(ds, n_val=1, n_test=1, seed=0)
    train, val, test = (ds.takes_of(split[k]) for k in ("train", "val", "test"))
    mean, std = norm_stats(train)
    w_train, w_val, w_test = (Windows(t, W, mean, std) for t in (train, val, test))
    ridge = RidgeBaseline(W, w_train.channels, step=8).fit_windows(w_train, w_val)  # 6 of the 48 frames
    assert ridge.alpha is not None and ridge.val_mae is not None
    x, y = w_test.arrays()
    pred = ridge.predict(x)
    assert pred.min() >= 0 and pred.max() <= 1
    y_train = np.concatenate([y for _, y in w_train.batches(2048)])
    mae_ridge = float(np.abs(pred - y).mean())
    mae_mean = float(np.abs(y_train.mean(axis=0) - y).mean())
    assert mae_ridge < 0.95 * mae_mean, (mae_ridge, mae_mean)
    # save / load round trip; the array fit gives the same model as the streamed one
    path = ridge.save(tmp_path / "ridge.npz")
    back = RidgeBaseline.load(path)
    np.testing.assert_allclose(back.predict(x), pred, atol=1e-5)
    assert back.norm_mean is not None and np.allclose(back.norm_mean, mean) and back.alpha == ridge.alpha
    xa, ya = w_train.arrays()
    xv, yv = w_val.arrays()
    direct = RidgeBaseline(W, w_train.channels, step=8).fit(xa, ya, xv, yv)
    assert direct.alpha == ridge.alpha
    np.testing.assert_allclose(direct.predict(x), pred, atol=1e-4)
    with pytest.raises(RidgeError, match="windows of"):
        back.predict(x[:, :40])
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(RidgeError, match="not a ridge baseline"):
        RidgeBaseline.load(tmp_path / "junk.npz")


# -- per-subject calibration in `imusic simulate`, and added to an existing set ------------------------
def test_simulate_calibrates_each_subject_and_add_calibrations_redoes_it(tmp_path: Path) -> None:
    from imusic.calibration import Calibration
    from imusic.commands.simulate import add_calibrations

    out = tmp_path / "cal"
    proc = run_cli("simulate", "--subjects", "1", "--minutes", "0.2", "--seed", "4", "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    rec = manifest["subjects"][0]["calibration"]
    assert manifest["calibrated"] is True and rec["path"] == "subject_01/calibration.json"
    assert rec["seed"] == manifest["subjects"][0]["subject_seed"] == 4001
    assert rec["steps"] == ["gyro", "accel", "mag", "neutral"]  # the imusic layout has a magnetometer
    assert all(r["ok"] for r in rec["results"].values())
    cal = Calibration.load(out / rec["path"])
    assert len(cal.neutral) == 11 and cal.head_reference == "nasion"

    calibrated = load_dataset(out)
    take = calibrated.takes[0]
    assert take.calibration == str(out / rec["path"])
    uncal = load_dataset(out, calibration=False).takes[0]
    assert uncal.calibration is None
    # with the rig's neutral known, features are valid once each site has levelled its tilt (1 s,
    # whatever the head does) and lin_acc comes from after it; without, after a still rest capture
    level = round(FeatureSettings().level_window_s * 60) + FeatureSettings().lin_acc_delay_frames
    assert not take.valid[:level].any() and take.valid[level:level + 5].all() and not uncal.valid[:5].any()

    # a set made without calibration: add_calibrations writes the same file and the manifest record
    before = json.loads((out / rec["path"]).read_text())
    (out / rec["path"]).unlink()
    del manifest["subjects"][0]["calibration"]
    manifest["calibrated"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert add_calibrations(out) == ["subject_01"]
    after = json.loads((out / rec["path"]).read_text())
    for d in (before, after):
        d.pop("created_unix_s", None)
    assert _strip_times(after) == _strip_times(before)
    again = json.loads((out / "manifest.json").read_text())
    assert again["calibrated"] is True and again["subjects"][0]["calibration"] == rec
    assert add_calibrations(out) == []  # nothing left to do
    # the calibration file changed (its creation time), so the cached features are recomputed
    assert not load_dataset(out).takes[0].from_cache


def _strip_times(d: object) -> object:
    if isinstance(d, dict):
        return {k: _strip_times(v) for k, v in d.items() if not k.endswith("unix_s") and k not in ("utc", "source")}
    if isinstance(d, list):
        return [_strip_times(v) for v in d]
    return d
