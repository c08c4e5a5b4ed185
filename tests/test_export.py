"""Frame export (``imusic.export``): each format written and read back to the same numbers, NaN
where NaN; the CSV layout; bad files and a missing h5py get one clear line."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

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
