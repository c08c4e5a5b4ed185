# Runs under MicroPython: DeviceClock and Schedule against the true 64-bit time, across many 2**30
# tick wraps and many carries of their (hi, lo) pair, with a fake board whose ticks we move.
# Prints "CLOCK OK <checks>" or raises AssertionError.
import struct
import sys

from imnode import proto
from imnode.clock import DeviceClock, Schedule

PERIOD = 1 << 30
MASK = PERIOD - 1
HALF = PERIOD >> 1


class FakeBoard:
    def __init__(self, start):
        self.raw = start

    def ticks_us(self):
        return self.raw & MASK

    def ticks_diff(self, a, b):
        return ((a - b + HALF) & MASK) - HALF

    def ticks_add(self, a, d):
        return (a + d) & MASK


def u64(hi, lo):
    buf = bytearray(8)
    proto.pack_u64(buf, 0, hi, lo)
    return struct.unpack("<Q", buf)[0]


seed = int(sys.argv[1]) if len(sys.argv) > 1 else 1
x = seed
checks = 0
for start in (0, PERIOD - 1, PERIOD - 1000000, 123456789):
    board = FakeBoard(start)
    clock = DeviceClock(board)
    sched = Schedule(board, clock)
    sched.start(5000, 5000)
    true_us = 0
    sched_us = 5000
    for i in range(3000):
        # steps from 1 us to just under half the tick period, pseudo-random
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        step = 1 + x % (HALF - 1) if i % 3 else 1 + x % 20000
        board.raw += step
        true_us += step
        clock.update()
        assert 0 <= clock.lo <= MASK
        assert clock.hi * PERIOD + clock.lo == true_us, (clock.hi, clock.lo, true_us)
        buf = bytearray(8)
        clock.pack_now(buf, 0)
        assert struct.unpack("<Q", buf)[0] == true_us
        n = 1 + x % 7
        sched.advance(n)
        sched_us += n * 5000
        assert sched.hi * PERIOD + sched.lo == sched_us
        assert sched.ticks == (start + sched_us) & MASK
        checks += 1
# the wire u64 at the edges of each piece
for hi, lo in ((0, 0), (0, MASK), (1, 0), (3, MASK), (4, 0), (12345, 65535), (12345, 65536), ((1 << 29) - 1, MASK)):
    assert u64(hi, lo) == hi * PERIOD + lo, (hi, lo)
    checks += 1
print("CLOCK OK", checks)
