"""The board module for the unix port: what imnode.hal imports when sys.platform is 'linux'.

Reads its settings from the JSON file named by the IMUSIC_EMU environment variable (written by
imusic.emulation.launcher):

    config_path   where the node's node.json is (the launcher writes it)
    buses         number of I2C buses (default 2)
    imus          one entry per emulated IMU, in source order:
                  {"bus": 0, "mux": 112 or null, "channel": 0, "chip": "qmi8658"|"icm42688",
                   "addr": null (the chip's default), "mag": false,
                   "temp_cdeg": 3200 (optional: the chip's temperature register, 0.01 degC)}
    source        {"kind": "simple", "seed": 1} or {"kind": "table", "path": "...", "loop": true,
                  "start_us": 0 (optional: device time of the table's row 0)}
    clock         {"mode": "virtual"|"realtime", "start_us": 0, "drift_ppm": 0, "offset_us": 0}
                  (emu_clock: start_us places the raw tick counter, offset_us the device time)
    faults        [{"imu": 3, "from_us": 1000000, "to_us": 2000000}]: the IMU (and its magnetometer)
                  stops answering in that device-time window
    uid           8-byte unique id as hex (default from "emu" + node id)
    boot_seed     seed of boot_id() (with IMUSIC_EMU_BOOT, the boot number, from the launcher)
    max_seconds   device seconds after which the run ends cleanly (exit 0)
    max_frames    SAMPLES frames on the serial link after which the run ends cleanly
    reset_exit_code  exit status of reset(): the launcher restarts the node (a reboot)
    reboot_after_s   uptime in seconds at which the first boot resets itself (0: never)
    loss          fraction of SAMPLES frames dropped before they reach the link (0 .. 1)
    loss_seed     seed of the drop decisions (mixed with the boot number): runs repeat exactly

Frame loss is decided here, on the firmware's side of the link, so the sequence gaps the host sees
are real ones. Only SAMPLES frames are dropped (commands, their replies and HELLO stay reliable, so
a test of loss accounting is not also a test of retries). Every dropped frame is reported on
stderr as one line, ``emu: dropped SAMPLES seq N``, the truth that tests count against the
decoder's lost_frames (EmulatedNode.dropped_frames()).

The serial link is stdin/stdout, binary, like USB-CDC on a board.
"""

import gc
import json
import os
import sys

import emu_source
from emu_bus import EmuI2C, EmuMux
from emu_chips import Icm42688Emu, Qmc5883pEmu, Qmi8658Emu
from emu_clock import TICKS_PERIOD, EmuClock  # noqa: F401  (TICKS_PERIOD: board contract)

NAME = "emulated"
RESET_EXIT_CODE = 75
UDP_BROADCAST = "127.0.0.1"  # never broadcast from a test machine: announcements stay local
REPL_ESCAPE = False  # no REPL behind the emulated serial port: Ctrl-C bytes are just bytes
CHIP_CLASSES = {"qmi8658": Qmi8658Emu, "icm42688": Icm42688Emu}


def _load_settings():
    path = os.getenv("IMUSIC_EMU")
    if not path:
        return {}
    with open(path) as f:
        return json.load(f)


settings = _load_settings()
CONFIG_PATH = settings.get("config_path", "node.json")
N_I2C = settings.get("buses", 2)
_reset_code = settings.get("reset_exit_code", RESET_EXIT_CODE)
_clock_cfg = settings.get("clock", {})
max_seconds = settings.get("max_seconds") or 0
_boot_number = int(os.getenv("IMUSIC_EMU_BOOT") or 0)
_reboot_after_s = settings.get("reboot_after_s") or 0
clock = EmuClock(_clock_cfg.get("mode", "virtual"), _clock_cfg.get("start_us", 0),
                 _clock_cfg.get("drift_ppm", 0), int(max_seconds * 1000000), _clock_cfg.get("offset_us", 0),
                 int(_reboot_after_s * 1000000) if _boot_number == 0 else 0, _reset_code)


class _Loss:
    """Drops SAMPLES frames at a given rate with a seeded xorshift32, and reports each drop."""

    def __init__(self, rate, seed):
        self.threshold = int(rate * 4294967296)
        self.state = (seed * 2654435761 + 12345) & 0xFFFFFFFF or 1
        self.dropped = 0

    def drop(self, mv):
        if not self.threshold or len(mv) < 8 or mv[0] != 0xA5 or mv[3] != 0x02:
            return False
        x = self.state
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.state = x
        if x >= self.threshold:
            return False
        self.dropped += 1
        sys.stderr.write("emu: dropped SAMPLES seq %d\n" % (mv[6] | (mv[7] << 8)))
        return True


loss = _Loss(settings.get("loss") or 0, (settings.get("loss_seed") or 0) * 1000 + _boot_number)


def _make_source(spec, n_imus):
    kind = spec.get("kind", "simple")
    if kind == "simple":
        return emu_source.SimpleMotion(spec.get("seed", 0), max(16, n_imus))
    if kind == "table":
        return emu_source.TableSource(spec["path"], spec.get("loop", True), spec.get("start_us", 0))
    raise ValueError("emulated source kind must be simple or table")


def _build_buses():
    imus = settings.get("imus", [])
    source = _make_source(settings.get("source", {}), len(imus))
    windows = {}
    for fault in settings.get("faults", []):
        windows.setdefault(fault["imu"], []).append((fault["from_us"], fault["to_us"]))
    buses = [EmuI2C() for _ in range(N_I2C)]
    muxes = {}
    for i, imu in enumerate(imus):
        bus = buses[imu.get("bus", 0)]
        chip_cls = CHIP_CLASSES[imu.get("chip", "qmi8658")]
        addr = imu.get("addr") or chip_cls.ADDRESSES[0]
        fail = windows.get(i, ())
        chips = [chip_cls(source, i, clock, addr=addr, fail_windows=fail, temp_cdeg=imu.get("temp_cdeg", 3200))]
        if imu.get("mag"):
            chips.append(Qmc5883pEmu(source, i, clock, fail_windows=fail))
        mux_addr = imu.get("mux")
        for chip in chips:
            if mux_addr is None:
                bus.attach(chip)
            else:
                key = (imu.get("bus", 0), mux_addr)
                if key not in muxes:
                    muxes[key] = bus.attach(EmuMux(mux_addr, clock))
                muxes[key].attach(imu.get("channel", 0), chip)
    return buses


_buses = _build_buses()


# ---- the board contract (docs/architecture.md)

def ticks_us():
    return clock.ticks_us()


def ticks_diff(a, b):
    return clock.ticks_diff(a, b)


def ticks_add(a, delta):
    return clock.ticks_add(a, delta)


def sleep_us(us):
    clock.sleep_us(us)


def i2c(bus):
    return _buses[bus]


class _SerialOut:
    """stdout as the USB-CDC writer; counts SAMPLES frames for max_frames."""

    def __init__(self, stream, max_frames):
        self._stream = stream
        self._max_frames = max_frames
        self.frames = 0

    def write(self, mv):
        # A dropped frame still counts towards max_frames: runs end at the same frame with any loss.
        try:
            n = len(mv) if loss.drop(mv) else self._stream.write(mv)
        except OSError as exc:
            if exc.args and exc.args[0] == 32:  # EPIPE: the launcher is gone (killed); so is the board
                sys.exit(0)
            raise
        if self._max_frames and len(mv) > 3 and mv[0] == 0xA5 and mv[3] == 0x02:
            self.frames += 1
            if self.frames >= self._max_frames:
                sys.exit(0)
        return n


_serial_out = _SerialOut(sys.stdout.buffer, settings.get("max_frames") or 0)


def serial():
    return sys.stdin.buffer, _serial_out


def uart(baud):
    return serial()


def udp(host, port, cfg):
    """A UDP socket on the loopback (the host side is on this machine)."""
    import socket

    class LossySocket(socket.socket):
        """The node's UDP socket, dropping SAMPLES datagrams as `loss` says (a subclass, not a
        wrapper: the firmware registers the socket itself with select.poll). The unix port's poll
        reports a subclassed socket as always readable, so it must not block: an empty read is an
        OSError, which the firmware's link takes as nothing arrived."""

        def sendto(self, mv, address):
            if loss.drop(mv):
                return len(mv)
            return super().sendto(mv, address)

    sock = (LossySocket if loss.threshold else socket.socket)(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(socket.getaddrinfo("127.0.0.1", 0)[0][-1])
    sock.setblocking(False)  # as on the boards: the sample loop never waits on the network
    return sock


led_state = False
led_changes = 0


def led(on):
    global led_state, led_changes
    if bool(on) != led_state:
        led_state = bool(on)
        led_changes += 1


def wdt_start(timeout_ms):
    pass


def wdt_feed():
    pass


def reset():
    sys.exit(_reset_code)


def unique_id():
    uid = settings.get("uid")
    if uid:
        return bytes.fromhex(uid)
    return b"emu\x00\x00\x00\x00\x00"


def boot_id():
    """Deterministic per boot, so runs repeat byte for byte: the node id and seed, mixed with the
    boot number the launcher passes in IMUSIC_EMU_BOOT (0 at the first start, +1 per reset)."""
    x = (settings.get("boot_seed", 0x5EED) * 2654435761 + _boot_number * 40503 + 1) & 0xFFFFFFFF
    x ^= x >> 15
    return (x * 2246822519) & 0xFFFFFFFF


def mem_free():
    return gc.mem_free()


def mcu_temp_c():
    return None
