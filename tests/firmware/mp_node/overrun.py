# Runs under MicroPython: the real node on the emulated board (virtual clock), with the loop made
# late by jumping the clock forward between two steps, as a long stall would on a board.
# argv: iterations before, periods to jump (plus a bit), iterations after.
import sys

import emu_board

from imnode.node import make_node

before, jump_periods, after = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
node = make_node()
node.boot()
node.run(before)
emu_board.clock._raw += jump_periods * node.period_us + node.period_us // 3
node.run(after)
