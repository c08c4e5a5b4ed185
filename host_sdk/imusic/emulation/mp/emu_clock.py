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

Device time (`now_us()`, and the firmware's DeviceClock) starts at 0 at the first reading, whatever
`start_us` is: `start_us` only places the raw counter, and so the tick wraps. `offset_us` makes the
device clock read that much more than its true uptime, like a node that booted long before the host
started: the raw counter jumps by `offset_us` right after the first reading (the firmware's
DeviceClock makes that reading before anything is stamped, and takes one forward jump of less than
half the 2^30 tick period in its stride). `reboot_us` (uptime) ends the run with the reset
exit code, so the launcher starts the node again: a reboot.

The raw counter is an unwrapped integer (a small int on the 64-bit unix port, so reading it
allocates nothing in virtual mode).
"""

import sys
import time

TICKS_PERIOD = 1 << 30
TICKS_MASK = TICKS_PERIOD - 1
TICKS_HALF = TICKS_PERIOD >> 1
PPM = 1000000
# The firmware's DeviceClock reads a jump as a negative step once it reaches half the tick period.
MAX_OFFSET_US = TICKS_HALF - 1000000


class EmuClock:
    def __init__(self, mode="virtual", start_us=0, drift_ppm=0, limit_us=0, offset_us=0, reboot_us=0,
                 reboot_code=0):
        if mode not in ("virtual", "realtime"):
            raise ValueError("clock mode must be virtual or realtime")
        if not 0 <= offset_us <= MAX_OFFSET_US:
            raise ValueError("clock offset_us must be 0 .. %d" % MAX_OFFSET_US)
        self.mode = mode
        self.virtual = mode == "virtual"
        self.drift_ppm = drift_ppm
        self._raw = start_us  # virtual mode: the raw counter itself
        self._raw0 = start_us  # realtime mode: raw counter at _host0
        self._host0 = time.ticks_us()
        self._epoch = -1  # raw counter at the first ticks_us(): device time 0
        self.limit_us = limit_us  # uptime at which sleep_us ends the run (0: never)
        self.offset_us = offset_us
        self._offset_left = offset_us  # added to the raw counter right after the first reading
        self.reboot_us = reboot_us  # uptime at which sleep_us resets the node (0: never)
        self.reboot_code = reboot_code

    def raw_us(self):
        """The unwrapped tick counter."""
        if self.virtual:
            return self._raw
        return self._raw_at(time.ticks_us())

    def _raw_at(self, host_us):
        elapsed = time.ticks_diff(host_us, self._host0)
        return self._raw0 + elapsed + elapsed * self.drift_ppm // PPM

    def _read(self):
        if self._epoch < 0:
            return self._first_read()
        raw = self.raw_us()
        if self._offset_left:
            if self.virtual:
                self._raw += self._offset_left
            else:
                self._raw0 += self._offset_left
            raw += self._offset_left
            self._offset_left = 0
        return raw

    def _first_read(self):
        """Device time 0. In realtime mode the host's monotonic time of this reading is the truth a
        host's clock sync is measured against (the unix port's ticks_us reads CLOCK_MONOTONIC, the
        clock of CPython's time.monotonic()): device_us = offset_us + (host_us - epoch_host_us)
        * (1 + drift_ppm / 1e6), to within a microsecond of rounding. Reported on stderr once per
        boot (EmulatedNode.clock_truth())."""
        if self.virtual:
            raw = self._raw
        else:
            host_us = time.ticks_us()
            raw = self._raw_at(host_us)
            sys.stderr.write("emu: clock epoch_host_us=%d drift_ppm=%d offset_us=%d\n"
                             % (host_us, self.drift_ppm, self.offset_us))
        self._epoch = raw
        return raw

    def ticks_us(self):
        return self._read() & TICKS_MASK

    def ticks_diff(self, a, b):
        return ((a - b + TICKS_HALF) & TICKS_MASK) - TICKS_HALF

    def ticks_add(self, a, delta):
        return (a + delta) & TICKS_MASK

    def now_us(self):
        """Device time: microseconds since the first ticks_us() reading (plus offset_us)."""
        return self._read() - self._epoch

    def sleep_us(self, us):
        if us > 0:
            if self.virtual:
                self._raw += us
            else:
                # The device asks for device microseconds; the host sleeps reference ones.
                time.sleep_us(us * PPM // (PPM + self.drift_ppm))
        if self.limit_us or self.reboot_us:
            now = self.now_us() - self.offset_us  # uptime: the limits count from boot
            if self.limit_us and now >= self.limit_us:
                sys.exit(0)  # the run's max_seconds: a clean stop, not a crash
            if self.reboot_us and now >= self.reboot_us:
                sys.exit(self.reboot_code)
