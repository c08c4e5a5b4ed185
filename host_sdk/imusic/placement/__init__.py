"""Where the IMUs go: the face-site catalogue, layouts, drawing and the placement optimizer.

``load_layout("imusic")`` gives a `Layout` (sites, wiring, node.json, emulator entries);
``load_catalogue()`` the candidate sites. The optimizer (`imusic.placement.optimize`) and the
drawing (`imusic.placement.draw`) are imported on demand: they need the simulator's face model and
matplotlib respectively, which the runtime path does not.
"""

from imusic.placement.layout import (
    CHIPS,
    HEAD_REFERENCE_ZONE,
    IMUSIC_ZONES,
    Catalogue,
    Layout,
    LayoutError,
    LayoutImu,
    Site,
    list_layouts,
    load_catalogue,
    load_layout,
    placements_dir,
)

__all__ = ["CHIPS", "HEAD_REFERENCE_ZONE", "IMUSIC_ZONES", "Catalogue", "Layout", "LayoutError", "LayoutImu",
           "Site", "list_layouts", "load_catalogue", "load_layout", "placements_dir"]
