"""TI TCA9548A 8-channel I2C multiplexer: one control byte, bit n connects channel n.

Several IMUs with the same address sit behind different channels; the sampler selects the channel
before each chip access, so select() skips the bus write when the channel is already connected.
"""
from micropython import const

_NONE = const(-1)  # no channel known to be connected (after init, disable() or a failed write)


class Tca9548a:
    ADDRESSES = (0x70, 0x71, 0x72, 0x73, 0x74, 0x75, 0x76, 0x77)

    def __init__(self, i2c, addr=0x70):
        self.i2c = i2c
        self.addr = addr
        # One preallocated control byte per channel, plus "all off": select() never allocates.
        self._select_bytes = tuple(bytes((1 << ch,)) for ch in range(8))
        self._off = bytes(1)
        self.channel = _NONE

    def select(self, channel):
        if channel == self.channel:
            return
        if not 0 <= channel <= 7:
            raise ValueError("TCA9548A channel must be 0 .. 7")
        try:
            self.i2c.writeto(self.addr, self._select_bytes[channel])
        except OSError:
            self.channel = _NONE  # unknown state: the next select writes again
            raise
        self.channel = channel

    def disable(self):
        self.channel = _NONE
        self.i2c.writeto(self.addr, self._off)
