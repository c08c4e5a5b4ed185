"""Export aligned frames (``imusic.align.Frame``) to npz, csv or hdf5, and read them back exactly.

Every format holds the same stacked arrays (``FrameArrays``), F frames of n IMUs:

| name | shape, dtype | unit |
|---|---|---|
| ``t_host_s`` | (F,) float64 | s, host timeline (``time.monotonic()`` of the session) |
| ``accel_mps2`` | (F, n, 3) float64 | m/s^2, NaN where not valid |
| ``gyro_rads`` | (F, n, 3) float64 | rad/s, NaN where not valid |
| ``mag_uT`` | (F, n, 3) float64 | uT, NaN where not valid or no magnetometer |
| ``valid`` | (F, n) bool | |
| ``sites`` | (n,) str | layout site per IMU |
| ``node_ids`` | int | as in the frames |
| ``meta`` | JSON object | whatever the exporter was given (rate, source recording, ...) |

- **npz** (``numpy.load(path)`` without pickle): those names as arrays; ``meta`` and ``format`` as
  0-d strings (``meta`` is JSON).
- **csv**: four comment lines (``# imusic frames v1``, ``# sites: <JSON list>``,
  ``# node_ids: <JSON list>``, ``# meta: <JSON object>``), a header row, then one row per frame:
  ``t_host_s``, then per IMU ``<site>.accel_x_mps2 .. <site>.mag_z_uT, <site>.valid``. Floats are
  written in their shortest exact form (they read back bit for bit), NaN as an empty field, valid as
  ``0``/``1``. Pandas reads it with ``pandas.read_csv(path, comment="#")``.
- **hdf5** (needs ``h5py``, the ``imusic[hdf5]`` extra): one dataset per array, ``sites`` as UTF-8
  strings, units in each dataset's ``unit`` attribute; ``format`` and ``meta`` (JSON) as file
  attributes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imusic.errors import UserError

if TYPE_CHECKING:
    from imusic.align import Frame, FrameBlock

FORMAT_TAG = "imusic frames v1"
FORMATS = ("npz", "csv", "hdf5")
SUFFIXES = {".npz": "npz", ".csv": "csv", ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5"}
VECTORS = (("accel_mps2", "mps2"), ("gyro_rads", "rads"), ("mag_uT", "uT"))
UNITS = {"t_host_s": "s", "accel_mps2": "m/s^2", "gyro_rads": "rad/s", "mag_uT": "uT"}
ARRAY_NAMES = ("t_host_s", "accel_mps2", "gyro_rads", "mag_uT", "valid", "sites", "node_ids")


@dataclass
class FrameArrays:
    """F aligned frames of n IMUs as stacked arrays (see the module docstring for shapes and units)."""

    t_host_s: np.ndarray
    accel_mps2: np.ndarray
    gyro_rads: np.ndarray
    mag_uT: np.ndarray
    valid: np.ndarray
    sites: tuple[str, ...]
    node_ids: tuple[int, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.t_host_s = np.asarray(self.t_host_s, dtype=np.float64).reshape(-1)
        n_frames, n_imus = len(self.t_host_s), len(self.sites)
        for name, _ in VECTORS:
            value = np.asarray(getattr(self, name), dtype=np.float64).reshape(n_frames, n_imus, 3)
            setattr(self, name, value)
        self.valid = np.asarray(self.valid, dtype=bool).reshape(n_frames, n_imus)
        self.sites = tuple(str(s) for s in self.sites)
        self.node_ids = tuple(int(i) for i in self.node_ids)

    def __len__(self) -> int:
        return len(self.t_host_s)

    @property
    def n_imus(self) -> int:
        return len(self.sites)

    @classmethod
    def from_frames(cls, frames: Iterable[Frame | FrameBlock | FrameArrays], *, meta: dict[str, Any] | None = None,
                    sites: Iterable[str] | None = None, node_ids: Iterable[int] | None = None) -> FrameArrays:
        """Stack frames, or concatenate blocks of frames (``imusic.align.FrameBlock``, or anything with
        stacked arrays), that share one layout. ``sites``/``node_ids`` give the layout when there may
        be no frames at all; a layout change mid-sequence is a ``UserError``."""
        items = list(frames)
        layout_sites = tuple(sites) if sites is not None else (tuple(items[0].sites) if items else ())
        layout_nodes = tuple(node_ids) if node_ids is not None else (tuple(items[0].node_ids) if items else ())
        n = len(layout_sites)
        parts: dict[str, list[np.ndarray]] = {name: [] for name in ("t_host_s", "accel_mps2", "gyro_rads", "mag_uT", "valid")}
        count = 0
        for item in items:
            if tuple(item.sites) != layout_sites or tuple(item.node_ids) != layout_nodes:
                raise UserError(f"frame {count} has another layout than frame 0 ({len(item.sites)} IMUs against "
                                f"{len(layout_sites)}): export each part separately")
            t = np.asarray(item.t_host_s, dtype=np.float64)
            m = 1 if t.ndim == 0 else len(t)  # a Frame, or a block of m frames
            parts["t_host_s"].append(t.reshape(m))
            for name, _ in VECTORS:
                parts[name].append(np.asarray(getattr(item, name), dtype=np.float64).reshape(m, n, 3))
            parts["valid"].append(np.asarray(item.valid, dtype=bool).reshape(m, n))
            count += m

        def joined(name: str, tail: tuple[int, ...], dtype: Any) -> np.ndarray:
            return np.concatenate(parts[name]) if parts[name] else np.zeros((0, *tail), dtype=dtype)

        return cls(t_host_s=joined("t_host_s", (), np.float64), accel_mps2=joined("accel_mps2", (n, 3), np.float64),
                   gyro_rads=joined("gyro_rads", (n, 3), np.float64), mag_uT=joined("mag_uT", (n, 3), np.float64),
                   valid=joined("valid", (n,), bool), sites=layout_sites, node_ids=layout_nodes, meta=dict(meta or {}))

    def frames(self) -> Iterator[Frame]:
        """The frames again, as ``imusic.align.Frame``."""
        from imusic.align import Frame

        for k in range(len(self)):
            yield Frame(t_host_s=float(self.t_host_s[k]), accel_mps2=self.accel_mps2[k], gyro_rads=self.gyro_rads[k],
                        mag_uT=self.mag_uT[k], valid=self.valid[k], sites=self.sites, node_ids=self.node_ids)


# What the writers take: stacked arrays, or frames and blocks of frames in time order.
FramesLike = FrameArrays | Iterable["Frame | FrameBlock | FrameArrays"]


def as_frame_arrays(frames: FramesLike, meta: dict[str, Any] | None = None) -> FrameArrays:
    """Stacked arrays of ``frames`` (returned as they are when they are ``FrameArrays`` already)."""
    if isinstance(frames, FrameArrays):
        if meta is None:
            return frames
        return FrameArrays(frames.t_host_s, frames.accel_mps2, frames.gyro_rads, frames.mag_uT, frames.valid,
                           frames.sites, frames.node_ids, {**frames.meta, **meta})
    return FrameArrays.from_frames(frames, meta=meta)


def _meta_json(meta: dict[str, Any]) -> str:
    def plain(value: Any) -> Any:  # numpy scalars and arrays as their Python values
        if isinstance(value, (np.generic, np.ndarray)):
            return value.tolist()
        raise TypeError(f"metadata value {value!r} is not JSON-able")

    return json.dumps(meta, default=plain, allow_nan=True)


def _check_target(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise UserError(f"{path} is a directory")
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists: not overwriting it")
    if not path.parent.is_dir():
        raise UserError(f"{path}: no such directory {path.parent}")


def _check_source(path: Path) -> None:
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a frame export")
    if not path.exists():
        raise UserError(f"{path}: no such file")


def format_of(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """The format named by ``fmt``, else by the file suffix (.npz, .csv, .h5/.hdf5)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise UserError(f"unknown export format {fmt!r} (known: {', '.join(FORMATS)})")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(f"cannot tell the export format of {path} from its suffix (use .npz, .csv or .h5)")
    return SUFFIXES[suffix]


def write_frames(path: str | os.PathLike[str], frames: FramesLike, *, fmt: str | None = None,
                 meta: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write frames in ``fmt`` (default: from the suffix); returns the path."""
    writer = {"npz": write_npz, "csv": write_csv, "hdf5": write_hdf5}[format_of(path, fmt)]
    return writer(path, frames, meta=meta, overwrite=overwrite)


def read_frames(path: str | os.PathLike[str], *, fmt: str | None = None) -> FrameArrays:
    """Read an export back (format from ``fmt`` or the suffix)."""
    reader = {"npz": read_npz, "csv": read_csv, "hdf5": read_hdf5}[format_of(path, fmt)]
    return reader(path)


# -- npz -------------------------------------------------------------------------------------------
def write_npz(path: str | os.PathLike[str], frames: FramesLike, *, meta: dict[str, Any] | None = None,
              overwrite: bool = False, compress: bool = False) -> Path:
    """Uncompressed by default: an hour of 60 Hz frames is written in about a second; ``compress``
    trades several times that for roughly half the size."""
    path = Path(path)
    _check_target(path, overwrite)
    a = as_frame_arrays(frames, meta)
    save = np.savez_compressed if compress else np.savez
    # A file object, so numpy does not append ".npz" to a path that lacks it.
    with open(path, "wb") as f:
        save(f, format=np.array(FORMAT_TAG), meta=np.array(_meta_json(a.meta)), t_host_s=a.t_host_s,
             accel_mps2=a.accel_mps2, gyro_rads=a.gyro_rads, mag_uT=a.mag_uT, valid=a.valid,
             sites=np.array(a.sites, dtype=str).reshape(a.n_imus), node_ids=np.array(a.node_ids, dtype=np.int64))
    return path


def read_npz(path: str | os.PathLike[str]) -> FrameArrays:
    path = Path(path)
    _check_source(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if "format" not in z.files or str(z["format"]) != FORMAT_TAG:
                raise UserError(f"{path} is not an imusic frame export (npz without format {FORMAT_TAG!r})")
            missing = [name for name in (*ARRAY_NAMES, "meta") if name not in z.files]
            if missing:
                raise UserError(f"{path}: imusic frame export lacks {', '.join(missing)}")
            return FrameArrays(t_host_s=z["t_host_s"], accel_mps2=z["accel_mps2"], gyro_rads=z["gyro_rads"],
                               mag_uT=z["mag_uT"], valid=z["valid"], sites=tuple(z["sites"].tolist()),
                               node_ids=tuple(z["node_ids"].tolist()), meta=json.loads(str(z["meta"])))
    except UserError:
        raise
    except (OSError, ValueError, EOFError) as exc:  # not a zip, a torn zip, an array that does not fit
        raise UserError(f"{path} is not a readable npz frame export ({exc})") from None


# -- csv -------------------------------------------------------------------------------------------
def csv_columns(sites: tuple[str, ...]) -> list[str]:
    """The header row: ``t_host_s``, then per IMU ``<site>.accel_x_mps2`` .. ``<site>.valid``."""
    columns = ["t_host_s"]
    for prefix in _column_prefixes(sites):
        for name, unit in VECTORS:
            quantity = name.split("_")[0]
            columns += [f"{prefix}.{quantity}_{axis}_{unit}" for axis in "xyz"]
        columns.append(f"{prefix}.valid")
    return columns


def _column_prefixes(sites: tuple[str, ...]) -> list[str]:
    # Names only label columns (sites read back from the "# sites:" line), but must be unique and
    # free of separators.
    cleaned = ["".join(c if c.isprintable() and c not in ',"#' and not c.isspace() else "_" for c in s) for s in sites]
    out = []
    for i, name in enumerate(cleaned):
        if not name or cleaned.count(name) > 1:
            name = f"{name or 'imu'}#{i}"
        out.append(name)
    return out


CSV_PER_IMU = 10  # 9 values and valid


def write_csv(path: str | os.PathLike[str], frames: FramesLike, *, meta: dict[str, Any] | None = None,
              overwrite: bool = False) -> Path:
    path = Path(path)
    _check_target(path, overwrite)
    a = as_frame_arrays(frames, meta)
    n_frames, n = len(a), a.n_imus
    values = np.concatenate([a.accel_mps2, a.gyro_rads, a.mag_uT], axis=2)  # (F, n, 9)
    # numpy's float -> str is the shortest text that reads back to the same float (like repr).
    text = values.astype(str)
    text[np.isnan(values)] = ""
    cells = np.empty((n_frames, 1 + n * CSV_PER_IMU), dtype="U32")  # a float64 needs at most 24 characters
    t_text = a.t_host_s.astype(str)
    t_text[np.isnan(a.t_host_s)] = ""
    cells[:, 0] = t_text
    per_imu = cells[:, 1:].reshape(n_frames, n, CSV_PER_IMU)
    per_imu[:, :, :9] = text
    per_imu[:, :, 9] = np.where(a.valid, "1", "0")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(f"# {FORMAT_TAG}\n")
        f.write(f"# sites: {json.dumps(list(a.sites))}\n")
        f.write(f"# node_ids: {json.dumps(list(a.node_ids))}\n")
        f.write(f"# meta: {_meta_json(a.meta)}\n")
        f.write(",".join(csv_columns(a.sites)) + "\n")
        for row in cells.tolist():
            f.write(",".join(row))
            f.write("\n")
    return path


def read_csv(path: str | os.PathLike[str]) -> FrameArrays:
    path = Path(path)
    _check_source(path)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{path} is not an imusic CSV export (not UTF-8 text)") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not lines or lines[0] != f"# {FORMAT_TAG}":
        raise UserError(f"{path} is not an imusic CSV export (its first line is not '# {FORMAT_TAG}')")
    header: dict[str, Any] = {}
    at = 1
    while at < len(lines) and lines[at].startswith("# "):
        key, sep, value = lines[at][2:].partition(": ")
        if sep:
            try:
                header[key] = json.loads(value)
            except ValueError:
                raise UserError(f"{path}: line {at + 1}: cannot read the {key!r} header") from None
        at += 1
    sites = header.get("sites")
    if not isinstance(sites, list) or not all(isinstance(s, str) for s in sites):
        raise UserError(f"{path}: the '# sites:' line is missing or not a list of names")
    node_ids = header.get("node_ids", [])
    meta = header.get("meta", {})
    if at >= len(lines) or lines[at] != ",".join(csv_columns(tuple(sites))):
        raise UserError(f"{path}: line {at + 1}: the header row does not match the sites ({len(sites)} IMUs)")
    rows = [line.split(",") for line in lines[at + 1:] if line]
    n, width = len(sites), 1 + len(sites) * CSV_PER_IMU
    for k, row in enumerate(rows):
        if len(row) != width:
            raise UserError(f"{path}: frame {k} has {len(row)} fields, expected {width}")
    cells = np.array(rows, dtype=str).reshape(len(rows), width)
    try:
        t_host_s = _floats(cells[:, 0])
        per_imu = cells[:, 1:].reshape(len(rows), n, CSV_PER_IMU)
        values = _floats(per_imu[:, :, :9])
    except ValueError as exc:
        raise UserError(f"{path}: a value is not a number ({exc})") from None
    valid_text = per_imu[:, :, 9]
    if not np.isin(valid_text, ("0", "1")).all():
        raise UserError(f"{path}: a valid field is neither 0 nor 1")
    return FrameArrays(t_host_s=t_host_s, accel_mps2=values[:, :, 0:3], gyro_rads=values[:, :, 3:6],
                       mag_uT=values[:, :, 6:9], valid=valid_text == "1", sites=tuple(sites),
                       node_ids=tuple(node_ids), meta=meta if isinstance(meta, dict) else {})


def _floats(text: np.ndarray) -> np.ndarray:
    return np.where(text == "", "nan", text).astype(np.float64)


# -- hdf5 ------------------------------------------------------------------------------------------
def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise UserError("HDF5 export needs h5py: pip install 'imusic[hdf5]' (or pip install h5py)") from None
    return h5py


def write_hdf5(path: str | os.PathLike[str], frames: FramesLike, *, meta: dict[str, Any] | None = None,
               overwrite: bool = False) -> Path:
    h5py = _h5py()
    path = Path(path)
    _check_target(path, overwrite)
    a = as_frame_arrays(frames, meta)
    with h5py.File(path, "w") as f:
        f.attrs["format"] = FORMAT_TAG
        f.attrs["meta"] = _meta_json(a.meta)
        for name in ("t_host_s", "accel_mps2", "gyro_rads", "mag_uT", "valid"):
            ds = f.create_dataset(name, data=getattr(a, name))
            if name in UNITS:
                ds.attrs["unit"] = UNITS[name]
        f.create_dataset("sites", data=list(a.sites), dtype=h5py.string_dtype("utf-8"), shape=(a.n_imus,))
        f.create_dataset("node_ids", data=np.array(a.node_ids, dtype=np.int64))
    return path


def read_hdf5(path: str | os.PathLike[str]) -> FrameArrays:
    h5py = _h5py()
    path = Path(path)
    _check_source(path)
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise UserError(f"{path} is not an HDF5 file") from None
    with f:
        if f.attrs.get("format") != FORMAT_TAG:
            raise UserError(f"{path} is not an imusic frame export (HDF5 without format {FORMAT_TAG!r})")
        missing = [name for name in ARRAY_NAMES if name not in f]
        if missing:
            raise UserError(f"{path}: imusic frame export lacks {', '.join(missing)}")
        return FrameArrays(t_host_s=f["t_host_s"][()], accel_mps2=f["accel_mps2"][()], gyro_rads=f["gyro_rads"][()],
                           mag_uT=f["mag_uT"][()], valid=f["valid"][()], sites=tuple(f["sites"].asstr()[()].tolist()),
                           node_ids=tuple(f["node_ids"][()].tolist()), meta=json.loads(f.attrs.get("meta", "{}")))


__all__ = ["FORMATS", "FrameArrays", "as_frame_arrays", "csv_columns", "format_of", "read_csv", "read_frames", "read_hdf5", "read_npz",
           "write_csv", "write_frames", "write_hdf5", "write_npz"]
