# Runs under MicroPython on the emulated board (imusic EmulatedNode.run_script). Times, in one run:
#   naive     a frame built the obvious way: each IMU read into new bytes, b"".join, struct.pack
#             header, crc32, concatenation
#   firmware  the firmware's own per-frame work: schedule stamp, per-IMU read into the frame buffer,
#             status and saturation checks, header, CRC, hand-off to the link
# Both read the same null chips (no bus time), so the difference is packing alone.
#   loop      the real node.step() loop, emulated I2C chips included (Python register emulation:
#             its cost is the emulator's, not a board's)
# and prints one line per case:  RESULT <case> <us per frame> <heap bytes per frame> <imu-samples per frame>
import gc
import struct
import sys
import time
from binascii import crc32

import imnode.node as node_mod
from imnode.node import make_node

FRAMES = int(sys.argv[1]) if len(sys.argv) > 1 else 2000


class NullDriver:
    """Stands in for a chip: `read_into` leaves the bytes the bus would have written in the frame
    buffer; `read` returns them as new bytes, as `I2C.readfrom_mem` does for a naive driver."""

    def __init__(self, offset):
        self.offset = offset

    def read_into(self, buf):
        pass

    def read(self):
        return raw[self.offset:self.offset + 12]


class NullLink:
    KIND = 2
    has_peer = True

    def write(self, mv):
        return True

    def poll_read(self, buf):
        return 0

    def announce(self, mv):
        pass


def measure(name, fn, frames, per_frame_samples):
    fn(8)  # warm up: lazily made objects, caches
    # Time with the collector on (collections are part of what allocation costs), heap bytes with
    # it off over fewer frames (so nothing is freed behind the count and the heap does not fill).
    gc.collect()
    t0 = time.ticks_us()
    fn(frames)
    dt = time.ticks_diff(time.ticks_us(), t0)
    gc.collect()
    gc.disable()
    a0 = gc.mem_alloc()
    fn(50)
    a1 = gc.mem_alloc()
    gc.enable()
    print("RESULT", name, dt / frames, (a1 - a0) / 50, per_frame_samples)


node = make_node()
node.boot()
sampler = node.sampler
n_imus = sampler.n
spf = node.spf
stride = sampler.sample_bytes()
raw = bytearray(spf * stride)
for i in range(len(raw)):
    raw[i] = (i * 37) & 0x7F


chips = [NullDriver(i * 12) for i in range(n_imus)]


def naive(frames):
    """Read each IMU into new bytes, collect, join, prepend the header, append the CRC."""
    seq = 0
    for f in range(frames):
        parts = [struct.pack("<QIBBH", f * 20000, node.period_us, spf, n_imus, 0), bytes(n_imus)]
        for k in range(spf):
            for chip in chips:
                parts.append(chip.read())
        payload = b"".join(parts)
        body = struct.pack("<BBBBHH", 1, 2, 0, 1, seq, len(payload)) + payload
        frame = b"\xa5\x5a" + body + struct.pack("<I", crc32(body))
        seq = (seq + 1) & 0xFFFF
    return frame


def loop(frames):
    node.run(frames * spf)


measure("loop", loop, FRAMES // 4, spf * n_imus)

# From here on, the firmware's own work without the bus: null chips, null link.
for slot in sampler.slots:
    slot.drv = chips[slot.index]
    slot.mag = None
sampler._select = lambda slot: None
node.link = NullLink()
sbuf = node.sbuf


def firmware(frames):
    for f in range(frames):
        sampler.begin_frame()
        node.sched.pack(sbuf, node_mod.T_FIRST)
        for k in range(spf):
            sampler.read(k)
        node._send_samples(spf)


measure("naive", naive, FRAMES, spf * n_imus)
measure("firmware", firmware, FRAMES, spf * n_imus)
