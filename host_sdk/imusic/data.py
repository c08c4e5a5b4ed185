"""Paired recordings as training data: takes, alignment, subject splits, normalisation, windows.

A *take* is one IMU recording (``rec.imu``) with its ground truth, a Live Link Face CSV of the 52
ARKit blendshapes. ``load_dataset(DIR)`` finds every take under DIR, turns each recording into
features with ``imusic.features.features_of_block`` (the runtime's code path, with the rig's
calibration when one is found), puts the CSV's blendshapes on the feature frames' times, and
caches the features per take under ``DIR/.imusic-cache``. ``split_by_subject`` keeps every subject
in one split, ``norm_stats`` gives the normalisation of the training split, and ``Windows``
serves model inputs (``imusic.modelio.assemble_input``) and targets lazily from the per-take
arrays, so a dataset of hours never exists as a tensor of windows. docs/data.md has the rules.

Two kinds of directory:

- simulated (``imusic simulate``): ``manifest.json`` lists subjects and takes; the truth CSV shares
  the recording's host timeline, so no alignment is needed.
- real: any tree of take directories (a ``rec.imu`` and a Live Link Face CSV each). The subject
  is the take directory's parent's name (or ``manifest.json``'s, if there is one). The CSV's
  clock (the phone's) and the recording's host clock are aligned per take, by the chin tap and by
  correlating the chin IMU's rotation rate with the jaw's blendshape rates (`align_take`).

A ``calibration.json`` in the take directory, else in its parent (the subject's), is applied to
the frames; without one the features are uncalibrated (the extractor captures its own rest).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imusic.arkit import INDEX, N_BLENDSHAPES, REGIONS
from imusic.errors import UserError
from imusic.features import (
    FEATURE_VERSION,
    FEATURES_PER_SITE,
    FeatureSettings,
    feature_spec,
)
from imusic.modelio import assemble_input, input_channels

__all__ = [
    "CACHE_DIR", "Alignment", "AlignmentError", "DataError", "Dataset", "Take", "Windows", "align_signals",
    "describe_dataset", "load_dataset", "norm_stats", "settings_from_dict", "split_by_subject",
    "trained_split",
]

CACHE_DIR = ".imusic-cache"
CACHE_FORMAT = 1
RECORDING_NAME = "rec.imu"
CSV_NAME = "blendshapes.csv"
CALIBRATION_NAME = "calibration.json"
ALIGNMENT_NAME = "alignment.json"  # {"offset_s": S}: an explicit offset for a take, skips the aligner
MANIFEST_NAME = "manifest.json"

# The aligner (defaults; docs/data.md "Alignment" says how they were chosen)
MAX_LAG_S = 30.0  # search this far either side of the prior (both recordings started together)
MIN_PEAK_R = 0.35  # jaw correlation below this: not trusted
MIN_PEAK_RATIO = 1.3  # best correlation over the best one elsewhere (more than EXCLUDE_S away)
EXCLUDE_S = 0.25
TAP_SEARCH_S = 15.0  # the chin tap is looked for in the first seconds of both streams
MIN_TAP_RATIO = 3.0  # a tap stands out this much over the next largest event in its stream
CSV_MAX_GAP_S = 0.1  # frames in a longer hole of the CSV get no label
CHIN_WORDS = ("mentalis", "chin")
# shapes whose rates follow the chin IMU's rotation (the mandible's rotations)
JAW_SHAPES = ("jawOpen", "jawLeft", "jawRight")
# shapes a chin tap shows up in, in the CSV
TAP_SHAPES = REGIONS["jaw"] + REGIONS["mouth"]


class DataError(UserError):
    """A dataset directory or file that cannot be used: one line naming it and the problem."""


class AlignmentError(DataError):
    """A take whose recording and CSV could not be aligned with confidence."""


# ---------------------------------------------------------------------------------------------
# takes and datasets


@dataclass
class Take:
    """One paired recording on the feature frames' clock.

    t_s (T,) host time of each frame; feats (T, n_face, 9) float32 and valid (T, n_face) bool
    from ``features_of_block``; blendshapes (T, 52) float32 in Apple's order, resampled from the
    CSV onto t_s (NaN where the CSV has no value: before it starts, after it ends, in holes);
    label_valid (T,) where it has one. alignment: offset (t_host = t_csv + offset_s), method and
    confidence.
    """

    name: str  # path relative to the dataset directory
    path: Path
    subject: str
    t_s: np.ndarray
    feats: np.ndarray
    valid: np.ndarray
    blendshapes: np.ndarray
    label_valid: np.ndarray
    simulated: bool
    calibration: str | None
    alignment: dict[str, Any]
    from_cache: bool = False

    @property
    def frames(self) -> int:
        return int(self.t_s.shape[0])

    @property
    def duration_s(self) -> float:
        return float(self.t_s[-1] - self.t_s[0]) if self.frames > 1 else 0.0


@dataclass
class Dataset:
    root: Path
    takes: list[Take]
    layout: Any  # imusic.placement.Layout
    feature_spec: dict[str, Any]
    manifest: dict[str, Any] | None = None
    settings: FeatureSettings = field(default_factory=FeatureSettings)

    @property
    def simulated(self) -> bool:
        return bool(self.takes) and all(t.simulated for t in self.takes)

    @property
    def subjects(self) -> list[str]:
        return sorted({t.subject for t in self.takes})

    @property
    def face_sites(self) -> list[str]:
        return list(self.feature_spec["sites"])

    @property
    def rate_hz(self) -> float:
        return float(self.feature_spec["rate_hz"])

    def takes_of(self, subjects: Sequence[str]) -> list[Take]:
        """The takes of these subjects (an unknown id is a one-line error)."""
        known = set(self.subjects)
        unknown = [s for s in subjects if s not in known]
        if unknown:
            raise DataError(f"{self.root}: no subject {', '.join(map(repr, unknown))} (subjects: "
                            f"{', '.join(self.subjects)})")
        wanted = set(subjects)
        return [t for t in self.takes if t.subject in wanted]

    def summary(self) -> list[str]:
        minutes = sum(t.duration_s for t in self.takes) / 60.0
        kind = "SIMULATED" if self.simulated else "recorded"
        lines = [(f"{self.root}: {len(self.takes)} take(s) of {len(self.subjects)} subject(s), {minutes:.1f} min, "
                  f"{kind}, layout {self.layout.name}, feature version {self.feature_spec['feature_version']}")]
        for t in self.takes:
            a = t.alignment
            conf = "" if a.get("peak_r") is None else f", jaw r {a['peak_r']:.2f}, peak ratio {a['peak_ratio']:.2f}"
            lines.append(f"  {t.name}: {t.subject}, {t.duration_s:.0f} s, "
                         f"{'calibrated' if t.calibration else 'uncalibrated'}, offset {a['offset_s']:+.3f} s "
                         f"({a['method']}{conf})")
        return lines


def describe_dataset(ds: Dataset) -> dict[str, Any]:
    """What a model records of the data it saw (``ModelSpec.training["dataset"]``): enough for
    ``trained_split`` to recognise the same dataset later, wherever it has been moved."""
    m = ds.manifest or {}
    return {"path": str(ds.root.resolve()), "format": m.get("format", "takes"), "simulated": ds.simulated,
            "seed": m.get("seed"), "layout": ds.layout.name, "subjects": ds.subjects, "takes": len(ds.takes),
            "minutes": round(sum(t.duration_s for t in ds.takes) / 60.0, 3),
            "calibrated_takes": sum(1 for t in ds.takes if t.calibration)}


def trained_split(training: Mapping[str, Any], ds: Dataset) -> dict[str, list[str]] | None:
    """The split a model was trained with, if ``ds`` is the dataset it was trained on (same
    simulated manifest seed, layout and subjects, or the same directory); else None.
    Expects ``training["dataset"]`` (``describe_dataset``) and ``training["split"]``."""
    seen = training.get("dataset")
    split = training.get("split")
    if not isinstance(seen, Mapping) or not isinstance(split, Mapping):
        return None
    mine = describe_dataset(ds)
    same_sim = (mine["seed"] is not None and seen.get("seed") == mine["seed"]
                and seen.get("format") == mine["format"] and seen.get("layout") == mine["layout"]
                and list(seen.get("subjects") or []) == mine["subjects"])
    same_dir = seen.get("path") == mine["path"] and list(seen.get("subjects") or []) == mine["subjects"]
    if not (same_sim or same_dir):
        return None
    return {k: [str(s) for s in split.get(k, [])] for k in ("train", "val", "test")}


def settings_from_dict(d: Mapping[str, Any] | None) -> FeatureSettings:
    """``FeatureSettings`` back from ``to_dict()`` (a model's feature spec); unknown keys are an error."""
    from imusic.orientation import OrientationSettings

    if not d:
        return FeatureSettings()
    kw = dict(d)
    orient = kw.pop("orientation", None)
    try:
        if orient is not None:
            kw["orientation"] = OrientationSettings(**orient)
        return FeatureSettings(**kw)
    except TypeError as exc:
        raise DataError(f"feature settings this imusic does not know ({exc})") from None


# ---------------------------------------------------------------------------------------------
# finding takes


@dataclass
class _TakeSpec:
    name: str
    path: Path
    subject: str
    recording: Path
    csv: Path
    simulated: bool
    calibration: Path | None


def _csv_of(take_dir: Path) -> Path | None:
    """The take's Live Link Face CSV: blendshapes.csv, else the one CSV whose header has Timecode
    and blendshape columns (Live Link Face also writes other CSVs beside it), else the only CSV."""
    preferred = take_dir / CSV_NAME
    if preferred.is_file():
        return preferred
    csvs = sorted(p for p in take_dir.glob("*.csv") if p.is_file())
    if len(csvs) <= 1:
        return csvs[0] if csvs else None
    shaped = []
    for p in csvs:
        try:
            with p.open(encoding="utf-8-sig", errors="replace") as fh:
                head = fh.readline().lower()
        except OSError:
            continue
        if "timecode" in head and "eyeblinkleft" in head and "jawopen" in head:
            shaped.append(p)
    if len(shaped) == 1:
        return shaped[0]
    names = ", ".join(p.name for p in (shaped or csvs))
    raise DataError(f"{take_dir}: several Live Link Face CSVs ({names}): keep one per take or name it {CSV_NAME}")


def _recording_of(take_dir: Path) -> Path | None:
    preferred = take_dir / RECORDING_NAME
    if preferred.is_file():
        return preferred
    recs = sorted(p for p in take_dir.glob("*.imu") if p.is_file())
    if len(recs) > 1:
        raise DataError(f"{take_dir}: several recordings ({', '.join(p.name for p in recs)}): one .imu per take")
    return recs[0] if recs else None


def _calibration_for(take_dir: Path) -> Path | None:
    """calibration.json of the take, else of its subject (the take directory's parent)."""
    for d in (take_dir, take_dir.parent):
        p = d / CALIBRATION_NAME
        if p.is_file():
            return p
    return None


def _read_manifest(root: Path) -> dict[str, Any] | None:
    p = root / MANIFEST_NAME
    if not p.is_file():
        return None
    try:
        m = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{p}: unreadable manifest ({exc})") from None
    if not isinstance(m, dict) or not isinstance(m.get("subjects"), list):
        raise DataError(f"{p}: not a dataset manifest (no \"subjects\" list)")
    return m


def _is_simulated_take(take_dir: Path) -> bool:
    p = take_dir / "truth.json"
    if not p.is_file():
        return False
    try:
        return bool(json.loads(p.read_text()).get("simulated"))
    except (OSError, ValueError):
        return False


def _find_takes(root: Path, manifest: dict[str, Any] | None) -> list[_TakeSpec]:
    specs: list[_TakeSpec] = []
    if manifest is not None:
        sim = bool(manifest.get("simulated", False))
        for entry in manifest["subjects"]:
            try:
                sid = str(entry["id"])
                takes = entry["takes"]
                cal_rel = entry.get("calibration", {}).get("path") if isinstance(entry.get("calibration"), dict) else None
            except (KeyError, TypeError):
                raise DataError(f"{root / MANIFEST_NAME}: a subject entry without \"id\" and \"takes\"") from None
            for t in takes:
                rel = str(t["path"] if isinstance(t, dict) else t)
                d = root / rel
                if not d.is_dir():
                    raise DataError(f"{root / MANIFEST_NAME}: take {rel} is not there")
                specs.append(_spec(root, d, sid, sim or _is_simulated_take(d),
                                   (root / cal_rel) if cal_rel else None))
        return specs
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if not any(f.endswith((".imu", ".csv")) for f in filenames):
            continue
        d = Path(dirpath)
        subject = d.parent.name if d.resolve() != root.resolve() else root.resolve().name
        specs.append(_spec(root, d, subject, _is_simulated_take(d), None))
    return specs


def _spec(root: Path, d: Path, subject: str, simulated: bool, calibration: Path | None) -> _TakeSpec:
    rec = _recording_of(d)
    csv = _csv_of(d)
    if rec is None:
        raise DataError(f"{d}: no recording ({RECORDING_NAME}) beside the CSV")
    if csv is None:
        raise DataError(f"{d}: no Live Link Face CSV beside {rec.name}")
    if calibration is not None and not calibration.is_file():
        raise DataError(f"{calibration}: no such calibration file (named in the manifest)")
    cal = calibration if calibration is not None else _calibration_for(d)
    name = str(d.relative_to(root)) if d != root else "."
    return _TakeSpec(name, d, subject, rec, csv, simulated, cal)


def _resolve_layout(layout: Any, manifest: dict[str, Any] | None, specs: list[_TakeSpec]) -> Any:
    from imusic.placement import Layout, list_layouts, load_layout

    if isinstance(layout, Layout):
        return layout
    if layout is not None:
        return load_layout(str(layout))
    if manifest is not None and manifest.get("layout"):
        return load_layout(str(manifest["layout"]))
    from imusic.calibration.steps import recording_messages

    hellos, _ = recording_messages(specs[0].recording)
    sites = {imu.site for h in hellos.values() for imu in h.imus}
    for name in list_layouts():
        lay = load_layout(name)
        if set(lay.sites) == sites:
            return lay
    raise DataError(f"{specs[0].recording}: its sites ({', '.join(sorted(sites))}) are no shipped layout's: "
                    "name the layout (layout=NAME or a .yaml)")


# ---------------------------------------------------------------------------------------------
# features and the cache


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _layout_fingerprint(layout: Any) -> str:
    """Names, wiring order and geometry: a layout file edited under the same name changes it."""
    parts: list[Any] = [layout.name, layout.head_reference, list(layout.sites)]
    for s in layout.sites:
        site = layout.site(s)
        parts.append([np.round(np.asarray(site.position_mm, float), 6).tolist(),
                      np.round(np.asarray(site.normal, float), 9).tolist()])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def cache_key(spec: dict[str, Any], layout_fp: str, calibration_sha: str | None, recording_sha: str) -> str:
    material = {"cache_format": CACHE_FORMAT, "feature_version": FEATURE_VERSION, "feature_spec": spec,
                "layout": layout_fp, "calibration": calibration_sha, "recording": recording_sha}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:20]


def _load_block(path: Path, rate_hz: float) -> Any:
    from imusic.align import FrameBlock
    from imusic.replay import replay_blocks

    blocks = replay_blocks(path, rate_hz).blocks
    if not blocks or sum(len(b) for b in blocks) == 0:
        raise DataError(f"{path}: no frames in the recording")
    first = blocks[0]
    return FrameBlock(np.concatenate([b.t_host_s for b in blocks]), np.concatenate([b.accel_mps2 for b in blocks]),
                      np.concatenate([b.gyro_rads for b in blocks]), np.concatenate([b.mag_uT for b in blocks]),
                      np.concatenate([b.valid for b in blocks]), first.sites, first.node_ids)


def chin_site(face_sites: Sequence[str]) -> int | None:
    """Index of the chin IMU among the face sites (by name), or None."""
    for i, s in enumerate(face_sites):
        if any(w in s.lower() for w in CHIN_WORDS):
            return i
    return None


def _moving_median(x: np.ndarray, frames: int) -> np.ndarray:
    from scipy.ndimage import median_filter

    return median_filter(x, size=(frames,) + (1,) * (x.ndim - 1), mode="nearest")


def tap_signal(block: Any, layout: Any) -> np.ndarray:
    """(T,) per frame: how much sharper the chin's specific force moves than the head
    reference's (each less its 0.25 s moving median, magnitudes subtracted, floored at 0). A tap
    on the chin IMU is a spike here; head motion and footsteps move both and cancel."""
    sites = list(block.sites)
    face = list(layout.face_sites)
    chin = chin_site(face)
    cand = [face[chin]] if chin is not None else face
    t = np.asarray(block.t_host_s, float)
    rate_hz = 1.0 / float(np.median(np.diff(t))) if len(t) > 1 else 60.0
    w = max(3, round(0.25 * rate_hz) | 1)
    a = np.nan_to_num(np.asarray(block.accel_mps2, float))

    def hp(i: int) -> np.ndarray:
        x = a[:, i]
        return np.linalg.norm(x - _moving_median(x, w), axis=1)

    ref = hp(sites.index(layout.head_reference)) if layout.head_reference in sites else 0.0
    out = np.zeros(len(block), dtype=np.float64)
    for s in cand:
        if s in sites:
            out = np.maximum(out, hp(sites.index(s)) - ref)
    return np.maximum(out, 0.0).astype(np.float32)


def _compute_take_features(recording: Path, layout: Any, calibration: Path | None, rate_hz: float,
                           settings: FeatureSettings) -> dict[str, np.ndarray]:
    from imusic.features import features_of_block

    cal = None
    if calibration is not None:
        from imusic.calibration import Calibration

        cal = Calibration.load(calibration)
        cal.check_recording(recording)
    block = _load_block(recording, rate_hz)
    missing = [s for s in layout.sites if s not in block.sites]
    if missing:
        raise DataError(f"{recording}: no IMU at {', '.join(missing)} (layout {layout.name} needs them)")
    feats, valid = features_of_block(block, layout, cal, rate_hz, settings)
    return {"t_s": np.asarray(block.t_host_s, np.float64), "feats": feats.astype(np.float32),
            "valid": valid.astype(bool), "tap": tap_signal(block, layout)}


def _cache_file(cache_dir: Path, take_name: str, key: str) -> Path:
    stem = take_name.replace(os.sep, "__").replace("/", "__") or "take"
    return cache_dir / f"{stem}.{key}.npz"


def _read_cache(path: Path, key: str) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            return {k: z[k] for k in ("t_s", "feats", "valid", "tap")}
    except (OSError, KeyError, ValueError):
        return None  # unreadable or foreign: recompute (and overwrite)


def _write_cache(path: Path, key: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            payload: dict[str, Any] = {"key": np.array(key), "meta": np.array(json.dumps(meta)), **arrays}
            np.savez(fh, **payload)
        os.replace(tmp, path)
    except OSError:
        return False  # a read-only dataset still loads, just without a cache
    stem = path.name.split(".")[0]
    for old in path.parent.glob(f"{stem}.*.npz"):
        if old != path and old.name.split(".")[0] == stem:
            old.unlink(missing_ok=True)
    return True


def _take_features(spec: _TakeSpec, layout: Any, layout_fp: str, fspec: dict[str, Any],
                   rate_hz: float, settings: FeatureSettings, cache_dir: Path | None,
                   use_calibration: bool) -> tuple[dict[str, np.ndarray], bool]:
    cal = spec.calibration if use_calibration else None
    key = cache_key(fspec, layout_fp, _sha256_file(cal) if cal else None, _sha256_file(spec.recording))
    if cache_dir is not None:
        path = _cache_file(cache_dir, spec.name, key)
        if path.is_file():
            hit = _read_cache(path, key)
            if hit is not None:
                return hit, True
    arrays = _compute_take_features(spec.recording, layout, cal, rate_hz, settings)
    if cache_dir is not None:
        _write_cache(_cache_file(cache_dir, spec.name, key), key, arrays,
                     {"take": spec.name, "feature_version": FEATURE_VERSION, "calibration": str(cal) if cal else None,
                      "layout": layout.name})
    return arrays, False


def _features_job(args: tuple[Any, ...]) -> tuple[dict[str, np.ndarray], bool]:
    spec, layout_path, fspec, rate_hz, settings_dict, cache_dir, use_cal = args
    from imusic.placement import load_layout

    layout = load_layout(layout_path)
    return _take_features(spec, layout, _layout_fingerprint(layout), fspec, rate_hz,
                          settings_from_dict(settings_dict), cache_dir, use_cal)


# ---------------------------------------------------------------------------------------------
# labels and alignment


def _read_labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from imusic.livelink import read_csv

    t, w, _ = read_csv(path)
    order = np.argsort(t, kind="stable")
    t, w = t[order], w[order]
    keep = np.append(np.diff(t) > 1e-9, True)  # repeated timecodes: the last row wins
    return t[keep], w[keep].astype(np.float32)


def resample_labels(t_frames_s: np.ndarray, t_csv_s: np.ndarray, weights: np.ndarray,
                    offset_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(T, 52) blendshapes at the frame times (linear between CSV rows; t_host = t_csv + offset_s)
    and (T,) whether each frame has one (inside the CSV, not in a hole longer than CSV_MAX_GAP_S)."""
    t = np.asarray(t_frames_s, float) - offset_s
    n = len(t_csv_s)
    out = np.full((len(t), N_BLENDSHAPES), np.nan, dtype=np.float32)
    if n < 2:
        return out, np.zeros(len(t), bool)
    j = np.clip(np.searchsorted(t_csv_s, t, side="right") - 1, 0, n - 2)
    t0, t1 = t_csv_s[j], t_csv_s[j + 1]
    ok = (t >= t_csv_s[0]) & (t <= t_csv_s[-1]) & (t1 - t0 <= CSV_MAX_GAP_S)
    a = np.clip((t - t0) / np.maximum(t1 - t0, 1e-12), 0.0, 1.0)[:, None]
    vals = (1.0 - a) * weights[j] + a * weights[j + 1]
    out[ok] = vals[ok].astype(np.float32)
    return out, ok


@dataclass
class Alignment:
    """How a take's CSV was put on the recording's clock: t_host = t_csv + offset_s."""

    offset_s: float
    method: str  # "simulated" | "given" | "tap" | "xcorr" | "tap+xcorr" | "none" (refused)
    ok: bool
    peak_r: float | None = None  # jaw correlation at the chosen lag (0-1)
    peak_ratio: float | None = None  # over the best correlation elsewhere
    tap: dict[str, Any] | None = None  # {"imu_t_s", "csv_t_s", "ratio_imu", "ratio_csv", "offset_s"}
    xcorr_offset_s: float | None = None
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        def r(x: float | None, nd: int = 4) -> float | None:
            return None if x is None or not np.isfinite(x) else round(float(x), nd)

        return {"offset_s": r(self.offset_s, 5), "method": self.method, "ok": self.ok, "peak_r": r(self.peak_r),
                "peak_ratio": r(self.peak_ratio), "tap": self.tap, "xcorr_offset_s": r(self.xcorr_offset_s, 5),
                "reason": self.reason}


def _grid(t_s: np.ndarray, dt: float) -> tuple[np.ndarray, int]:
    """Index of each time on a uniform grid from its first time, and the grid's length."""
    k = np.rint((t_s - t_s[0]) / dt).astype(np.int64)
    return k, int(k[-1]) + 1 if len(k) else 0


def _xcorr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """c[m + len(b) - 1] = sum_i a[i] b[i - m] for every lag m (FFT)."""
    from scipy.signal import fftconvolve

    return fftconvolve(a, b[::-1], mode="full")


def _peak_ratio(values: np.ndarray, best: int, exclude: int) -> float:
    others = np.concatenate([values[:max(0, best - exclude)], values[best + exclude + 1:]])
    others = others[np.isfinite(others)]
    if others.size == 0:
        return float("inf")
    second = float(others.max())
    return float(values[best] / second) if second > 0 else float("inf")


def _clip_tails(v: np.ndarray, ok: np.ndarray, q: float = 99.5) -> np.ndarray:
    lim = np.percentile(np.abs(v[ok]), q, axis=0)
    return np.clip(v, -lim, lim)


def _events(signal: np.ndarray, t_s: np.ndarray, search_s: float, exclude_s: float) -> tuple[float, float] | None:
    """(time of the largest value within the first search_s, its ratio over the largest value
    more than exclude_s away from it) or None."""
    sel = np.flatnonzero((t_s - t_s[0]) <= search_s)
    if sel.size < 3:
        return None
    s = np.nan_to_num(signal[sel].astype(float))
    i = int(np.argmax(s))
    if s[i] <= 0:
        return None
    far = np.abs(t_s[sel] - t_s[sel][i]) > exclude_s
    second = float(s[far].max()) if far.any() else 0.0
    return float(t_s[sel][i]), (float(s[i] / second) if second > 0 else float("inf"))


def align_signals(t_frames_s: np.ndarray, chin_rate_rads: np.ndarray, chin_valid: np.ndarray,
                  tap: np.ndarray | None, t_csv_s: np.ndarray, weights: np.ndarray, *,
                  prior_offset_s: float | None = None, max_lag_s: float = MAX_LAG_S,
                  min_peak_r: float = MIN_PEAK_R, min_peak_ratio: float = MIN_PEAK_RATIO,
                  min_tap_ratio: float = MIN_TAP_RATIO) -> Alignment:
    """Offset between a recording and its CSV (t_host = t_csv + offset_s); see docs/data.md.

    t_frames_s (T,), chin_rate_rads (T, c) the chin IMU's rotation rate features (or several
    sites'), chin_valid (T,), tap (T,) ``tap_signal`` or None; t_csv_s (K,), weights (K, 52).
    prior_offset_s: where to centre the search (default: the two started together).

    (a) tap: the largest chin spike in the first TAP_SEARCH_S of the recording and the sharpest
        jaw/mouth change in the first TAP_SEARCH_S of the CSV, each standing out >= min_tap_ratio
        over the next event in its stream.
    (b) xcorr: over lags within +-max_lag_s of the prior (+-1 s of the tap when there is one), the
        share of the jaw shapes' rate variance a linear map of the chin rates explains (R^2, per
        lag over the overlap), peak refined to a fraction of a frame; confident when sqrt(R^2)
        >= min_peak_r and the peak stands min_peak_ratio (in r) over the best lag more than
        EXCLUDE_S away.
    Both agree: "tap+xcorr" with the xcorr offset; only one confident: that one; neither: refused
    (``ok`` False and ``reason``).
    """
    t = np.asarray(t_frames_s, float)
    tc = np.asarray(t_csv_s, float)
    if len(t) < 10 or len(tc) < 10:
        return Alignment(float("nan"), "none", False, reason="too few frames to align")
    dt = float(np.median(np.diff(t)))
    # (a) the chin tap
    tap_info: dict[str, Any] | None = None
    if tap is not None:
        ev_imu = _events(np.asarray(tap, float), t, TAP_SEARCH_S, 0.5)
        d = np.abs(np.diff(weights[:, [INDEX[n] for n in TAP_SHAPES]], axis=0)).sum(axis=1)
        ev_csv = _events(np.concatenate([[0.0], d]), tc, TAP_SEARCH_S, 0.5)  # a change shows at its new row
        if ev_imu is not None and ev_csv is not None:
            tap_info = {"imu_t_s": round(ev_imu[0], 4), "csv_t_s": round(ev_csv[0], 4),
                        "ratio_imu": round(min(ev_imu[1], 1e6), 3), "ratio_csv": round(min(ev_csv[1], 1e6), 3),
                        "offset_s": round(ev_imu[0] - ev_csv[0], 5)}
    tap_ok = tap_info is not None and tap_info["ratio_imu"] >= min_tap_ratio and tap_info["ratio_csv"] >= min_tap_ratio

    # (b) jaw correlation. x: chin rates on the frame grid; y: jaw shape rates on the CSV's own grid
    kx, nx = _grid(t, dt)
    ky, ny = _grid(tc, dt)
    x = np.zeros((nx, chin_rate_rads.shape[1]))
    mx = np.zeros(nx)
    okx = np.asarray(chin_valid, bool) & np.isfinite(chin_rate_rads).all(axis=1)
    x[kx[okx]] = chin_rate_rads[okx]
    mx[kx[okx]] = 1.0
    yv = weights[:, [INDEX[n] for n in JAW_SHAPES]].astype(float)
    yg = np.full((ny, yv.shape[1]), np.nan)
    yg[ky] = yv
    y = np.gradient(yg, dt, axis=0)  # NaN next to holes
    my = np.isfinite(y).all(axis=1).astype(float)
    y = np.where(my[:, None] > 0, y, 0.0)
    peak_r = ratio = xc_off = None
    if mx.sum() >= 2 / dt and my.sum() >= 2 / dt:
        # a tap, a tracking glitch or a knock is a few huge values that would own the variance:
        # clip each channel at its 99.5th percentile of |value|
        x = _clip_tails(x, mx > 0)
        y = _clip_tails(y, my > 0)
        xm = x[mx > 0]
        x = np.where(mx[:, None] > 0, x - xm.mean(axis=0), 0.0)
        sxx = np.cov(xm.T).reshape(x.shape[1], x.shape[1]) + 1e-12 * np.eye(x.shape[1])
        sxx_inv = np.linalg.inv(sxx)
        n = _xcorr(mx, my)
        sx = np.stack([_xcorr(x[:, j], my) for j in range(x.shape[1])], axis=1)
        sy = np.stack([_xcorr(mx, y[:, k]) for k in range(y.shape[1])], axis=1)
        syy = np.stack([_xcorr(mx, y[:, k] ** 2) for k in range(y.shape[1])], axis=1)
        sxy = np.stack([np.stack([_xcorr(x[:, j], y[:, k]) for k in range(y.shape[1])], axis=1)
                        for j in range(x.shape[1])], axis=1)  # (lags, cx, cy)
        lags = np.arange(-(ny - 1), nx)  # x index i against y index i - lag
        min_overlap = min(10.0 / dt, 0.5 * min(mx.sum(), my.sum()))
        nn = np.maximum(n, 1.0)
        cov = sxy / nn[:, None, None] - sx[:, :, None] * sy[:, None, :] / nn[:, None, None] ** 2
        var_y = (syy / nn[:, None] - (sy / nn[:, None]) ** 2).sum(axis=1)
        expl = np.einsum("lik,ij,ljk->l", cov, sxx_inv, cov)
        r2 = np.where((n >= min_overlap) & (var_y > 0), expl / np.maximum(var_y, 1e-30), np.nan)
        # offset of lag m: t_host = t_csv + (t[0] - tc[0]) + m dt
        base = float(t[0] - tc[0])
        centre = prior_offset_s if prior_offset_s is not None else base
        half = max_lag_s
        if tap_ok and tap_info is not None:
            centre, half = float(tap_info["offset_s"]), 1.0
        m_off = base + lags * dt
        r2 = np.where(np.abs(m_off - centre) <= half, r2, np.nan)
        if np.isfinite(r2).any():
            best = int(np.nanargmax(r2))
            frac = 0.0
            if 0 < best < len(r2) - 1 and np.isfinite(r2[best - 1]) and np.isfinite(r2[best + 1]):
                a, b, c = r2[best - 1], r2[best], r2[best + 1]
                den = a - 2 * b + c
                frac = float(np.clip(0.5 * (a - c) / den, -0.5, 0.5)) if den < 0 else 0.0
            xc_off = base + (lags[best] + frac) * dt
            peak_r = float(np.sqrt(max(r2[best], 0.0)))
            rr = np.sqrt(np.clip(np.nan_to_num(r2, nan=0.0), 0.0, None))
            ratio = _peak_ratio(rr, best, round(EXCLUDE_S / dt))
    xc_ok = peak_r is not None and ratio is not None and peak_r >= min_peak_r and ratio >= min_peak_ratio
    if xc_ok and xc_off is not None:
        method = "tap+xcorr" if tap_ok else "xcorr"
        return Alignment(xc_off, method, True, peak_r, ratio, tap_info, xc_off)
    if tap_ok and tap_info is not None:
        return Alignment(float(tap_info["offset_s"]), "tap", True, peak_r, ratio, tap_info, xc_off)
    why = (f"jaw correlation {peak_r:.2f} (needs {min_peak_r:g}), peak ratio {ratio:.2f} (needs {min_peak_ratio:g})"
           if peak_r is not None and ratio is not None else "no overlap of valid chin frames and CSV rows")
    tap_why = ("no chin tap found" if tap_info is None else
               f"chin tap not clear (ratios {tap_info['ratio_imu']:.1f} IMU, {tap_info['ratio_csv']:.1f} CSV; "
               f"needs {min_tap_ratio:g})")
    return Alignment(float("nan"), "none", False, peak_r, ratio, tap_info, xc_off, reason=f"{why}; {tap_why}")


def _explicit_offset(spec: _TakeSpec, offsets: Mapping[str, float] | None) -> float | None:
    if offsets:
        for key in (spec.name, str(spec.path), spec.path.name):
            if key in offsets:
                return float(offsets[key])
    p = spec.path / ALIGNMENT_NAME
    if p.is_file():
        try:
            v = float(json.loads(p.read_text())["offset_s"])
        except (OSError, ValueError, KeyError, TypeError):
            raise DataError(f"{p}: expected {{\"offset_s\": seconds}}") from None
        if not np.isfinite(v):
            raise DataError(f"{p}: offset_s must be finite")
        return v
    return None


def align_take(spec_name: str, t_s: np.ndarray, feats: np.ndarray, valid: np.ndarray, tap: np.ndarray | None,
               t_csv: np.ndarray, weights: np.ndarray, face_sites: Sequence[str],
               max_lag_s: float = MAX_LAG_S) -> Alignment:
    """`align_signals` on a take's features: the chin IMU's rel_rate (all face sites' without one)."""
    chin = chin_site(face_sites)
    if chin is not None:
        rate = feats[:, chin, 3:6].astype(float)
        ok = np.asarray(valid[:, chin], bool)
    else:
        rate = feats[:, :, 3:6].reshape(len(t_s), -1).astype(float)
        ok = np.asarray(valid.all(axis=1), bool)
    return align_signals(t_s, rate, ok, tap, t_csv, weights, max_lag_s=max_lag_s)


# ---------------------------------------------------------------------------------------------
# loading


def load_dataset(path: str | Path, *, layout: Any = None, cache: bool = True, cache_dir: str | Path | None = None,
                 settings: FeatureSettings | None = None, rate_hz: float = 60.0, calibration: bool = True,
                 offsets: Mapping[str, float] | None = None, max_lag_s: float = MAX_LAG_S, workers: int = 1,
                 log: Callable[[str], None] | None = None) -> Dataset:
    """Every take under ``path`` (module docstring), features computed or read from the cache.

    layout: name, .yaml or ``Layout`` (default: the manifest's, else the shipped layout whose
        sites the first recording has). cache / cache_dir: keep per-take features in
        ``path/.imusic-cache`` (or cache_dir); a cache file is used only when its key (feature
        version, feature spec with settings, layout geometry, calibration file hash, recording
        hash) matches. calibration: False ignores calibration.json files. offsets: explicit
        offsets by take name (its path relative to ``path``), overriding the aligner (as an
        ``alignment.json`` {"offset_s": S} in the take's directory does). workers: processes
        for the feature computation of uncached takes.
    Bad input raises ``DataError`` (one line); a take that cannot be aligned, ``AlignmentError``.
    """
    root = Path(path)
    if not root.exists():
        raise DataError(f"{root}: no such directory")
    if not root.is_dir():
        raise DataError(f"{root} is not a directory of takes")
    manifest = _read_manifest(root)
    specs = _find_takes(root, manifest)
    if not specs:
        raise DataError(f"{root}: no takes (a directory with {RECORDING_NAME} and a Live Link Face CSV) under it")
    lay = _resolve_layout(layout, manifest, specs)
    fs = settings if settings is not None else FeatureSettings()
    fspec = feature_spec(lay, rate_hz, fs)
    cdir = (Path(cache_dir) if cache_dir is not None else root / CACHE_DIR) if cache else None
    layout_fp = _layout_fingerprint(lay)
    say = log or (lambda _msg: None)

    # the cheap checks of every take first, so a bad file fails before minutes of features
    labels_of = [_read_labels(s.csv) for s in specs]
    given_of = [_explicit_offset(s, offsets) for s in specs]
    results: list[tuple[dict[str, np.ndarray], bool]] = []
    if workers > 1 and len(specs) > 1:
        from concurrent.futures import ProcessPoolExecutor

        jobs = [(s, str(lay.path), fspec, rate_hz, fs.to_dict(), cdir, calibration) for s in specs]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for s, res in zip(specs, pool.map(_features_job, jobs)):
                results.append(res)
                say(f"{s.name}: {'cached' if res[1] else 'features'} ({len(res[0]['t_s'])} frames)")
    else:
        for s in specs:
            res = _take_features(s, lay, layout_fp, fspec, rate_hz, fs, cdir, calibration)
            results.append(res)
            say(f"{s.name}: {'cached' if res[1] else 'features'} ({len(res[0]['t_s'])} frames)")

    takes: list[Take] = []
    for s, (arrays, hit), (t_csv, w), given in zip(specs, results, labels_of, given_of):
        if given is not None:
            al = Alignment(given, "given", True)
        elif s.simulated:
            al = Alignment(0.0, "simulated", True, reason="simulated: the CSV shares the recording's host timeline")
        else:
            al = align_take(s.name, arrays["t_s"], arrays["feats"], arrays["valid"], arrays["tap"], t_csv, w,
                            list(lay.face_sites), max_lag_s)
            if not al.ok:
                raise AlignmentError(
                    f"{s.path}: cannot align {s.recording.name} with {s.csv.name} ({al.reason}): give the offset "
                    f"(t_host = t_csv + S) as {{\"offset_s\": S}} in {s.path / ALIGNMENT_NAME}")
        labels, ok = resample_labels(arrays["t_s"], t_csv, w, al.offset_s)
        if not ok.any():
            raise DataError(f"{s.path}: the CSV does not overlap the recording (offset {al.offset_s:+.3f} s)")
        takes.append(Take(s.name, s.path, s.subject, arrays["t_s"], arrays["feats"], arrays["valid"], labels, ok,
                          s.simulated, str(s.calibration) if (s.calibration and calibration) else None,
                          al.to_json(), hit))
    return Dataset(root, takes, lay, fspec, manifest, fs)


# ---------------------------------------------------------------------------------------------
# splits and normalisation


def split_by_subject(ds: Dataset | Sequence[str], *, val_fraction: float = 0.15, test_fraction: float = 0.15,
                     n_val: int | None = None, n_test: int | None = None, seed: int = 0) -> dict[str, list[str]]:
    """{"train", "val", "test"}: subject ids, each subject in exactly one (seeded, deterministic
    for a seed and a set of subjects). Default sizes: round(fraction * subjects), at least one
    test subject from 2 subjects and one validation subject from 3; the rest train."""
    subjects = sorted(set(ds.subjects if isinstance(ds, Dataset) else [str(s) for s in ds]))
    n = len(subjects)
    if n < 2:
        raise DataError(f"a split by subject needs at least 2 subjects, there {'is' if n == 1 else 'are'} {n}")
    k_test = n_test if n_test is not None else max(1, round(test_fraction * n))
    k_val = n_val if n_val is not None else (max(1, round(val_fraction * n)) if n >= 3 else 0)
    if k_test < 0 or k_val < 0 or k_test + k_val > n - 1:
        raise DataError(f"cannot split {n} subjects into {k_test} test and {k_val} validation and still train on one")
    order = np.random.default_rng(seed).permutation(n)
    test = sorted(subjects[i] for i in order[:k_test])
    val = sorted(subjects[i] for i in order[k_test:k_test + k_val])
    train = sorted(subjects[i] for i in order[k_test + k_val:])
    return {"train": train, "val": val, "test": test}


def norm_stats(takes: Sequence[Take], *, min_std: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) per feature column (n_face * 9, site-major) over the valid, finite frames of
    ``takes``; std floored at ``min_std`` (units of the column); a column never valid gets 0, 1."""
    if not takes:
        raise DataError("no takes to compute normalisation statistics from")
    n_cols = takes[0].feats.shape[1] * FEATURES_PER_SITE
    s1 = np.zeros(n_cols)
    s2 = np.zeros(n_cols)
    cnt = np.zeros(n_cols)
    for t in takes:
        f = t.feats.reshape(len(t.feats), n_cols).astype(np.float64)
        ok = np.repeat(t.valid, FEATURES_PER_SITE, axis=1) & np.isfinite(f)
        f = np.where(ok, f, 0.0)
        s1 += f.sum(axis=0)
        s2 += (f * f).sum(axis=0)
        cnt += ok.sum(axis=0)
    have = cnt > 0
    mean = np.where(have, s1 / np.maximum(cnt, 1), 0.0)
    var = np.where(have, s2 / np.maximum(cnt, 1) - mean ** 2, 1.0)
    std = np.maximum(np.sqrt(np.maximum(var, 0.0)), min_std)
    return mean.astype(np.float32), std.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# windows


class Windows:
    """Model inputs and targets over takes, made on demand (never all at once).

    Window i ends at frame e of take k: input ``assemble_input`` of frames e-W+1..e (newest
    last), target the blendshapes at frame e. Windows that would need frames before a take's
    start are skipped, as are windows whose newest frame has no label, or (require_valid) no
    valid face site. stride: every stride-th end frame.
    """

    def __init__(self, takes: Sequence[Take], window_frames: int, mean: np.ndarray, std: np.ndarray,
                 stride: int = 1, *, require_valid: bool = True) -> None:
        if window_frames < 1 or stride < 1:
            raise ValueError("window_frames and stride must be >= 1")
        self.takes = list(takes)
        self.window_frames = int(window_frames)
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.stride = int(stride)
        n_sites = {t.feats.shape[1] for t in self.takes}
        if len(n_sites) > 1:
            raise ValueError(f"takes with different numbers of face sites: {sorted(n_sites)}")
        self.n_sites = n_sites.pop() if n_sites else len(self.mean) // FEATURES_PER_SITE
        if len(self.mean) != self.n_sites * FEATURES_PER_SITE or len(self.std) != len(self.mean):
            raise ValueError(f"normalisation has {len(self.mean)} columns, the takes {self.n_sites * FEATURES_PER_SITE}")
        ends: list[np.ndarray] = []
        for t in self.takes:
            e = np.arange(self.window_frames - 1, t.frames, self.stride, dtype=np.int64)
            keep = t.label_valid[e]
            if require_valid:
                keep &= t.valid[e].any(axis=1)
            ends.append(e[keep])
        counts = np.array([len(e) for e in ends], dtype=np.int64)
        self._take = np.repeat(np.arange(len(self.takes), dtype=np.int32), counts)
        self._end = np.concatenate(ends) if ends else np.zeros(0, np.int64)
        self._rel = np.arange(-self.window_frames + 1, 1, dtype=np.int64)

    def __len__(self) -> int:
        return int(self._end.shape[0])

    @property
    def channels(self) -> int:
        return input_channels(self.n_sites)

    def locate(self, idx: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(take index, newest frame index) of windows idx."""
        i = self._index(idx)
        return self._take[i].astype(np.int64), self._end[i]

    def _index(self, idx: np.ndarray | Sequence[int] | int) -> np.ndarray:
        i = np.asarray(idx, dtype=np.int64).reshape(-1)
        if i.size and (i.min() < -len(self) or i.max() >= len(self)):
            raise IndexError(f"window index out of range 0..{len(self) - 1}")
        return np.where(i < 0, i + len(self), i)

    def batch(self, idx: np.ndarray | Sequence[int], drop_sites: np.ndarray | Sequence[int] | None = None,
              frames: np.ndarray | Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """x (B, W, C) float32 model inputs and y (B, 52) float32 targets of windows idx.
        drop_sites: per row a face-site index to mark invalid through the whole window (IMU
        dropout; negative = none). frames: only these rows of each window (0 = oldest)."""
        i = self._index(idx)
        rel = self._rel if frames is None else np.asarray(frames, np.int64) - (self.window_frames - 1)
        if frames is not None and (rel.min(initial=0) < -self.window_frames + 1 or rel.max(initial=0) > 0):
            raise IndexError("frames must lie within the window")
        b, w, n = len(i), len(rel), self.n_sites
        feats = np.empty((b, w, n, FEATURES_PER_SITE), np.float32)
        valid = np.empty((b, w, n), bool)
        y = np.empty((b, N_BLENDSHAPES), np.float32)
        takes = self._take[i]
        ends = self._end[i]
        for k in np.unique(takes):
            rows = np.flatnonzero(takes == k)
            t = self.takes[int(k)]
            fi = ends[rows, None] + rel[None, :]
            feats[rows] = t.feats[fi]
            valid[rows] = t.valid[fi]
            y[rows] = t.blendshapes[ends[rows]]
        if drop_sites is not None:
            d = np.asarray(drop_sites, np.int64).reshape(-1)
            if d.shape[0] != b:
                raise ValueError(f"drop_sites has {d.shape[0]} entries for {b} windows")
            if d.size and d.max() >= n:
                raise IndexError(f"drop_sites: site index {int(d.max())} of {n} face sites")
            rows = np.flatnonzero(d >= 0)
            valid[rows, :, d[rows]] = False
        return assemble_input(feats, valid, self.mean, self.std), y

    def arrays(self, max_windows: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """All windows (or a seeded random max_windows of them, in order) as (x, y). Mind the
        size: each window is W * C * 4 bytes."""
        n = len(self)
        if max_windows is not None and max_windows < n:
            idx = np.sort(np.random.default_rng(seed).choice(n, size=max_windows, replace=False))
        else:
            idx = np.arange(n)
        return self.batch(idx)

    def batches(self, batch_size: int = 256, *, shuffle: bool = False, seed: int = 0,
                max_windows: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(x, y) batches over every window (or a seeded random max_windows of them)."""
        n = len(self)
        rng = np.random.default_rng(seed)
        idx = np.arange(n)
        if max_windows is not None and max_windows < n:
            idx = np.sort(rng.choice(n, size=max_windows, replace=False))
        if shuffle:
            idx = rng.permutation(idx)
        for s in range(0, len(idx), batch_size):
            yield self.batch(idx[s:s + batch_size])
