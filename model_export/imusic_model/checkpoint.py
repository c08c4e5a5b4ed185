"""Checkpoints of ``imusic train``: written atomically, read back with one-line errors.

A checkpoint is a ``torch.save`` dict:

- ``kind``: "student" | "teacher"; ``arch``: the keyword arguments that rebuild the network
  (``Student(**arch)`` / ``Teacher(**arch)``); ``state_dict``: its weights.
- ``spec``: ``imusic.modelio.ModelSpec.to_json()``: feature spec, window, normalisation, and the
  training description (simulated or real data, dataset, split, what it scored).
- ``calib_x``: float32 (N <= 256, W, C) representative training windows (int8 calibration).
- ``ridge``: the ridge baseline fit on the same training windows, as the bytes of its .npz.
- ``train_state``: epoch, stage, optimizer state, best validation error, history and the run's
  configuration, for ``--resume``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imusic.errors import UserError
from imusic.modelio import ModelSpec

KINDS = ("student", "teacher")


class CheckpointError(UserError):
    """A file that is not an imusic training checkpoint, or not of the kind asked for."""


def save_checkpoint(ckpt: dict[str, Any], path: str | Path) -> None:
    """torch.save to a temporary file beside ``path``, then rename: a crash never leaves half a file."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(ckpt, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or a training output directory (its best.pt, else last.pt)."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).is_file():
                return p / name
        raise CheckpointError(f"{p}: no best.pt or last.pt in this directory (not an `imusic train` output)")
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint")
    return p


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """The checked checkpoint dict at ``path`` (a file or a training output directory)."""
    p = resolve_checkpoint_path(path)
    try:
        # Checkpoints hold numpy arrays and plain dicts beside the weights; they are the user's own
        # training output, trusted like the code that wrote them.
        raw = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # pickle, zip and runtime errors, depending on what the file is
        text = str(exc).strip().splitlines()
        raise CheckpointError(f"{p} is not a PyTorch checkpoint ({text[0] if text else type(exc).__name__})") from None
    if not isinstance(raw, dict) or raw.get("kind") not in KINDS or not all(
            k in raw for k in ("arch", "state_dict", "spec")):
        raise CheckpointError(f"{p} is not an imusic checkpoint (train one with `imusic train`)")
    if kind is not None and raw["kind"] != kind:
        raise CheckpointError(f"{p} is a {raw['kind']} checkpoint, a {kind} is needed here")
    ModelSpec.from_json(raw["spec"], f"{p} (spec)")
    raw["_path"] = str(p)
    return raw


def spec_of(ckpt: dict[str, Any]) -> ModelSpec:
    return ModelSpec.from_json(ckpt["spec"], f"{ckpt.get('_path', 'checkpoint')} (spec)")


def build_model(ckpt: dict[str, Any]) -> nn.Module:
    """The network of a checkpoint with its weights, in eval mode."""
    from imusic_model.student import Student
    from imusic_model.teacher import Teacher

    cls: type[nn.Module] = Student if ckpt["kind"] == "student" else Teacher
    try:
        model = cls(**ckpt["arch"])
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        text = str(exc).strip().splitlines()
        raise CheckpointError(f"{ckpt.get('_path', 'checkpoint')}: its weights do not fit this imusic's "
                              f"{ckpt['kind']} ({text[0] if text else type(exc).__name__})") from None
    model.eval()
    return model


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
