"""The 64-bit microsecond device clock and the sample schedule.

Times are kept as (hi, lo) with lo < 2**30 and t = hi * 2**30 + lo, so every value stays a small
int on a 32-bit port (small ints end at 2**30 - 1): reading the clock never allocates. The board's
ticks wrap at 2**30 us (17.9 minutes); the clock must be updated at least once per half period,
which the sample loop does many times a second.
"""

from micropython import const

from imnode import proto

LO_MASK = const(0x3FFFFFFF)  # 2**30 - 1


class DeviceClock:
    """Microseconds since the first reading after boot; never reset while the node runs."""

    def __init__(self, board):
        self._ticks_us = board.ticks_us
        self._ticks_diff = board.ticks_diff
        self.last_ticks = board.ticks_us()
        self.hi = 0
        self.lo = 0

    def update(self):
        """Read the board ticks and advance (hi, lo); returns the ticks value read."""
        now = self._ticks_us()
        d = self._ticks_diff(now, self.last_ticks)
        self.last_ticks = now
        if d > 0:
            room = LO_MASK - self.lo
            if d > room:
                self.lo = d - room - 1
                self.hi += 1
            else:
                self.lo += d
        return now

    def pack_now(self, buf, offset):
        """Update, then write the device time as the wire u64 at buf[offset]."""
        self.update()
        proto.pack_u64(buf, offset, self.hi, self.lo)


class Schedule:
    """Sample ticks at t_start + n * period_us, held both as board ticks (to wait on) and as
    device time (to stamp samples with); both advance by the same period with small ints."""

    def __init__(self, board, clock):
        self._ticks_diff = board.ticks_diff
        self._ticks_add = board.ticks_add
        self._ticks_us = board.ticks_us
        self.clock = clock
        self.period_us = 10000
        self.ticks = 0
        self.hi = 0
        self.lo = 0

    def start(self, period_us, lead_us):
        """First tick lead_us from now."""
        self.period_us = period_us
        now = self.clock.update()
        self.hi = self.clock.hi
        self.lo = self.clock.lo
        self.ticks = now
        self._add(lead_us)

    def _add(self, d):
        self.ticks = self._ticks_add(self.ticks, d)
        room = LO_MASK - self.lo
        if d > room:
            self.lo = d - room - 1
            self.hi += 1
        else:
            self.lo += d

    def advance(self, n):
        """Move to the tick n periods on (n >= 1)."""
        while n > 0:
            self._add(self.period_us)
            n -= 1

    def until(self):
        """Microseconds from now to the current tick (negative when late)."""
        return self._ticks_diff(self.ticks, self._ticks_us())

    def pack(self, buf, offset):
        proto.pack_u64(buf, offset, self.hi, self.lo)
