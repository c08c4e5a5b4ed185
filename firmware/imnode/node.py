"""The node: boot, the sample-pack-send loop, commands, time sync, STATUS and the watchdog.

One call of `Node.step()` is one sample tick: answer whatever arrived on the link, wait for the
tick, read every IMU into the SAMPLES buffer, send the frame when it is full, send STATUS once a
second, feed the watchdog. In the steady state (nothing arriving, no chip failing) a step
allocates nothing: every frame buffer and the views into it are made when the stream is
configured (boot, SET_RATE, SET_RANGES). One known exception, outside the per-tick path: the
temperature in STATUS (a float) is refreshed once a minute.
"""

import gc
import struct

from micropython import const

from imnode import FW_VERSION, config, hal, proto
from imnode.clock import DeviceClock, Schedule
from imnode.link import open_link
from imnode.sampler import Sampler

WDT_TIMEOUT_MS = const(8000)
RX_SIZE = const(512)
CHUNK_SIZE = const(256)
MAX_COMMAND_PAYLOAD = const(64)  # longer frames from the host are not commands we know
OUT_SIZE = const(2048)  # HELLO with 16 slots and 64-byte site names still fits
TEMP_EVERY_S = const(60)
POLL_SLICE_US = const(1000)
HOLD_FILE = "imnode.hold"
# payload offsets of SAMPLES fields
T_FIRST = const(10)
PERIOD = const(18)
N_SAMPLES = const(22)
STATUS_BYTES = const(26)
# argument bytes each command takes
ARG_BYTES = {
    proto.CMD_START: 0, proto.CMD_STOP: 0, proto.CMD_SET_RATE: 2, proto.CMD_SET_RANGES: 4,
    proto.CMD_IDENTIFY: 2, proto.CMD_REBOOT: 0, proto.CMD_GET_HELLO: 0, proto.CMD_GET_STATUS: 0,
}


class Node:
    def __init__(self, board, cfg, problems=()):
        # The device clock starts at its first reading: make it before anything reads the ticks.
        self.clock = DeviceClock(board)
        self.board = board
        self.cfg = cfg
        self.node_id = cfg.node_id
        self.problems = list(cfg.problems) + [(proto.LOG_WARNING, p) for p in problems]
        self.sched = Schedule(board, self.clock)
        self._sleep_us = board.sleep_us
        self._wdt_feed = board.wdt_feed
        self.seq = 0
        self.boot_id = board.boot_id()
        self.streaming = cfg.autostart
        self.rate_hz = cfg.rate_hz
        self.period_us = 1000000 // cfg.rate_hz
        self.spf = 1  # set with the buffers by _configure_stream()
        self.stride = 0
        self.full_len = 0
        self.k = 0  # samples in the frame being filled
        self.ticks_in_second = 0
        self.seconds = 0
        self.frames_dropped = 0
        self.ticks_missed = 0
        self.temp_cdeg = proto.UNKNOWN_TEMP
        self.identify_ticks = 0
        self.out = bytearray(OUT_SIZE)
        self.rx = bytearray(RX_SIZE)
        self.rx_n = 0
        self.chunk = bytearray(CHUNK_SIZE)
        self.chunk_view = memoryview(self.chunk)
        self.t1_hi = 0
        self.t1_lo = 0
        # Two Ctrl-C bytes outside any frame on the serial link: a REPL tool (mpremote) wants the
        # board, and keyboard interrupts are off while the node runs.
        self.repl_escape = getattr(board, "REPL_ESCAPE", True)
        self.ctrl_c = 0
        self.sampler = Sampler(board, cfg)
        self.sbuf = bytearray(0)

    # ---- boot

    def boot(self):
        self.sampler.setup()
        link, problem = open_link(self.board, self.cfg)
        self.link = link
        if problem:
            self.problems.append((proto.LOG_WARNING, problem))
        self._configure_stream()
        self._send_hello(0)
        for level, text in self.problems:
            self._send_log(level, text)
        self.problems = []
        self._send_sampler_logs()
        self._refresh_temperature()
        self.board.wdt_start(WDT_TIMEOUT_MS)
        gc.collect()

    def _configure_stream(self):
        """(Re)build the SAMPLES and STATUS buffers and their views, restart the schedule."""
        sampler = self.sampler
        n = sampler.n
        self.period_us = 1000000 // self.rate_hz
        self.spf = self.cfg.samples_per_frame or max(1, self.rate_hz // 50)
        self.stride = sampler.sample_bytes()
        self.full_len = proto.SAMPLES_FIXED + n + self.spf * self.stride
        while self.full_len > proto.MAX_PAYLOAD and self.spf > 1:
            self.spf -= 1
            self.full_len = proto.SAMPLES_FIXED + n + self.spf * self.stride
        self.sbuf = bytearray(0)  # let the old buffer go before the new one is made
        gc.collect()
        self.sbuf = bytearray(proto.OVERHEAD + self.full_len)
        mv = memoryview(self.sbuf)
        self.s_out_view = mv[:proto.OVERHEAD + self.full_len]
        struct.pack_into("<IBBH", self.sbuf, PERIOD, self.period_us, self.spf, n, 0)
        sampler.bind(self.sbuf, STATUS_BYTES, STATUS_BYTES + n, self.spf)
        status_len = proto.STATUS_FIXED + 4 * n
        self.stbuf = bytearray(proto.OVERHEAD + status_len)
        mv = memoryview(self.stbuf)
        self.st_len = status_len
        self.st_out_view = mv[:proto.OVERHEAD + status_len]
        self.k = 0
        self.ticks_in_second = 0
        self.sched.start(self.period_us, self.period_us)

    # ---- the loop

    def run(self, max_iterations=-1):
        while max_iterations != 0:
            self.step()
            if max_iterations > 0:
                max_iterations -= 1

    def step(self):
        sched = self.sched
        self._poll_link()
        wait = sched.until()
        # Wait in slices, reading the link between them: a TIME_SYNC_REQ's t1 is then at most one
        # slice after its arrival, not up to a whole period.
        while wait > POLL_SLICE_US:
            self._sleep_us(POLL_SLICE_US)
            self._poll_link()
            wait = sched.until()
        if wait > 0:
            self._sleep_us(wait)
        elif wait <= -self.period_us:
            # Overran by whole periods: skip those ticks (a frame holds evenly spaced samples only).
            missed = (-wait) // self.period_us
            self.ticks_missed += missed
            self.ticks_in_second += missed
            if self.k:
                self._send_samples(self.k)
                self.k = 0
            sched.advance(missed)
        self.clock.update()
        if self.streaming and self.link.has_peer:
            sampler = self.sampler
            if self.k == 0:
                sampler.begin_frame()
                sched.pack(self.sbuf, T_FIRST)
            sampler.read(self.k)
            self.k += 1
            if self.k == self.spf:
                self._send_samples(self.spf)
                self.k = 0
            if sampler.messages:
                self._send_sampler_logs()
            if sampler.changed:
                sampler.changed = False
                self._send_hello(0)
        sched.advance(1)
        self.ticks_in_second += 1
        if self.ticks_in_second >= self.rate_hz:
            self._every_second()
        if self.identify_ticks > 0:
            self._blink()
        self._wdt_feed()

    def _every_second(self):
        self.ticks_in_second = 0
        self.seconds += 1
        if self.seconds >= TEMP_EVERY_S:
            self.seconds = 0
            self._refresh_temperature()
        self._send_status()
        if not self.link.has_peer:
            self._send_hello(proto.FLAG_ANNOUNCE)

    def _blink(self):
        self.identify_ticks -= 1
        half = self.rate_hz // 10  # 5 Hz blink
        self.board.led(self.identify_ticks > 0 and (self.identify_ticks // half) % 2 == 0)

    # ---- sending

    def _next_seq(self):
        seq = self.seq
        self.seq = (seq + 1) & 0xFFFF
        return seq

    def _send(self, mv):
        if not self.link.write(mv):
            self.frames_dropped += 1

    def _send_samples(self, n):
        buf = self.sbuf
        if n == self.spf:
            length = self.full_len
            out = self.s_out_view
        else:  # a short frame before skipped ticks (slices, so allocates: not the steady state)
            length = proto.SAMPLES_FIXED + self.sampler.n + n * self.stride
            out = memoryview(buf)[:proto.OVERHEAD + length]
        buf[N_SAMPLES] = n
        proto.header(buf, proto.SAMPLES, 0, self.node_id, self._next_seq(), length)
        proto.seal(buf, length)
        self._send(out)

    def _send_status(self):
        buf = self.stbuf
        self.clock.pack_now(buf, proto.PAYLOAD)
        struct.pack_into("<IIIhB", buf, proto.PAYLOAD + 8, self.board.mem_free(), self.frames_dropped,
                         self.ticks_missed, self.temp_cdeg, self.sampler.n)
        off = proto.PAYLOAD + proto.STATUS_FIXED
        for slot in self.sampler.slots:
            struct.pack_into("<HH", buf, off, slot.fifo_overflows, slot.i2c_errors)
            off += 4
        proto.header(buf, proto.STATUS, 0, self.node_id, self._next_seq(), self.st_len)
        proto.seal(buf, self.st_len)
        self._send(self.st_out_view)

    def _refresh_temperature(self):
        t = self.sampler.temperature_cdeg()
        if t is None:
            c = self.board.mcu_temp_c()
            t = int(c * 100) if c is not None else proto.UNKNOWN_TEMP
        self.temp_cdeg = max(-32767, min(32767, t)) if t != proto.UNKNOWN_TEMP else t

    def _send_out(self, size):
        self._send(memoryview(self.out)[:size])

    def _send_log(self, level, text):
        self._send_out(proto.pack_log(self.out, self.node_id, self._next_seq(), level, text))

    def _send_sampler_logs(self):
        messages = self.sampler.messages
        self.sampler.messages = []
        for level, text in messages:
            self._send_log(level, text)

    def _send_hello(self, flags):
        out = self.out
        p = proto.PAYLOAD
        struct.pack_into("<BBBB", out, p, FW_VERSION[0], FW_VERSION[1], FW_VERSION[2], proto.VERSION)
        p = proto.pack_str8(out, p + 4, self.board.NAME)
        uid = self.board.unique_id()[:8]
        for i in range(8):
            out[p + i] = uid[i] if i < len(uid) else 0
        p += 8
        struct.pack_into("<I", out, p, self.boot_id)
        p += 4
        sampler = self.sampler
        struct.pack_into("<HBBB", out, p, self.rate_hz, self.spf, self.link.KIND, sampler.n)
        p += 5
        for slot in sampler.slots:
            mag_chip = slot.mag.MAG_CHIP if slot.mag is not None else proto.MAG_NONE
            channel = slot.channel if slot.channel is not None else proto.NO_MUX_CHANNEL
            struct.pack_into("<BBBBBBB", out, p, slot.chip, mag_chip, slot.bus, slot.mux_addr(), channel,
                             slot.addr, slot.mag_addr)
            p = proto.pack_str8(out, p + 7, slot.site)
            drv = slot.drv
            struct.pack_into("<BHBfff", out, p, slot.accel_range_g, slot.gyro_range_dps,
                             slot.mag_range_gauss if slot.mag is not None else 0,
                             drv.accel_scale if drv is not None else 0.0,
                             drv.gyro_scale if drv is not None else 0.0,
                             slot.mag.mag_scale if slot.mag is not None else 0.0)
            p += 16
        length = p - proto.PAYLOAD
        proto.header(out, proto.HELLO, flags, self.node_id, self._next_seq(), length)
        size = proto.seal(out, length)
        if flags & proto.FLAG_ANNOUNCE:
            self.link.announce(memoryview(out)[:size])
        else:
            self._send_out(size)

    # ---- receiving

    def _poll_link(self):
        n = self.link.poll_read(self.chunk_view)
        if n == 0:
            return
        self.clock.update()  # t1 of a TIME_SYNC_REQ: when the request was read
        self.t1_hi = self.clock.hi
        self.t1_lo = self.clock.lo
        rx = self.rx
        if self.rx_n + n > RX_SIZE:
            self.rx_n = 0  # garbage filled the buffer: start over
        rx[self.rx_n:self.rx_n + n] = self.chunk[:n]
        self.rx_n += n
        self._parse_rx()

    def _parse_rx(self):
        rx = self.rx
        n = self.rx_n
        i = 0
        while i < n:
            if rx[i] == 0x03:
                self.ctrl_c += 1
                if self.ctrl_c >= 2 and self.repl_escape and self.link.KIND == proto.LINK_SERIAL:
                    self._hold_at_repl()
            else:
                self.ctrl_c = 0
            if i + 1 >= n:
                if rx[i] != proto.SYNC0:
                    i += 1  # a lone last byte that cannot start a frame is consumed now
                break
            if rx[i] != proto.SYNC0 or rx[i + 1] != proto.SYNC1:
                i += 1
                continue
            size = proto.check_frame(rx, i, n - i, MAX_COMMAND_PAYLOAD)
            if size == 0:
                break
            if size < 0:
                i += 1
                continue
            self._handle_frame(i, size - proto.OVERHEAD)
            i += size
        if i:
            rx[0:n - i] = rx[i:n]
            self.rx_n = n - i

    def _handle_frame(self, start, length):
        rx = self.rx
        node_id = rx[start + 5]
        if node_id != self.node_id and node_id != proto.BROADCAST_ID:
            return
        msg_type = rx[start + 3]
        seq = rx[start + 6] | (rx[start + 7] << 8)
        p = start + proto.PAYLOAD
        if msg_type == proto.COMMAND:
            self.link.accept_peer()
            self._command(seq, p, length)
        elif msg_type == proto.TIME_SYNC_REQ and length == proto.TIME_SYNC_REQ_SIZE:
            self._time_sync_reply(p)

    def _time_sync_reply(self, p):
        out = self.out
        base = proto.PAYLOAD
        out[base:base + proto.TIME_SYNC_REQ_SIZE] = self.rx[p:p + proto.TIME_SYNC_REQ_SIZE]
        proto.pack_u64(out, base + 12, self.t1_hi, self.t1_lo)
        length = proto.TIME_SYNC_REPLY_SIZE
        proto.header(out, proto.TIME_SYNC_REPLY, 0, self.node_id, self._next_seq(), length)
        self.clock.pack_now(out, base + 20)  # t2: just before the reply is written
        self._send_out(proto.seal(out, length))

    def _hold_at_repl(self):
        """Reboot into the REPL: the watchdog cannot be stopped, so only a fresh boot that skips
        the node (see main) leaves the board to a REPL tool for as long as it needs."""
        try:
            with open(HOLD_FILE, "w") as f:
                f.write("held by Ctrl-C on the serial link\n")
        except OSError:
            pass
        self.board.reset()

    def _ack(self, cmd_seq, command):
        self._send_out(proto.pack_ack(self.out, self.node_id, self._next_seq(), cmd_seq, command))

    def _nack(self, cmd_seq, command, error):
        self._send_out(proto.pack_nack(self.out, self.node_id, self._next_seq(), cmd_seq, command, error))

    def _command(self, cmd_seq, p, length):
        rx = self.rx
        if length < 1:
            self._nack(cmd_seq, 0, proto.ERR_BAD_LENGTH)
            return
        cmd = rx[p]
        expected = ARG_BYTES.get(cmd)
        if expected is None:
            self._nack(cmd_seq, cmd, proto.ERR_UNKNOWN_COMMAND)
            return
        if length - 1 != expected:
            self._nack(cmd_seq, cmd, proto.ERR_BAD_LENGTH)
            return
        a = p + 1
        if cmd == proto.CMD_START:
            self._ack(cmd_seq, cmd)
            if not self.streaming:
                self.streaming = True
                self.k = 0
        elif cmd == proto.CMD_STOP:
            self._ack(cmd_seq, cmd)
            self.streaming = False
            self.k = 0  # the partial frame is dropped
        elif cmd == proto.CMD_SET_RATE:
            rate = rx[a] | (rx[a + 1] << 8)
            if rate not in proto.RATES_HZ:
                self._nack(cmd_seq, cmd, proto.ERR_BAD_VALUE)
                return
            if not self.sampler.any_ok():
                self._nack(cmd_seq, cmd, proto.ERR_BAD_STATE)
                return
            err = self.sampler.set_rate(rate)
            if err:
                self._nack(cmd_seq, cmd, err)
                return
            self._ack(cmd_seq, cmd)
            self.rate_hz = rate
            self._configure_stream()
            self._send_hello(0)
        elif cmd == proto.CMD_SET_RANGES:
            accel = rx[a]
            gyro = rx[a + 1] | (rx[a + 2] << 8)
            mag = rx[a + 3]
            if not self.sampler.any_ok():
                self._nack(cmd_seq, cmd, proto.ERR_BAD_STATE)
                return
            err = self.sampler.set_ranges(accel, gyro, mag)
            if err:
                self._nack(cmd_seq, cmd, err)
                return
            self._ack(cmd_seq, cmd)
            self._configure_stream()
            self._send_hello(0)
        elif cmd == proto.CMD_IDENTIFY:
            duration_ms = rx[a] | (rx[a + 1] << 8)
            self._ack(cmd_seq, cmd)
            self.identify_ticks = max(1, duration_ms * self.rate_hz // 1000)
            self.board.led(True)
        elif cmd == proto.CMD_REBOOT:
            self._ack(cmd_seq, cmd)
            self.board.reset()
        elif cmd == proto.CMD_GET_HELLO:
            self._ack(cmd_seq, cmd)
            self._send_hello(0)
        elif cmd == proto.CMD_GET_STATUS:
            self._ack(cmd_seq, cmd)
            self._refresh_temperature()
            self._send_status()


def make_node():
    """Config, board and node, ready for boot() (tests build nodes this way too)."""
    cfg = config.load(hal.config_path())
    board, problem = hal.load_board(cfg.board)
    return Node(board, cfg, (problem,) if problem else ())


def _held():
    """True once after a Ctrl-C escape: the hold file is removed, so the next reset runs the node."""
    import os

    try:
        os.remove(HOLD_FILE)
    except OSError:
        return False
    return True


def main():
    if _held():
        print("imnode: stopped by Ctrl-C on the serial link; the REPL is yours (reset to run the node)")
        return
    node = make_node()
    node.boot()
    try:
        node.run()
    except Exception as exc:
        # Say why before the watchdog (or the emulator) restarts us.
        try:
            node._send_log(proto.LOG_ERROR, "node stopped: %r" % (exc,))
        except Exception:
            pass
        raise
