"""A controllable clock for the firmware on the unix port (never flashed).

The unix port's own ticks never wrap in practice; the real ports wrap at 2**30 us. This clock gives
the firmware `ticks_us/ticks_diff/ticks_add/sleep_us` with that wrap, starting where the settings
say (e.g. one second before the wrap), and `now_us()`, the device's 64-bit time (microseconds since
the first `ticks_us()` reading, the same value the firmware's DeviceClock builds), for the emulated
chips.

Two modes:
- `virtual`: time moves only when the firmware sleeps, by exactly the time asked for. Runs are
  reproducible and as fast as the host allows, and each sample is read exactly at its tick.
- `realtime`: follows the host's monotonic clock, scaled by `drift_ppm` (a device crystal that runs
  fast or slow against the host's reference time); for pty/UDP demos and command tests.

The raw counter is an unwrapped integer (a small int on the 64-bit unix port, so reading it
allocates nothing in virtual mode).
"""

import sys
import time

TICKS_PERIOD = 1 << 30
TICKS_MASK = TICKS_PERIOD - 1
TICKS_HALF = TICKS_PERIOD >> 1
PPM = 1000000


class EmuClock:
    def __init__(self, mode="virtual", start_us=0, drift_ppm=0, limit_us=0):
        if mode not in ("virtual", "realtime"):
            raise ValueError("clock mode must be virtual or realtime")
        self.mode = mode
        self.virtual = mode == "virtual"
        self.drift_ppm = drift_ppm
        self._raw = start_us  # virtual mode: the raw counter itself
        self._raw0 = start_us  # realtime mode: raw counter at _host0
        self._host0 = time.ticks_us()
        self._epoch = -1  # raw counter at the first ticks_us(): device time 0
        self.limit_us = limit_us  # device time at which sleep_us ends the run (0: never)

    def raw_us(self):
        """The unwrapped tick counter."""
        if self.virtual:
            return self._raw
        elapsed = time.ticks_diff(time.ticks_us(), self._host0)
        return self._raw0 + elapsed + elapsed * self.drift_ppm // PPM

    def ticks_us(self):
        raw = self.raw_us()
        if self._epoch < 0:
            self._epoch = raw
        return raw & TICKS_MASK

    def ticks_diff(self, a, b):
        return ((a - b + TICKS_HALF) & TICKS_MASK) - TICKS_HALF

    def ticks_add(self, a, delta):
        return (a + delta) & TICKS_MASK

    def now_us(self):
        """Device time: microseconds since the first ticks_us() reading."""
        raw = self.raw_us()
        if self._epoch < 0:
            self._epoch = raw
        return raw - self._epoch

    def sleep_us(self, us):
        if us > 0:
            if self.virtual:
                self._raw += us
            else:
                # The device asks for device microseconds; the host sleeps reference ones.
                time.sleep_us(us * PPM // (PPM + self.drift_ppm))
        if self.limit_us and self.now_us() >= self.limit_us:
            sys.exit(0)  # the run's max_seconds: a clean stop, not a crash
