"""What a blendshape model takes and gives, shared by training (``imusic.data``, ``model_export``)
and runtime (``imusic.infer``): the model's metadata (``ModelSpec``) and THE one function that turns
a window of feature frames into the model's input tensor (``assemble_input``).

Input tensor ``imu``: float32 (batch, window_frames, channels) with channels =
``n_face * FEATURES_PER_SITE`` normalised features (site-major, in ``feature_spec["columns"]``
order; an invalid site's values are 0) followed by ``n_face`` validity flags (1.0 valid, 0.0
missing). The newest frame is the last row. Output ``blendshapes``: float32 (batch, 52) in
``imusic.arkit.BLENDSHAPES`` order, 0-1, for the newest frame.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imusic.arkit import BLENDSHAPES
from imusic.errors import UserError
from imusic.features import FEATURE_VERSION, FEATURES_PER_SITE

__all__ = ["MODEL_FORMAT", "ModelSpec", "ModelSpecError", "assemble_input", "input_channels"]

MODEL_FORMAT = "imusic-model"
MODEL_FORMAT_VERSION = 1
INPUT_NAME = "imu"
OUTPUT_NAME = "blendshapes"


class ModelSpecError(UserError):
    """Model metadata that is missing, malformed, or does not match what it is used with."""


def input_channels(n_face: int) -> int:
    return n_face * FEATURES_PER_SITE + n_face


@dataclass
class ModelSpec:
    """A model's metadata: travels beside the weights as ``model.json`` and is checked at load.

    feature_spec: ``imusic.features.feature_spec(layout, rate_hz, settings)`` of the training data
        (feature version, layout, head reference, face site order, rate, settings).
    window_frames: frames per input window (newest last), at ``feature_spec["rate_hz"]``.
    norm_mean / norm_std: per feature column (``n_face * 9``), from the training split's valid frames.
    training: what the model saw (``simulated`` True/False, dataset, subjects, minutes, seeds) and
        what it scored; free-form but always says whether the data were simulated.
    """

    kind: str  # "student" | "teacher" | "ridge"
    feature_spec: dict[str, Any]
    window_frames: int
    norm_mean: list[float]
    norm_std: list[float]
    blendshapes: list[str] = field(default_factory=lambda: list(BLENDSHAPES))
    training: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # precision/format -> file name beside model.json
    format: str = MODEL_FORMAT
    format_version: int = MODEL_FORMAT_VERSION

    # --- derived -----------------------------------------------------------------------------
    @property
    def face_sites(self) -> list[str]:
        return list(self.feature_spec["sites"])

    @property
    def layout(self) -> str:
        return str(self.feature_spec["layout"])

    @property
    def rate_hz(self) -> float:
        return float(self.feature_spec["rate_hz"])

    @property
    def channels(self) -> int:
        return input_channels(len(self.face_sites))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, self.window_frames, self.channels)

    # --- (de)serialisation ---------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any], source: str = "model metadata") -> ModelSpec:
        if not isinstance(d, dict) or d.get("format") != MODEL_FORMAT:
            raise ModelSpecError(f"{source}: not imusic model metadata (no \"format\": \"{MODEL_FORMAT}\")")
        if int(d.get("format_version", 0)) > MODEL_FORMAT_VERSION:
            raise ModelSpecError(f"{source}: model format version {d.get('format_version')} is newer than this "
                                 f"imusic reads ({MODEL_FORMAT_VERSION}): upgrade imusic")
        try:
            spec = cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        except TypeError as exc:
            raise ModelSpecError(f"{source}: incomplete model metadata ({exc})") from None
        spec.validate(source)
        return spec

    def validate(self, source: str = "model metadata") -> None:
        n = len(self.face_sites) * FEATURES_PER_SITE
        if len(self.norm_mean) != n or len(self.norm_std) != n:
            raise ModelSpecError(f"{source}: normalisation has {len(self.norm_mean)} columns, the feature spec {n}")
        if list(self.blendshapes) != list(BLENDSHAPES):
            raise ModelSpecError(f"{source}: blendshape names differ from ARKit's 52 in Apple's order")
        if self.window_frames < 1:
            raise ModelSpecError(f"{source}: window_frames must be >= 1")

    def save(self, path: str | Path) -> None:
        p = Path(path)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        tmp.replace(p)

    @classmethod
    def load(cls, path: str | Path) -> ModelSpec:
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except FileNotFoundError:
            raise ModelSpecError(f"{p}: no model metadata there") from None
        except (OSError, ValueError) as exc:
            raise ModelSpecError(f"{p}: unreadable model metadata ({exc})") from None
        return cls.from_json(d, str(p))

    # --- checks --------------------------------------------------------------------------------
    def check_features(self, feature_spec: dict[str, Any], what: str = "these features") -> None:
        """Refuse features of another definition, layout, site order or rate, by name."""
        mine = self.feature_spec
        if int(feature_spec.get("feature_version", -1)) != int(mine["feature_version"]):
            raise ModelSpecError(f"model wants feature version {mine['feature_version']}, {what} are version "
                                 f"{feature_spec.get('feature_version')}")
        if feature_spec.get("layout") != mine["layout"] or list(feature_spec.get("sites", [])) != list(mine["sites"]):
            raise ModelSpecError(f"model was trained on layout {mine['layout']!r} (sites {', '.join(mine['sites'])}); "
                                 f"{what} come from layout {feature_spec.get('layout')!r}")
        if feature_spec.get("head_reference") != mine["head_reference"]:
            raise ModelSpecError(f"model's head reference is {mine['head_reference']!r}, {what} use "
                                 f"{feature_spec.get('head_reference')!r}")
        if abs(float(feature_spec.get("rate_hz", 0.0)) - float(mine["rate_hz"])) > 1e-6:
            raise ModelSpecError(f"model runs at {mine['rate_hz']:g} Hz, {what} at {feature_spec.get('rate_hz')} Hz")

    def check_runtime(self) -> None:
        """Refuse a model whose features this imusic cannot compute."""
        if int(self.feature_spec["feature_version"]) != FEATURE_VERSION:
            raise ModelSpecError(f"model was trained on feature version {self.feature_spec['feature_version']}, "
                                 f"this imusic computes version {FEATURE_VERSION}: retrain or use a matching imusic")


def assemble_input(feats: np.ndarray, valid: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Model input from feature windows: THE one function training and runtime share.

    feats: (..., W, n_face, 9) features (``imusic.features``), valid: (..., W, n_face) bool,
    mean/std: (n_face * 9,) normalisation. Returns float32 (..., W, n_face * 10): normalised
    features (0 where a site is invalid or not finite) then the validity flags.
    """
    f = np.asarray(feats, dtype=np.float32)
    v = np.asarray(valid, dtype=bool)
    shape = f.shape[:-2]
    n = f.shape[-2]
    x = (f.reshape(*shape, n * FEATURES_PER_SITE) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    ok = np.repeat(v, FEATURES_PER_SITE, axis=-1) & np.isfinite(x)
    x = np.where(ok, x, np.float32(0.0)).astype(np.float32)
    return np.concatenate([x, v.astype(np.float32)], axis=-1)
