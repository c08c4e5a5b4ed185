# Runs under MicroPython: the real node.main() on the emulated board, with the board's REPL escape
# switched on as on a real board (the emulator normally turns it off).
import emu_board

emu_board.REPL_ESCAPE = True

from imnode import node  # noqa: E402

node.main()
