"""Signal sources for the emulated chips: the physical values each IMU sees at device time t.

A source has one method, `read(imu_index, t_us, out)`, filling a preallocated `array('i', 9)`:

    out[0:3]  specific force (accelerometer)  um/s^2  (1e-6 m/s^2)
    out[3:6]  angular rate (gyroscope)        urad/s
    out[6:9]  magnetic field                  nT      (1 uT = 1000 nT)

in the chip's own axes. Everything is integer fixed point, so a read allocates nothing under
MicroPython and gives bit-identical values in MicroPython and CPython: the host tests recompute
exactly what the emulated chips were fed.

Sources here: `SimpleMotion` (synthetic head/face motion), `ConstantSource` (fixed values, for tests
and saturation), `TableSource` (replays a recorded or simulated file; the seam for the face
simulator and real recordings). Any object with the same `read` can be plugged in.
"""
from array import array
import struct

CHANNELS = 9
STANDARD_GRAVITY_UMPS2 = 9806650

# Phase: 2^20 units per turn. Sine table: 4096 steps per turn plus one guard entry, Q16 (65536 = 1).
_PHASE_BITS = 20
_PHASE_MASK = (1 << _PHASE_BITS) - 1
_QUARTER_TURN = 1 << (_PHASE_BITS - 2)
_TABLE_BITS = 12
_FRAC_BITS = _PHASE_BITS - _TABLE_BITS
_FRAC_MASK = (1 << _FRAC_BITS) - 1
_HALF_PI_Q30 = 1686629713  # round(pi / 2 * 2^30)
_FOUR_PI_SQUARED_E6 = 39478418  # round(4 * pi^2 * 1e6)


def _sin_q30(x_q30):
    """sin(x) for 0 <= x <= pi/2, both Q30, by its Taylor series in integers (exact everywhere)."""
    x2 = (x_q30 * x_q30) >> 30
    term = x_q30
    total = x_q30
    for k in range(1, 11):
        term = -((term * x2) >> 30) // ((2 * k) * (2 * k + 1))
        total += term
    return total


def _build_sine_table():
    steps = 1 << _TABLE_BITS
    quarter = steps // 4
    table = array("i", [0] * (steps + 1))
    for i in range(quarter + 1):
        table[i] = (_sin_q30(i * _HALF_PI_Q30 // quarter) + (1 << 13)) >> 14
    for i in range(1, quarter + 1):
        table[quarter + i] = table[quarter - i]
    for i in range(1, 2 * quarter):
        table[2 * quarter + i] = -table[i]
    return table


_SINE = _build_sine_table()


def sin_q16(phase):
    """sin of `phase` (2^20 units per turn) in Q16, linearly interpolated from the table."""
    p = phase & _PHASE_MASK
    i = p >> _FRAC_BITS
    a = _SINE[i]
    return a + (((_SINE[i + 1] - a) * (p & _FRAC_MASK)) >> _FRAC_BITS)


def cos_q16(phase):
    return sin_q16(phase + _QUARTER_TURN)


def rate_per_us_q16(freq_mhz):
    """Phase units per microsecond (Q16) of an oscillation at `freq_mhz` millihertz."""
    return (freq_mhz << (_PHASE_BITS + 16)) // 1000000000


def _mix32(x):
    """A 32-bit integer hash: deterministic parameters from (seed, imu, k) on every Python."""
    x &= 0xFFFFFFFF
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
    return x ^ (x >> 16)


class Source:
    """The interface: fill `out` (array('i', 9)) with IMU `imu_index`'s values at `t_us`."""

    def read(self, imu_index, t_us, out):
        raise NotImplementedError


class ConstantSource(Source):
    """Fixed values: `values` is one 9-sequence for every IMU, or a list of them, one per IMU."""

    def __init__(self, values):
        if len(values) == CHANNELS and not hasattr(values[0], "__len__"):
            values = [values]
        self._rows = [array("i", row) for row in values]

    def read(self, imu_index, t_us, out):
        row = self._rows[imu_index % len(self._rows)]
        for i in range(CHANNELS):
            out[i] = row[i]


# SimpleMotion parameter slots, per IMU.
_P_ROLL, _P_PITCH, _P_YAW = 0, 4, 8  # each: base, amplitude (phase units), rate (Q16), phase
_P_RATE_AMP = 12  # 3 gyro amplitudes of the tilt oscillators, urad/s
_P_ACCEL = 15  # 3 x (amplitude um/s^2, rate, phase)
_P_GYRO = 24  # 3 x (amplitude urad/s, rate, phase)
_N_PARAMS = 33


class SimpleMotion(Source):
    """Deterministic, smooth, plausible motion for up to `n_imus` IMUs.

    Each IMU sits at its own base tilt and slowly sways (roll and pitch 0.1..0.3 rad at
    0.05..0.2 Hz, yaw 0.2..0.5 rad at 0.03..0.1 Hz). The accelerometer sees gravity rotated into
    that tilt plus small per-axis sinusoids (0.05..0.4 m/s^2 at 0.5..6 Hz); the gyroscope sees the
    sway rates plus small sinusoids (0.05..0.5 rad/s); the magnetometer sees a 49 uT field (20 uT
    north, 45 uT down) rotated by yaw, pitch and roll. The parameters depend on `seed` and the IMU
    index only.
    """

    def __init__(self, seed=0, n_imus=16):
        self.seed = seed
        self._params = []
        for imu in range(n_imus):
            self._params.append(self._make_params(seed, imu))

    @staticmethod
    def _make_params(seed, imu):
        counter = [0]

        def pick(lo, hi):
            counter[0] += 1
            h = _mix32(_mix32(seed * 0x9E3779B1 + imu) + counter[0] * 0x85EBCA6B)
            return lo + h % (hi - lo + 1)

        turn = 1 << _PHASE_BITS
        rad = turn * 1000 // 6283  # phase units per radian, near enough for choosing amplitudes
        p = [0] * _N_PARAMS
        for slot, base_max, amp_lo, amp_hi, f_lo, f_hi in (
                (_P_ROLL, rad * 6 // 10, rad // 10, rad * 3 // 10, 50, 200),
                (_P_PITCH, rad * 6 // 10, rad // 10, rad * 3 // 10, 50, 200),
                (_P_YAW, turn // 2, rad // 5, rad // 2, 30, 100)):
            freq_mhz = pick(f_lo, f_hi)
            p[slot] = pick(-base_max, base_max)
            p[slot + 1] = pick(amp_lo, amp_hi)
            p[slot + 2] = rate_per_us_q16(freq_mhz)
            p[slot + 3] = pick(0, turn - 1)
            # d/dt (A sin(w t)) peaks at A w: phase units -> rad (2 pi / 2^20), w = 2 pi f.
            p[_P_RATE_AMP + slot // 4] = (p[slot + 1] * freq_mhz * _FOUR_PI_SQUARED_E6
                                          // 1000 // turn)
        for axis in range(3):
            p[_P_ACCEL + 3 * axis] = pick(50000, 400000)
            p[_P_ACCEL + 3 * axis + 1] = rate_per_us_q16(pick(500, 6000))
            p[_P_ACCEL + 3 * axis + 2] = pick(0, turn - 1)
            p[_P_GYRO + 3 * axis] = pick(50000, 500000)
            p[_P_GYRO + 3 * axis + 1] = rate_per_us_q16(pick(500, 6000))
            p[_P_GYRO + 3 * axis + 2] = pick(0, turn - 1)
        return array("i", p)

    def read(self, imu_index, t_us, out):
        p = self._params[imu_index]
        roll_arg = ((t_us * p[2]) >> 16) + p[3]
        pitch_arg = ((t_us * p[6]) >> 16) + p[7]
        yaw_arg = ((t_us * p[10]) >> 16) + p[11]
        roll = p[0] + ((p[1] * sin_q16(roll_arg)) >> 16)
        pitch = p[4] + ((p[5] * sin_q16(pitch_arg)) >> 16)
        yaw = p[8] + ((p[9] * sin_q16(yaw_arg)) >> 16)
        sr = sin_q16(roll)
        cr = cos_q16(roll)
        sp = sin_q16(pitch)
        cp = cos_q16(pitch)
        sy = sin_q16(yaw)
        cy = cos_q16(yaw)

        # A world vector (north, east, up) seen in the sensor frame: yaw, then pitch, then roll.
        # Gravity's specific force is (0, 0, +g) and unaffected by yaw.
        g_up = (STANDARD_GRAVITY_UMPS2 * cp) >> 16
        out[0] = -((STANDARD_GRAVITY_UMPS2 * sp) >> 16)
        out[1] = (g_up * sr) >> 16
        out[2] = (g_up * cr) >> 16
        # Field: 20 uT north, 45 uT down.
        wx = (20000 * cy) >> 16
        wy = -((20000 * sy) >> 16)
        wz = -45000
        x1 = (wx * cp - wz * sp) >> 16
        z1 = (wx * sp + wz * cp) >> 16
        out[6] = x1
        out[7] = (wy * cr + z1 * sr) >> 16
        out[8] = (z1 * cr - wy * sr) >> 16
        # Gyro: the sway rates (small-angle: roll about x, pitch about y, yaw about z).
        out[3] = (p[12] * cos_q16(roll_arg)) >> 16
        out[4] = (p[13] * cos_q16(pitch_arg)) >> 16
        out[5] = (p[14] * cos_q16(yaw_arg)) >> 16
        for axis in range(3):
            a = _P_ACCEL + 3 * axis
            out[axis] += (p[a] * sin_q16(((t_us * p[a + 1]) >> 16) + p[a + 2])) >> 16
            g = _P_GYRO + 3 * axis
            out[3 + axis] += (p[g] * sin_q16(((t_us * p[g + 1]) >> 16) + p[g + 2])) >> 16


# TableSource file format (little-endian):
#   offset 0   8 bytes  magic b"IMUSRC01"
#   offset 8   u32      period_us: row k holds the values at t = k * period_us
#   offset 12  u16      n_imus
#   offset 14  u16      n_channels, 9
#   offset 16  rows     each row: n_imus x 9 x i32 (accel um/s^2, gyro urad/s, mag nT per IMU)
TABLE_MAGIC = b"IMUSRC01"
TABLE_HEADER_BYTES = 16


def write_table(path, period_us, n_imus, rows):
    """Write a TableSource file; each row is a flat sequence of n_imus * 9 ints."""
    fmt = "<%di" % (n_imus * CHANNELS)
    with open(path, "wb") as f:
        f.write(TABLE_MAGIC)
        f.write(struct.pack("<IHH", period_us, n_imus, CHANNELS))
        for row in rows:
            f.write(struct.pack(fmt, *row))


class TableSource(Source):
    """Replays a file of precomputed rows (face simulator output, real recordings).

    Between rows the values are interpolated linearly (integer, floor). Past the last row the
    table repeats from row 0 when `loop` is true (the seam from the last row back to row 0 is
    interpolated too), else the last row holds. Times before 0 read row 0. `start_us` is the device
    time of row 0 (default 0): a simulated take starts where the node's clock starts, however long
    the node had been up.

    The file is read a block of rows at a time into one preallocated array (native int32: hosts are
    little-endian, like the file), so a take of any length fits the emulator's small heap and reads
    stay cheap: the firmware walks the table forwards, one row per tick.
    """

    BLOCK_ROWS = 512

    def __init__(self, path, loop=True, start_us=0):
        self._file = open(path, "rb")
        head = self._file.read(TABLE_HEADER_BYTES)
        if len(head) < TABLE_HEADER_BYTES or head[:8] != TABLE_MAGIC:
            raise ValueError("not an IMU source table: %s" % path)
        self.period_us, self.n_imus, n_channels = struct.unpack("<IHH", head[8:TABLE_HEADER_BYTES])
        if n_channels != CHANNELS or self.period_us == 0 or self.n_imus == 0:
            raise ValueError("bad IMU source table header: %s" % path)
        row_bytes = 4 * CHANNELS * self.n_imus
        body = self._file.seek(0, 2) - TABLE_HEADER_BYTES
        if body <= 0 or body % row_bytes:
            raise ValueError("IMU source table %s: body is not a whole number of rows" % path)
        self.n_rows = body // row_bytes
        self.loop = loop
        self.start_us = start_us
        self._row_bytes = row_bytes
        self._stride = CHANNELS * self.n_imus
        rows = min(self.BLOCK_ROWS, self.n_rows)
        self._block = array("i", [0] * (rows * self._stride))
        self._first = -1  # table row held at the block's start; -1: nothing yet
        self._rows = 0  # rows the block holds
        self._row0 = array("i", [0] * self._stride)  # row 0 stays at hand for the loop's seam
        self._file.seek(TABLE_HEADER_BYTES)
        self._file.readinto(self._row0)

    def _load(self, row):
        """Fill the block with the rows from `row` on."""
        self._file.seek(TABLE_HEADER_BYTES + row * self._row_bytes)
        self._file.readinto(self._block)  # near the end it fills only part: `_rows` says how much
        self._first = row
        self._rows = min(len(self._block) // self._stride, self.n_rows - row)

    def _at(self, row):
        """The array and offset holding `row` (loads its block on a miss)."""
        if row == 0:
            return self._row0, 0
        k = row - self._first
        if self._first < 0 or k < 0 or k >= self._rows:
            self._load(row)
            k = 0
        return self._block, k * self._stride

    def read(self, imu_index, t_us, out):
        if not 0 <= imu_index < self.n_imus:
            raise IndexError("IMU index out of the table")
        period = self.period_us
        n = self.n_rows
        t_us -= self.start_us
        if t_us < 0:
            t_us = 0
        if self.loop:
            t_us %= n * period
        row = t_us // period
        col = imu_index * CHANNELS
        if row >= n - 1 and not self.loop:
            a, o = self._at(n - 1)
            for ch in range(CHANNELS):
                out[ch] = a[o + col + ch]
            return
        frac = t_us - row * period
        k = row - self._first
        if row and self._first >= 0 and 0 <= k < self._rows:  # the usual case, inline: one row per tick
            a, o = self._block, k * self._stride + col
        else:
            a, o = self._at(row)
            o += col
        if frac == 0:  # on a row: the simulator's ticks land exactly on rows
            for ch in range(CHANNELS):
                out[ch] = a[o + ch]
            return
        for ch in range(CHANNELS):
            out[ch] = a[o + ch]
        nxt = row + 1 if row + 1 < n else 0
        b, p = self._at(nxt)  # may move the block forward: `out` already holds this row
        p += col
        for ch in range(CHANNELS):
            v = out[ch]
            out[ch] = v + (b[p + ch] - v) * frac // period
