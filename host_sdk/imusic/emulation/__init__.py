"""Emulated nodes: the real firmware under the MicroPython unix port, with emulated chips.

`imusic.emulation.launcher` (CPython) starts and relays them; `imusic/emulation/mp/` holds the
MicroPython-side modules (board, clock, bus, chips, signal sources), never flashed.
"""

from imusic.emulation.launcher import EmulatedNode, build_layout, find_micropython

__all__ = ["EmulatedNode", "build_layout", "find_micropython"]
