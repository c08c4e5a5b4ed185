"""A layout drawn on a frontal face outline (``imusic placement show``).

The face is seen from the front: sites in H are projected on the y-z plane, so the subject's left
(+y) is on the right of the picture, as when facing the subject. The outline is schematic, sized
to the canonical face of the catalogue (tragi at y = +-72 mm). Labels sit in two columns beside the
face, joined to their site by a line, so they never cover each other or the face.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imusic.errors import UserError
from imusic.placement.layout import Layout, LayoutImu

FORMATS = ("svg", "png")
LABEL_X_MM = 118.0  # label columns at +-this y
COLUMN_TOP_MM, COLUMN_BOTTOM_MM = 125.0, -130.0


def _wiring(imu: LayoutImu) -> str:
    mux = f" mux 0x{imu.mux:02x} ch {imu.channel}" if imu.mux is not None else ""
    mag = " +mag" if imu.mag else ""
    return f"node {imu.node_id} bus {imu.bus}{mux}{mag}"


def _outline(ax: Any) -> None:
    import numpy as np
    from matplotlib.patches import Arc, Ellipse

    line = {"color": "0.35", "linewidth": 1.2, "fill": False}
    ax.add_patch(Ellipse((0, 5), 150, 225, **line))  # head: tragi at +-72, chin at -105
    for side in (-1, 1):
        ax.add_patch(Ellipse((side * 78, -2), 14, 50, **line))  # ears
        ax.add_patch(Ellipse((side * 31, 14), 26, 10, **line))  # eyes (pupils 62 mm apart)
        ax.add_patch(Ellipse((side * 31, 14), 8, 8, color="0.55"))
        ax.add_patch(Arc((side * 32, 28), 40, 18, theta1=20, theta2=160, color="0.35", linewidth=2.0))  # brows
        ax.plot([side * 4, side * 13, side * 17], [22, -24, -30], color="0.35", linewidth=1.0)  # nose side
    ax.plot([-17, -8, 0, 8, 17], [-30, -34, -33, -34, -30], color="0.35", linewidth=1.0)  # nostrils
    lips_y = np.linspace(-25, 25, 41)
    ax.plot(lips_y, -50 + 4.0 * (1 - (lips_y / 25) ** 2), color="0.35", linewidth=1.0)  # upper lip
    ax.plot(lips_y, -50 - 6.0 * (1 - (lips_y / 25) ** 2), color="0.35", linewidth=1.0)  # lower lip
    ax.plot(lips_y, -50 + 0 * lips_y, color="0.35", linewidth=0.8)
    jaw_y = np.linspace(-62, 62, 61)
    ax.plot(jaw_y, -40 - 63 * np.sqrt(1 - (jaw_y / 62) ** 2), color="0.6", linewidth=1.0,
            linestyle="--")  # mandible line: gonion (+-62, -40) to chin


def _spread(values: list[float], top: float, bottom: float) -> list[float]:
    """Label heights: near each site's height, at least a label's height apart, inside the column."""
    if not values:
        return []
    gap = min(28.0, (top - bottom) / max(1, len(values) - 1))
    order = sorted(range(len(values)), key=lambda i: -values[i])
    placed = [0.0] * len(values)
    current = top + gap
    for i in order:
        current = min(values[i], current - gap)
        placed[i] = current
    overflow = bottom - min(placed)
    if overflow > 0:  # pushed below the column: shift everything up, keeping the spacing
        placed = [p + overflow for p in placed]
    return placed


def draw_layout(layout: Layout, out: str | Path) -> Path:
    """Draw `layout` to an SVG or PNG file (by extension). Needs matplotlib (imusic[plot])."""
    out = Path(out)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise UserError(f"{out}: the drawing must be a .svg or .png file")
    try:
        import matplotlib
    except ImportError:
        raise UserError("drawing needs matplotlib: pip install 'imusic[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.fonttype"] = "none"  # keep text as text: searchable, and testable
    fig, ax = plt.subplots(figsize=(11, 9.5))
    _outline(ax)
    columns: dict[int, list[tuple[LayoutImu, float, float]]] = {-1: [], 1: []}
    for imu in layout.imus:
        site = layout.site(imu.site)
        y, z = float(site.position_mm[1]), float(site.position_mm[2])
        # Midline sites go to the emptier column; ties to the viewer's left (subject's right).
        side = 1 if y > 0.5 else -1 if y < -0.5 else (1 if len(columns[1]) < len(columns[-1]) else -1)
        columns[side].append((imu, y, z))
        behind = site.position_mm[0] < 0  # behind the tragi: not visible from the front
        if imu.site == layout.head_reference:
            ax.plot(y, z, marker="*", markersize=17, color="tab:red", markeredgecolor="black", zorder=5)
        else:
            ax.plot(y, z, marker="o", markersize=9, markerfacecolor="white" if behind else "tab:blue",
                    markeredgecolor="tab:blue", zorder=5)
    for side, entries in columns.items():
        heights = _spread([z for _, _, z in entries], COLUMN_TOP_MM, COLUMN_BOTTOM_MM)
        for (imu, y, z), label_z in zip(entries, heights):
            site = layout.site(imu.site)
            is_ref = imu.site == layout.head_reference
            colour = "tab:red" if is_ref else "tab:blue"
            x_text = side * LABEL_X_MM
            ax.plot([y, x_text - side * 2], [z, label_z], color=colour, linewidth=0.6, alpha=0.7)
            title = imu.site + ("  (head reference)" if is_ref else "")
            ax.text(x_text, label_z + 2.5, title, ha="left" if side > 0 else "right", va="bottom",
                    fontsize=8.5, fontweight="bold", color=colour)
            ax.text(x_text, label_z + 1.5, f"{site.muscle}\n{_wiring(imu)}", ha="left" if side > 0 else "right",
                    va="top", fontsize=7.5, color="0.2")
    ax.set_xlim(-235, 235)
    ax.set_ylim(-150, 140)
    ax.set_aspect("equal")
    ax.axis("off")
    n_face = len(layout.face_sites)
    ax.set_title(f"layout {layout.name}: {n_face} face IMUs + head reference {layout.head_reference}, "
                 f"{layout.rate_hz} Hz\n(front view: the subject's left is on the right)", fontsize=10)
    try:
        fig.savefig(out, format=fmt, dpi=110 if fmt == "png" else None, bbox_inches="tight")
    except OSError as exc:
        raise UserError(f"{out}: cannot write: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return out
