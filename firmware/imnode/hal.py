"""The hardware seam: the one place that picks the board module.

`sys.platform` says the port: `esp32` and `rp2` load a file from imnode/boards (the variant comes
from the config's `board`), `linux` (the unix port) imports `emu_board`, which exists only on the
emulator's module path. Every other firmware module talks to the board through what this returns.
"""

import sys

ESP32_BOARDS = ("esp32", "esp32s3", "esp32c3")
RP2_BOARDS = ("rp2040", "picow")


def config_path():
    """Where node.json lives on this platform."""
    if sys.platform == "linux":
        import emu_board  # type: ignore  # only on the emulator's path
        return emu_board.CONFIG_PATH
    return "node.json"


def load_board(name):
    """(board module, problem text or None) for the configured board name (None: default)."""
    platform = sys.platform
    problem = None
    if platform == "esp32":
        if name is not None and name not in ESP32_BOARDS:
            problem = "board %r is not an ESP32 board: using esp32" % name
            name = None
        if name == "esp32s3":
            from imnode.boards import esp32s3 as board
        elif name == "esp32c3":
            from imnode.boards import esp32c3 as board
        else:
            from imnode.boards import esp32 as board
    elif platform == "rp2":
        if name is not None and name not in RP2_BOARDS:
            problem = "board %r is not an RP2040 board: using rp2040" % name
            name = None
        if name == "picow":
            from imnode.boards import picow as board
        else:
            from imnode.boards import rp2040 as board
    elif platform == "linux":
        import emu_board as board  # type: ignore  # only on the emulator's path
    else:
        raise RuntimeError("imnode: no board support for platform " + platform)
    return board, problem
