"""The baseline every model report compares against: ridge regression on windowed features.

A window x (W, C) (``imusic.modelio.assemble_input``, newest frame last) is thinned in time to
every ``step``-th frame counted back from the newest, flattened, and mapped to the 52 blendshapes
by one linear layer with a bias, fitted in closed form (the bias unpenalised: the fit is made on
centred data). The penalty ``alpha`` is picked from a grid by the validation windows' mean
absolute error; predictions are clipped to 0-1 like a model's. Fitting streams the training
windows through the normal equations, so it never holds the windows in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imusic.arkit import N_BLENDSHAPES
from imusic.errors import UserError

if TYPE_CHECKING:
    from imusic.data import Windows

__all__ = ["RidgeBaseline", "RidgeError"]

RIDGE_FORMAT = "imusic-ridge"
RIDGE_VERSION = 1
DEFAULT_STEP = 4
# penalties tried, in units of the mean diagonal of X^T X / n (so the grid suits any scaling)
ALPHA_GRID = tuple(float(a) for a in np.logspace(-4, 2, 13))


class RidgeError(UserError):
    """A ridge file that cannot be read or does not fit the windows it is given."""


class RidgeBaseline:
    """Ridge regression from input windows (N, W, C) to blendshapes (N, 52)."""

    def __init__(self, window_frames: int, channels: int, step: int = DEFAULT_STEP) -> None:
        if window_frames < 1 or channels < 1 or step < 1:
            raise ValueError("window_frames, channels and step must be >= 1")
        self.window_frames = int(window_frames)
        self.channels = int(channels)
        self.step = int(step)
        self.weights: np.ndarray | None = None  # (D, 52)
        self.bias: np.ndarray | None = None  # (52,)
        self.alpha: float | None = None
        self.val_mae: float | None = None
        self.meta: dict[str, Any] = {}
        # the normalisation of the windows it was fitted on (recorded by fit_windows): a model's
        # evaluation checks its own against it
        self.norm_mean: np.ndarray | None = None
        self.norm_std: np.ndarray | None = None
        # normal equations, accumulated
        self._n = 0
        self._sx: np.ndarray | None = None
        self._sy: np.ndarray | None = None
        self._xx: np.ndarray | None = None
        self._xy: np.ndarray | None = None

    # --- shape -------------------------------------------------------------------------------
    @property
    def frames(self) -> np.ndarray:
        """Rows of a window the baseline reads (0 = oldest), newest included."""
        return np.arange(self.window_frames - 1, -1, -self.step)[::-1].copy()

    @property
    def dim(self) -> int:
        return len(self.frames) * self.channels

    def _flat(self, x: np.ndarray, thinned: bool = False) -> np.ndarray:
        x = np.asarray(x, np.float32)
        want_w = len(self.frames) if thinned else self.window_frames
        if x.ndim != 3 or x.shape[1] != want_w or x.shape[2] != self.channels:
            raise RidgeError(f"ridge baseline takes windows of (N, {want_w}, {self.channels}), got {x.shape}")
        if not thinned:
            x = x[:, self.frames, :]
        return x.reshape(len(x), -1).astype(np.float64)

    # --- fitting -----------------------------------------------------------------------------
    def _accumulate(self, xf: np.ndarray, y: np.ndarray) -> None:
        if self._xx is None:
            d = xf.shape[1]
            self._sx, self._sy = np.zeros(d), np.zeros(N_BLENDSHAPES)
            self._xx, self._xy = np.zeros((d, d)), np.zeros((d, N_BLENDSHAPES))
        assert self._sx is not None and self._sy is not None and self._xy is not None
        y64 = np.asarray(y, np.float64)
        self._n += len(xf)
        self._sx += xf.sum(axis=0)
        self._sy += y64.sum(axis=0)
        self._xx += xf.T @ xf
        self._xy += xf.T @ y64

    def _solve(self, val: Iterable[tuple[np.ndarray, np.ndarray]] | None, alphas: Sequence[float]) -> None:
        if self._n < 2 or self._xx is None or self._sx is None or self._sy is None or self._xy is None:
            raise RidgeError("ridge baseline: no training windows")
        from scipy.linalg import cho_factor, cho_solve

        n = self._n
        mx, my = self._sx / n, self._sy / n
        cxx = self._xx / n - np.outer(mx, mx)
        cxy = self._xy / n - np.outer(mx, my)
        scale = float(np.mean(np.diag(cxx))) or 1.0
        eye = np.eye(len(cxx))
        grid = list(alphas) if val is not None else [alphas[len(alphas) // 2]]
        ws = [cho_solve(cho_factor(cxx + a * scale * eye), cxy) for a in grid]
        errs = np.zeros(len(grid))
        count = 0
        for xf, y in val or []:
            z = xf - mx
            for k, w in enumerate(ws):
                errs[k] += float(np.abs(np.clip(my + z @ w, 0.0, 1.0) - y).sum())
            count += y.size
        best = int(np.argmin(errs)) if count else len(grid) // 2
        self.alpha = float(grid[best])
        self.val_mae = float(errs[best] / count) if count else None
        self.weights = ws[best]
        self.bias = my - mx @ ws[best]

    def fit(self, x: np.ndarray, y: np.ndarray, x_val: np.ndarray | None = None, y_val: np.ndarray | None = None,
            alphas: Sequence[float] = ALPHA_GRID) -> RidgeBaseline:
        """Fit on windows x (N, W, C), targets y (N, 52); pick alpha on (x_val, y_val) if given
        (else the middle of the grid)."""
        self._accumulate(self._flat(x), np.asarray(y))
        val = None if x_val is None or y_val is None else [(self._flat(x_val), np.asarray(y_val, np.float64))]
        self._solve(val, alphas)
        self._free()
        return self

    def fit_windows(self, train: Windows, val: Windows | None = None, *, max_windows: int | None = 100_000,
                    max_val_windows: int | None = 20_000, batch_size: int = 4096, seed: int = 0,
                    alphas: Sequence[float] = ALPHA_GRID) -> RidgeBaseline:
        """Fit from ``imusic.data.Windows`` without materialising them: the normal equations
        over (a seeded random max_windows of) the training windows, alpha on the validation
        windows (or the middle of the grid without any)."""
        frames = self.frames
        self.norm_mean, self.norm_std = train.mean.copy(), train.std.copy()
        for xf, y in _thinned(train, frames, max_windows, batch_size, seed):
            self._accumulate(self._flat(xf, thinned=True), y)
        vals = None
        if val is not None and len(val):
            vals = ((self._flat(xf, thinned=True), y.astype(np.float64))
                    for xf, y in _thinned(val, frames, max_val_windows, batch_size, seed + 1))
        self._solve(vals, alphas)
        self._free()
        return self

    def _free(self) -> None:
        self._sx = self._sy = self._xx = self._xy = None
        self._n = 0

    # --- use ---------------------------------------------------------------------------------
    def predict(self, x: np.ndarray) -> np.ndarray:
        """(N, 52) float32 in [0, 1] for windows x (N, W, C)."""
        if self.weights is None or self.bias is None:
            raise RidgeError("ridge baseline is not fitted")
        return np.clip(self._flat(x) @ self.weights + self.bias, 0.0, 1.0).astype(np.float32)

    def save(self, path: str | Path) -> Path:
        if self.weights is None or self.bias is None:
            raise RidgeError("ridge baseline is not fitted")
        p = Path(path)
        tmp = p.with_name(p.name + ".tmp.npz")
        header = {"format": RIDGE_FORMAT, "version": RIDGE_VERSION, "window_frames": self.window_frames,
                  "channels": self.channels, "step": self.step, "alpha": self.alpha, "val_mae": self.val_mae,
                  "meta": self.meta}
        arrays: dict[str, Any] = {"header": np.array(json.dumps(header)), "weights": self.weights.astype(np.float32),
                                  "bias": self.bias.astype(np.float32)}
        if self.norm_mean is not None and self.norm_std is not None:
            arrays["norm_mean"] = np.asarray(self.norm_mean, np.float32)
            arrays["norm_std"] = np.asarray(self.norm_std, np.float32)
        np.savez(tmp, **arrays)
        tmp.replace(p)
        return p

    @classmethod
    def load(cls, path: str | Path) -> RidgeBaseline:
        p = Path(path)
        try:
            with np.load(p, allow_pickle=False) as z:
                header = json.loads(str(z["header"]))
                weights, bias = z["weights"], z["bias"]
                norm = (z["norm_mean"], z["norm_std"]) if "norm_mean" in z.files else None
        except FileNotFoundError:
            raise RidgeError(f"{p}: no such file") from None
        except (OSError, KeyError, ValueError) as exc:
            raise RidgeError(f"{p}: not a ridge baseline file ({exc.__class__.__name__})") from None
        if not isinstance(header, dict) or header.get("format") != RIDGE_FORMAT:
            raise RidgeError(f"{p}: not a ridge baseline file")
        if int(header.get("version", 0)) > RIDGE_VERSION:
            raise RidgeError(f"{p}: ridge file version {header.get('version')} is newer than this imusic reads")
        r = cls(int(header["window_frames"]), int(header["channels"]), int(header["step"]))
        if weights.shape != (r.dim, N_BLENDSHAPES) or bias.shape != (N_BLENDSHAPES,):
            raise RidgeError(f"{p}: weights of shape {weights.shape} do not fit windows of "
                             f"({r.window_frames}, {r.channels}) thinned by {r.step}")
        r.weights, r.bias = weights.astype(np.float64), bias.astype(np.float64)
        if norm is not None:
            r.norm_mean, r.norm_std = norm
        r.alpha, r.val_mae, r.meta = header.get("alpha"), header.get("val_mae"), dict(header.get("meta") or {})
        return r


def _thinned(windows: Windows, frames: np.ndarray, max_windows: int | None, batch_size: int,
             seed: int) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    n = len(windows)
    idx = np.arange(n)
    if max_windows is not None and max_windows < n:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=max_windows, replace=False))
    for s in range(0, len(idx), batch_size):
        yield windows.batch(idx[s:s + batch_size], frames=frames)
