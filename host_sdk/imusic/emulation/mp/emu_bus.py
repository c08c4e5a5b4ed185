"""Emulated I2C bus and TCA9548A multiplexer, with fault injection.

MicroPython-compatible (the unix port runs the firmware against it) and importable by CPython.
`EmuI2C` offers the machine.I2C subset the drivers use and raises OSError like the real bus:
ENODEV when nothing acknowledges the address, EIO when two devices answer at once (two enabled mux
channels holding the same address).

The successful access path allocates nothing (no slicing, no exceptions, no new containers), so the
firmware's zero-allocation test can run its loop through the emulated bus.
"""

ENODEV = 19
EIO = 5


class EmuDevice:
    """Base of every emulated I2C target: an address, a register pointer, and fault injection.

    Subclasses implement `read_mem(reg, buf)` and `write_mem(reg, buf)`. A device does not answer
    while `set_failing(True)` is in force, or while the clock is inside one of `fail_windows`
    (`[(t_start_us, t_end_us), ...]`, start inclusive, end exclusive).
    """

    def __init__(self, addr, clock=None, fail_windows=()):
        if fail_windows and clock is None:
            raise ValueError("fail_windows need a clock")
        self.addr = addr
        self.clock = clock
        self._failing = False
        self._fail_windows = list(fail_windows)
        self._pointer = 0  # register pointer for plain writeto/readfrom_into transactions

    def set_failing(self, failing):
        self._failing = bool(failing)

    def set_fail_windows(self, windows):
        if windows and self.clock is None:
            raise ValueError("fail_windows need a clock")
        self._fail_windows = list(windows)

    def answers(self):
        if self._failing:
            return False
        if self._fail_windows:
            now_us = self.clock.now_us()
            for start_us, end_us in self._fail_windows:
                if start_us <= now_us < end_us:
                    return False
        return True

    def read_mem(self, reg, buf):
        raise NotImplementedError

    def write_mem(self, reg, buf):
        raise NotImplementedError

    def write_raw(self, buf):
        """A plain write: the first byte sets the register pointer, the rest are register data."""
        n = len(buf)
        if n:
            self._pointer = buf[0]
            if n > 1:
                self.write_mem(self._pointer, memoryview(buf)[1:])

    def read_raw(self, buf):
        """A plain read continues from the register pointer."""
        self.read_mem(self._pointer, buf)


class EmuMux(EmuDevice):
    """TCA9548A: a one-byte control register; bit n connects the devices attached to channel n."""

    def __init__(self, addr=0x70, clock=None, fail_windows=()):
        super().__init__(addr, clock, fail_windows)
        self.control = 0
        self._channels = [{} for _ in range(8)]  # per channel: address -> device

    def attach(self, channel, device):
        if not 0 <= channel <= 7:
            raise ValueError("TCA9548A channel must be 0 .. 7")
        self._channels[channel][device.addr] = device
        return device

    def devices(self, channel):
        return list(self._channels[channel].values())

    def write_raw(self, buf):
        # Every byte written overwrites the control register; the last one stays.
        n = len(buf)
        if n:
            self.control = buf[n - 1]

    def read_raw(self, buf):
        for i in range(len(buf)):
            buf[i] = self.control

    def read_mem(self, reg, buf):
        # The TCA9548A has no register address: a "register read" is a write of the control byte
        # (the register number) followed by a read of it back.
        self.control = reg & 0xFF
        self.read_raw(buf)

    def write_mem(self, reg, buf):
        self.control = reg & 0xFF
        self.write_raw(buf)


class EmuI2C:
    """machine.I2C stand-in over emulated devices (chips and EmuMux instances)."""

    def __init__(self, devices=()):
        self._direct = {}  # address -> device on the bus itself
        self._muxes = []
        for device in devices:
            self.attach(device)

    def attach(self, device):
        if device.addr in self._direct:
            raise ValueError("address 0x%02x already on the bus" % device.addr)
        self._direct[device.addr] = device
        if isinstance(device, EmuMux):
            self._muxes.append(device)
        return device

    def _route(self, addr):
        """The one device that acknowledges `addr` now; OSError as the real bus would give."""
        found = self._direct.get(addr)
        if found is not None and not found.answers():
            found = None
        for mux in self._muxes:
            mask = mux.control
            if mask:
                channels = mux._channels
                for ch in range(8):
                    if mask & (1 << ch):
                        device = channels[ch].get(addr)
                        if device is not None and device.answers():
                            if found is not None:
                                raise OSError(EIO)
                            found = device
        if found is None:
            raise OSError(ENODEV)
        return found

    def readfrom_mem_into(self, addr, memaddr, buf, addrsize=8):
        self._route(addr).read_mem(memaddr, buf)

    def readfrom_mem(self, addr, memaddr, nbytes, addrsize=8):
        buf = bytearray(nbytes)
        self._route(addr).read_mem(memaddr, buf)
        return bytes(buf)

    def writeto_mem(self, addr, memaddr, buf, addrsize=8):
        self._route(addr).write_mem(memaddr, buf)

    def writeto(self, addr, buf, stop=True):
        self._route(addr).write_raw(buf)
        return len(buf)  # every byte acknowledged

    def readfrom_into(self, addr, buf, stop=True):
        self._route(addr).read_raw(buf)

    def readfrom(self, addr, nbytes, stop=True):
        buf = bytearray(nbytes)
        self._route(addr).read_raw(buf)
        return bytes(buf)

    def scan(self):
        """Addresses that acknowledge now (each once), ascending, like machine.I2C.scan()."""
        found = []
        for addr in range(0x08, 0x78):
            try:
                self._route(addr)
            except OSError as exc:
                if exc.args[0] != EIO:  # two devices answering still acknowledge the address
                    continue
            found.append(addr)
        return found
