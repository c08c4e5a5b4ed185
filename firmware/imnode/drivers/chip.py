"""What every chip driver here shares: the chip-id probe, single-register access through a
one-byte buffer made once, and keeping -32768 free as the wire's missing-sample marker."""

import micropython


class I2cChip:
    ADDRESSES = ()  # 7-bit addresses the chip can strap to, in probing order
    ID_REG = 0  # register holding the chip id
    CHIP_ID = 0  # its value for this chip

    @classmethod
    def probe(cls, i2c, addr):
        """True when the chip at `addr` answers with this driver's chip id."""
        try:
            return i2c.readfrom_mem(addr, cls.ID_REG, 1)[0] == cls.CHIP_ID
        except OSError:
            return False

    def __init__(self, i2c, addr):
        self.i2c = i2c
        self.addr = addr
        self._reg = bytearray(1)

    def _write(self, reg, value):
        self._reg[0] = value
        self.i2c.writeto_mem(self.addr, reg, self._reg)

    def _read(self, reg):
        self.i2c.readfrom_mem_into(self.addr, reg, self._reg)
        return self._reg[0]

    def _check_id(self):
        if self._read(self.ID_REG) != self.CHIP_ID:
            raise OSError(19)  # ENODEV: something else answers at this address


@micropython.viper  # once per chip read: machine code, no heap
def unmark(buf, n: int):
    """A reading at negative full scale (-32768, the wire's 'missing sample' marker) becomes
    -32767, in place over the n bytes of int16 LE values in `buf`."""
    p = ptr8(buf)
    i = 1
    while i < n:
        if p[i] == 0x80 and p[i - 1] == 0:
            p[i - 1] = 1
        i += 2
