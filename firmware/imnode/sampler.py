"""IMU slots: detection, configuration, and the per-tick burst reads into the SAMPLES buffer.

A slot is one 6-axis chip (plus the magnetometer beside it, if any) at a fixed place: bus, optional
TCA9548A address and channel. Slots keep their order, which is the order of data on the wire. A
slot whose chip stops answering keeps its place in every frame: its values are the -32768 marker
and its status says STALE (+ I2C_ERROR in frames where the bus failed), and it is retried every
`retry_ticks`; when the chip answers again it is re-initialised and the frame says REINIT.

The read path (`begin_frame`, `read`) allocates nothing: the per-slot memoryviews into the frame
buffer are made once by `bind`.
"""

import micropython
from micropython import const

from imnode import proto
from imnode.drivers import detect
from imnode.drivers.qmc5883p import Qmc5883p
from imnode.drivers.tca9548a import Tca9548a

IMU_ADDRESSES = (0x68, 0x69, 0x6A, 0x6B)
MUX_FIRST = const(0x70)
MUX_LAST = const(0x77)
U16_MAX = const(0xFFFF)
# Each chip's gyro range when the config names none: the two chips share no gyro range.
DEFAULT_GYRO_DPS = {1: 512, 2: 500}
FALLBACK_GYRO_DPS = 500


class Slot:
    def __init__(self, index, bus, mux, channel, site, want, addr):
        self.index = index
        self.bus = bus
        self.mux = mux  # Tca9548a or None
        self.channel = channel  # None without a mux
        self.site = site
        self.want = want  # "auto", "qmi8658" or "icm42688"
        self.want_addr = addr  # None: any address the driver probes
        self.drv = None
        self.chip = proto.CHIP_NONE
        self.addr = 0
        self.mag = None
        self.mag_addr = 0
        self.has_mag = False
        self.ok = False
        self.retry_in = 0
        self.accel_range_g = 8
        self.gyro_range_dps = 0
        self.mag_range_gauss = 0
        self.i2c_errors = 0
        self.fifo_overflows = 0

    def mux_addr(self):
        return self.mux.addr if self.mux is not None else 0


class Sampler:
    def __init__(self, board, cfg):
        self.board = board
        self.cfg = cfg
        self.rate_hz = cfg.rate_hz
        self.accel_range_g = cfg.accel_range_g
        self.gyro_range_dps = cfg.gyro_range_dps
        self.mag_range_gauss = cfg.mag_range_gauss
        self.retry_ticks = max(1, cfg.rate_hz // 10)  # about 100 ms between retries
        self.messages = []  # (LOG level, text) for the node to send
        self.changed = False  # a slot's chip identity changed since the last HELLO
        self._buses = {}
        self._muxes = {}  # (bus, addr) -> Tca9548a
        self._active_mux = [None] * 4  # per bus: the mux whose channel is connected
        self._claimed = {}  # (bus, mux addr, channel, addr) -> slot index
        self.slots = []
        self.n = 0
        self._buf = bytearray(0)
        self._status_off = 0
        self._views = []
        self._mag_views = []

    def log(self, level, text):
        self.messages.append((level, text))

    # ---- buses and slots

    def _bus(self, index):
        bus = self._buses.get(index)
        if bus is None:
            bus = self.board.i2c(index)
            self._buses[index] = bus
        return bus

    def _mux(self, bus, addr):
        key = (bus, addr)
        mux = self._muxes.get(key)
        if mux is None:
            mux = Tca9548a(self._bus(bus), addr)
            self._muxes[key] = mux
        return mux

    def setup(self):
        """Build the slots (from the config, or by scanning) and initialise every chip."""
        if self.cfg.imus is not None:
            for spec in self.cfg.imus:
                if spec.bus >= self.board.N_I2C:
                    self.log(proto.LOG_WARNING, "imu %s: board has no I2C bus %d: skipped" % (spec.site, spec.bus))
                    continue
                mux = self._mux(spec.bus, spec.mux) if spec.mux is not None else None
                self.slots.append(Slot(len(self.slots), spec.bus, mux, spec.channel, spec.site, spec.chip,
                                       spec.addr))
        else:
            self._scan()
        self.n = len(self.slots)
        for slot in self.slots:
            if not self._init_slot(slot, True):
                slot.retry_in = self.retry_ticks
                self.log(proto.LOG_WARNING, "imu %d (%s): no chip found" % (slot.index, slot.site))
        self.changed = False
        found = sum(1 for s in self.slots if s.ok)
        self.log(proto.LOG_INFO, "%d of %d IMU slots answering" % (found, self.n))

    def _scan(self):
        """Every IMU on every bus: first the chips on the bus itself (all muxes off), then behind
        each channel of each TCA9548A."""
        for b in range(self.board.N_I2C):
            try:
                i2c = self._bus(b)
                seen = i2c.scan()
            except OSError:
                continue
            muxes = [self._mux(b, a) for a in seen if MUX_FIRST <= a <= MUX_LAST]
            for mux in muxes:
                try:
                    mux.disable()
                except OSError:
                    pass
            direct = i2c.scan() if muxes else seen
            for a in direct:
                if a in IMU_ADDRESSES and len(self.slots) < proto.MAX_IMUS:
                    self.slots.append(Slot(len(self.slots), b, None, None, "imu%d" % len(self.slots), "auto", a))
            for mux in muxes:
                for ch in range(8):
                    try:
                        mux.select(ch)
                        behind = i2c.scan()
                    except OSError:
                        continue
                    for a in behind:
                        if a in IMU_ADDRESSES and a not in direct and len(self.slots) < proto.MAX_IMUS:
                            self.slots.append(Slot(len(self.slots), b, mux, ch, "imu%d" % len(self.slots), "auto", a))
                try:
                    mux.disable()
                except OSError:
                    pass
        if not self.slots:
            self.log(proto.LOG_WARNING, "bus scan found no IMU")

    def _select(self, slot):
        """Connect the slot's mux channel (and disconnect another mux on the same bus)."""
        active = self._active_mux[slot.bus]
        mux = slot.mux
        if mux is None:
            if active is not None:
                self._active_mux[slot.bus] = None
                active.disable()
            return
        if active is not None and active is not mux:
            self._active_mux[slot.bus] = None
            active.disable()
        mux.select(slot.channel)
        self._active_mux[slot.bus] = mux

    def _key(self, slot, addr):
        return (slot.bus, slot.mux_addr(), slot.channel, addr)

    def _free(self, slot, addr):
        owner = self._claimed.get(self._key(slot, addr))
        return owner is None or owner == slot.index

    def _find_imu(self, slot, i2c):
        for cls in detect.IMU_DRIVERS:
            if slot.want != "auto" and cls.__name__.lower() != slot.want:
                continue
            addrs = (slot.want_addr,) if slot.want_addr is not None else cls.ADDRESSES
            for a in addrs:
                if a in cls.ADDRESSES and self._free(slot, a) and cls.probe(i2c, a):
                    return cls, a
        return None

    def _init_slot(self, slot, first):
        """Find, reset and configure the slot's chip (and, the first time, its magnetometer).
        True when the slot is ready. Allocates: only at boot, on retries and on commands."""
        i2c = self._bus(slot.bus)
        try:
            self._select(slot)
            found = self._find_imu(slot, i2c)
            if found is None:
                return False
            cls, addr = found
            drv = cls(i2c, addr)
            chip = cls.CHIP
            gyro = self.gyro_range_dps or DEFAULT_GYRO_DPS.get(chip, FALLBACK_GYRO_DPS)
            try:
                drv.configure(self.accel_range_g, gyro, self.rate_hz)
            except ValueError as exc:
                gyro = DEFAULT_GYRO_DPS.get(chip, FALLBACK_GYRO_DPS)
                self.log(proto.LOG_WARNING, "imu %d (%s): %s: using %d dps" % (slot.index, slot.site, exc, gyro))
                drv.configure(self.accel_range_g, gyro, self.rate_hz)
            if first:
                for a in Qmc5883p.ADDRESSES:
                    if self._free(slot, a) and Qmc5883p.probe(i2c, a):
                        slot.mag = Qmc5883p(i2c, a)
                        slot.mag_addr = a
                        slot.has_mag = True
                        self._claimed[self._key(slot, a)] = slot.index
                        break
            elif slot.has_mag:
                slot.mag = Qmc5883p(i2c, slot.mag_addr)
            if slot.mag is not None:
                slot.mag.configure(self.mag_range_gauss, self.rate_hz)
                slot.mag_range_gauss = self.mag_range_gauss
        except OSError:
            return False
        if slot.chip != chip or slot.addr != addr:
            self.changed = True
        if slot.addr and slot.addr != addr:
            self._claimed.pop(self._key(slot, slot.addr), None)
        self._claimed[self._key(slot, addr)] = slot.index
        slot.drv = drv
        slot.chip = chip
        slot.addr = addr
        slot.accel_range_g = self.accel_range_g
        slot.gyro_range_dps = gyro
        slot.ok = True
        return True

    # ---- reconfiguration (commands)

    def any_ok(self):
        """False when no chip answers (nothing could take a new setting)."""
        for slot in self.slots:
            if slot.ok:
                return True
        return False

    def set_rate(self, rate_hz):
        """Tell every chip the new rate (its filters follow it). Returns a NACK code or 0."""
        self.rate_hz = rate_hz
        self.retry_ticks = max(1, rate_hz // 10)
        return self._configure_all(self.accel_range_g, self.gyro_range_dps, self.mag_range_gauss)

    def set_ranges(self, accel_range_g, gyro_range_dps, mag_range_gauss):
        """All chips to the new full scales, or none of them. Returns a NACK code or 0."""
        if accel_range_g not in proto.ACCEL_RANGES_G or mag_range_gauss not in proto.MAG_RANGES_GAUSS:
            return proto.ERR_BAD_VALUE
        old = (self.accel_range_g, self.gyro_range_dps, self.mag_range_gauss)
        err = self._configure_all(accel_range_g, gyro_range_dps, mag_range_gauss)
        if err:
            self._configure_all(old[0], old[1], old[2])
        return err

    def _configure_all(self, accel_range_g, gyro_range_dps, mag_range_gauss):
        err = 0
        for slot in self.slots:
            if not slot.ok:
                continue
            gyro = gyro_range_dps or DEFAULT_GYRO_DPS.get(slot.chip, FALLBACK_GYRO_DPS)
            try:
                self._select(slot)
                slot.drv.configure(accel_range_g, gyro, self.rate_hz)
                slot.accel_range_g = accel_range_g
                slot.gyro_range_dps = gyro
                if slot.mag is not None:
                    slot.mag.configure(mag_range_gauss, self.rate_hz)
                    slot.mag_range_gauss = mag_range_gauss
            except ValueError:
                return proto.ERR_BAD_VALUE
            except OSError:
                err = proto.ERR_HARDWARE
        self.accel_range_g = accel_range_g
        self.gyro_range_dps = gyro_range_dps
        self.mag_range_gauss = mag_range_gauss
        return err

    # ---- frame layout and the read path

    def sample_bytes(self):
        """Bytes of one sample of every IMU (the stride between samples in SAMPLES data)."""
        return sum(18 if s.has_mag else 12 for s in self.slots)

    def bind(self, buf, status_off, data_off, spf):
        """Make the per-sample, per-slot views into `buf` once."""
        self._buf = buf
        self._status_off = status_off
        mv = memoryview(buf)
        stride = self.sample_bytes()
        self._views = []
        self._mag_views = []
        for k in range(spf):
            off = data_off + k * stride
            views = []
            mags = []
            for slot in self.slots:
                views.append(mv[off:off + 12])
                if slot.has_mag:
                    mags.append(mv[off + 12:off + 18])
                    off += 18
                else:
                    mags.append(None)
                    off += 12
            self._views.append(views)
            self._mag_views.append(mags)

    @micropython.native
    def begin_frame(self):
        buf = self._buf
        off = self._status_off
        for i in range(self.n):
            buf[off + i] = proto.ST_HAS_MAG if self.slots[i].has_mag else 0

    @micropython.native  # the per-tick path: machine code on every port
    def read(self, k):
        """Read sample k of every slot into the frame buffer; status bits accumulate per frame."""
        views = self._views[k]
        mags = self._mag_views[k]
        buf = self._buf
        so = self._status_off
        slots = self.slots
        for i in range(self.n):
            slot = slots[i]
            v = views[i]
            if not slot.ok:
                slot.retry_in -= 1
                if slot.retry_in > 0 or not self._retry(slot, i):
                    _mark(v, 12)
                    if mags[i] is not None:
                        _mark(mags[i], 6)
                    buf[so + i] |= proto.ST_STALE
                    continue
            try:
                self._select(slot)
                slot.drv.read_into(v)
            except OSError:
                self._fail(slot, i, v, mags[i])
                continue
            bits = _check(v)
            m = mags[i]
            if m is not None:
                try:
                    slot.mag.read_into(m)
                except OSError:
                    _mark(m, 6)
                    bits |= proto.ST_MAG_STALE | proto.ST_I2C_ERROR
                    if slot.i2c_errors < U16_MAX:
                        slot.i2c_errors += 1
            if bits:
                buf[so + i] |= bits

    def _fail(self, slot, i, v, m):
        slot.ok = False
        slot.retry_in = self.retry_ticks
        if slot.i2c_errors < U16_MAX:
            slot.i2c_errors += 1
        _mark(v, 12)
        if m is not None:
            _mark(m, 6)
        self._buf[self._status_off + i] |= proto.ST_STALE | proto.ST_I2C_ERROR

    def _retry(self, slot, i):
        """Try to bring a failed slot back (allocates; only every retry_ticks)."""
        if self._init_slot(slot, False):
            self._buf[self._status_off + i] |= proto.ST_REINIT
            self.log(proto.LOG_INFO, "imu %d (%s): chip answers again, re-initialised" % (slot.index, slot.site))
            return True
        slot.retry_in = self.retry_ticks
        if slot.i2c_errors < U16_MAX:
            slot.i2c_errors += 1
        self._buf[self._status_off + i] |= proto.ST_I2C_ERROR
        return False

    def temperature_cdeg(self):
        """First answering IMU's temperature in 0.01 degC, or None (allocates a float)."""
        for slot in self.slots:
            if slot.ok:
                try:
                    self._select(slot)
                    return int(slot.drv.temperature_c() * 100)
                except OSError:
                    return None
        return None


# The two helpers below run once per IMU-sample: viper (machine code on every port, no heap)
# makes them several times cheaper than the same loops in bytecode.

@micropython.viper
def _mark(v, n: int):
    """The n bytes of view v to -32768 per int16, the wire's 'could not read' marker."""
    p = ptr8(v)
    j = 0
    while j < n:
        p[j] = 0x00
        p[j + 1] = 0x80
        j += 2


@micropython.viper
def _check(v) -> int:
    """Status bits of one 6-axis reading (12 bytes, int16 LE): STALE when the driver marked it
    -32768 (the chip had no valid data), else ACCEL_SAT / GYRO_SAT for values at full scale."""
    p = ptr8(v)
    if p[1] == 0x80 and p[0] == 0:
        return 0x01  # ST_STALE
    bits = 0
    j = 0
    while j < 12:
        hi = p[j + 1]
        if (hi == 0x7F and p[j] == 0xFF) or (hi == 0x80 and p[j] <= 1):
            bits |= 0x04 if j < 6 else 0x08  # ST_ACCEL_SAT, ST_GYRO_SAT
        j += 2
    return bits
