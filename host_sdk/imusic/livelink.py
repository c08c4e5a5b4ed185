"""Live Link Face CSV: the iPhone app's recording export, written and read.

Format (docs/sim.md): a header ``Timecode,BlendShapeCount,EyeBlinkLeft,...,TongueOut,HeadYaw,...,
RightEyeRoll`` with PascalCase names, ``BlendShapeCount`` 61 on every row, timecodes
``HH:MM:SS:FF.fff`` (frame within the second, with a fractional part) at the app's frame rate. The
app's column order differs from the packet order in two places, which the writer reproduces:
JawRight comes before JawLeft and MouthRight before MouthLeft.

The reader maps columns by name, never by position, so it also takes files whose columns are in any
order, camelCase names, and Unreal's own CSV (``Timecode`` ``H:M:S:F`` plus a ``FrameRate``
column). A bad file raises `imusic.errors.UserError` with one line naming the file and the problem.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from imusic.arkit import BLENDSHAPES, LIVE_LINK_EXTRA, N_BLENDSHAPES, pascal_case
from imusic.errors import UserError, read_error

__all__ = ["write_csv", "read_csv", "csv_columns"]

BLENDSHAPE_COUNT = N_BLENDSHAPES + len(LIVE_LINK_EXTRA)   # 61


def csv_columns() -> list[str]:
    """The 61 value columns in the app's order (Apple's order with the two swaps)."""
    names = [pascal_case(n) for n in BLENDSHAPES]
    for a, b in (("JawLeft", "JawRight"), ("MouthLeft", "MouthRight")):
        i, j = names.index(a), names.index(b)
        names[i], names[j] = names[j], names[i]
    return names + list(LIVE_LINK_EXTRA)


def _timecode(t_s: float, fps: float) -> str:
    total = max(0.0, t_s)
    secs = int(np.floor(total + 1e-9))
    frame = (total - secs) * fps
    if frame >= fps - 5e-4:                       # rounding would print frame == fps
        secs, frame = secs + 1, 0.0
    h, rem = divmod(secs, 3600)
    m, s = divmod(rem, 60)
    return f"{h:02d}:{m:02d}:{s:02d}:{frame:06.3f}"


def write_csv(path: str | Path, t_s: np.ndarray, weights: np.ndarray, extra: np.ndarray | None = None,
              fps: float = 60) -> None:
    """Write blendshapes (T, 52) in Apple's order at times t_s (T,) (seconds from the take's start;
    the timecode counts from 00:00:00:00) as a Live Link Face CSV. extra (T, 9): head and eye
    angles (zeros if None)."""
    t = np.asarray(t_s, dtype=float)
    w = np.asarray(weights, dtype=float)
    if w.ndim != 2 or w.shape[1] != N_BLENDSHAPES or w.shape[0] != t.shape[0]:
        raise ValueError(f"weights must be (T, {N_BLENDSHAPES}) with T = len(t_s); got {w.shape}, {t.shape}")
    x = np.zeros((t.shape[0], len(LIVE_LINK_EXTRA))) if extra is None else np.asarray(extra, dtype=float)
    columns = csv_columns()
    order = [BLENDSHAPES.index(n[:1].lower() + n[1:]) for n in columns[:N_BLENDSHAPES]]
    values = np.concatenate([w[:, order], x], axis=1)
    lines = [",".join(["Timecode", "BlendShapeCount", *columns])]
    row_format = ",".join(["%.9g"] * values.shape[1])
    for k, row in enumerate(values.tolist()):
        lines.append(f"{_timecode(float(t[k]), fps)},{BLENDSHAPE_COUNT}," + row_format % tuple(row))
    Path(path).write_text("\n".join(lines) + "\n")


_TC = re.compile(r"^\s*(\d+):(\d+):(\d+)[:;.](\d+(?:\.\d*)?)\s*$")


def _parse_rate(text: str) -> float:
    """Unreal's FrameRate cell: "60", "60.000000", "60/1", "59.94 fps"."""
    m = re.match(r"^\s*([\d.]+)\s*(?:/\s*([\d.]+))?", text)
    if not m:
        raise ValueError(text)
    rate = float(m.group(1)) / (float(m.group(2)) if m.group(2) else 1.0)
    if not rate > 0:
        raise ValueError(text)
    return rate


def read_csv(path: str | Path, fps: float = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t_s (T,), weights (T, 52) in Apple's order, extra (T, 9)) from a Live Link Face CSV (or
    Unreal's). fps: the frame rate of the timecodes when the file has no FrameRate column. t_s is
    the timecode in seconds (time of day for the app's own files; what `write_csv` was given for
    ours). Missing head/eye columns read as zeros."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise read_error(p, exc, "a Live Link Face CSV") from None
    except UnicodeDecodeError:
        raise UserError(f"{p}: not a Live Link Face CSV (not text)") from None
    rows = list(csv.reader(text.splitlines()))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise UserError(f"{p}: empty file, not a Live Link Face CSV")
    header = [c.strip() for c in rows[0]]
    lookup = {name.lower(): i for i, name in enumerate(header)}
    if "timecode" not in lookup:
        raise UserError(f"{p}: not a Live Link Face CSV (no Timecode column in the header)")
    shape_cols: list[int] = []
    missing: list[str] = []
    for name in BLENDSHAPES:
        i = lookup.get(name.lower())              # PascalCase and camelCase differ only in case
        if i is None:
            missing.append(pascal_case(name))
        else:
            shape_cols.append(i)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UserError(f"{p}: missing column {', '.join(missing[:3])}{more}")
    extra_cols = [lookup.get(n.lower()) for n in LIVE_LINK_EXTRA]
    rate_col = lookup.get("framerate")
    data = rows[1:]
    if not data:
        raise UserError(f"{p}: no data rows after the header")
    T = len(data)
    t = np.empty(T)
    values = np.zeros((T, N_BLENDSHAPES + len(LIVE_LINK_EXTRA)))
    wanted = shape_cols + [i if i is not None else -1 for i in extra_cols]
    for k, row in enumerate(data):
        line = k + 2
        if len(row) != len(header):
            raise UserError(f"{p}: line {line} has {len(row)} fields, the header has {len(header)}")
        m = _TC.match(row[lookup["timecode"]])
        if not m:
            raise UserError(f"{p}: line {line}: bad timecode {row[lookup['timecode']].strip()!r}")
        try:
            rate = _parse_rate(row[rate_col]) if rate_col is not None else fps
            values[k] = [float(row[i]) if i >= 0 else 0.0 for i in wanted]
        except ValueError:
            raise UserError(f"{p}: line {line}: a value is not a number") from None
        h, mi, s, frame = int(m.group(1)), int(m.group(2)), int(m.group(3)), float(m.group(4))
        t[k] = h * 3600 + mi * 60 + s + frame / rate
    if not np.all(np.isfinite(values)):
        raise UserError(f"{p}: a value is not finite")
    return t, values[:, :N_BLENDSHAPES], values[:, N_BLENDSHAPES:]
