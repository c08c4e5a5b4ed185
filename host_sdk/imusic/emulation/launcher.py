"""Run the node firmware, unchanged, under the MicroPython unix port with emulated IMUs.

`EmulatedNode` writes the emulator's settings file and the node's node.json, starts `micropython`
on `firmware/main.py` with the firmware and `imusic/emulation/mp/` on MICROPYPATH, and relays the
node's byte stream:

- ``pty``: the node's stdin/stdout (its USB-CDC) relayed both ways to a pseudo-terminal; open
  `.pty_path` with pyserial as if it were a board.
- ``udp``: the firmware itself sends UDP datagrams to HOST:PORT on this machine.
- ``file``: the node's serial stream written to a file.

A node that resets (REBOOT) exits with the emulator's reset code and is started again, like a board
coming back up.

Knobs for testing a host against imperfect nodes and links (docs/firmware.md, "Emulation"):
`offset_us` and `drift_ppm` (the node's clock; emu_clock), `loss` (SAMPLES frames dropped on the
firmware's side; emu_board), `reboot_after_s` (the first boot resets itself), and here, in the relay:
`delay_ms`/`jitter_ms` (node-to-host bytes held back, deterministic from the seed; for UDP the
relay becomes a proxy between the firmware and HOST:PORT) and `reopen_after` (the pty is closed and
a new one offered later, at the stable path `pty_link`).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import threading
import time
import tty
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imusic
from imusic.errors import UserError
from imusic.flash import firmware_dir

RESET_EXIT_CODE = 75  # emu_board.reset() exits with this; the node is then started again
MP_DIR = Path(__file__).resolve().parent / "mp"
CHIPS = ("qmi8658", "icm42688")
DEFAULT_HEAP = "4m"
MAX_OFFSET_US = (1 << 29) - 1_000_000  # emu_clock.MAX_OFFSET_US
DROP_LINE = re.compile(r"^emu: dropped SAMPLES seq (\d+)$", re.M)
CLOCK_LINE = re.compile(r"^emu: clock epoch_host_us=(\d+) drift_ppm=(-?\d+) offset_us=(\d+)$", re.M)


def find_micropython() -> str:
    """The MicroPython unix port: $IMUSIC_MICROPYTHON, <repo>/.venv-mp, then PATH."""
    env = os.environ.get("IMUSIC_MICROPYTHON")
    if env:
        if Path(env).exists():
            return env
        raise UserError(f"IMUSIC_MICROPYTHON={env} does not exist")
    local = Path(imusic.__file__).resolve().parents[2] / ".venv-mp" / "bin" / "micropython"
    if local.exists():
        return str(local)
    found = shutil.which("micropython")
    if found:
        return found
    raise UserError("micropython (the unix port) not found: run `make bootstrap` or set IMUSIC_MICROPYTHON")


@dataclass(frozen=True)
class ClockTruth:
    """A realtime emulated node's clock as the emulator runs it (one boot): device time 0 was read
    at host monotonic time ``epoch_host_us`` (CLOCK_MONOTONIC, the clock of ``time.monotonic()``),
    and then device_us = offset_us + (host_us - epoch_host_us) * (1 + drift_ppm / 1e6), exact to
    about a microsecond. What a host's clock sync is measured against."""

    epoch_host_us: int
    drift_ppm: int
    offset_us: int

    def host_s(self, device_us: float) -> float:
        """The host monotonic time (s) at which the device clock read ``device_us``."""
        return (self.epoch_host_us + (device_us - self.offset_us) * 1e6 / (1e6 + self.drift_ppm)) * 1e-6

    def device_us(self, host_s: float) -> float:
        """What the device clock reads at host monotonic time ``host_s``."""
        return self.offset_us + (host_s * 1e6 - self.epoch_host_us) * (1.0 + self.drift_ppm * 1e-6)


@dataclass(frozen=True)
class Fault:
    """IMU slot `imu` stops answering from device time `from_us` to `to_us`."""

    imu: int
    from_us: int
    to_us: int


def build_layout(n_imus: int, chips: Sequence[str] | None = None, mags: Sequence[int] = ()) -> list[dict[str, Any]]:
    """Emulated IMU placement: the first half on bus 0, the rest on bus 1, each IMU on its own
    channel of a TCA9548A at 0x70 on its bus. `chips` names each IMU's chip (default QMI8658);
    `mags` lists the IMUs with a QMC5883P beside them."""
    if not 1 <= n_imus <= 16:
        raise UserError(f"--imus must be 1 .. 16, not {n_imus}")
    chips = list(chips) if chips else ["qmi8658"] * n_imus
    if len(chips) != n_imus or any(c not in CHIPS for c in chips):
        raise UserError(f"chips must name {n_imus} chips among {', '.join(CHIPS)}")
    on_bus0 = (n_imus + 1) // 2
    layout = []
    for i in range(n_imus):
        bus = 0 if i < on_bus0 else 1
        layout.append({"bus": bus, "mux": 0x70, "channel": i if bus == 0 else i - on_bus0,
                       "chip": chips[i], "addr": None, "mag": i in mags})
    return layout


def node_config_for(layout: Sequence[dict[str, Any]], node_id: int, rate_hz: int,
                    link: dict[str, Any]) -> dict[str, Any]:
    """The node.json a user would write for this layout (an entry's "site" names its IMU; default imuN)."""
    return {
        "node_id": node_id,
        "board": "emulated",
        "rate_hz": rate_hz,
        "imus": [{"bus": e["bus"], "mux": e["mux"], "channel": e["channel"], "site": e.get("site") or f"imu{i}",
                  "chip": "auto"}
                 for i, e in enumerate(layout)],
        "link": link,
        "autostart": True,
    }


class EmulatedNode:
    """One emulated node process. Use as a context manager, or start()/stop().

    link: ``"pty"``, ``"udp:HOST:PORT"`` or ``"file:PATH"``.
    node_config: replaces the generated node.json (a dict, or raw text to test bad files).

    Imperfections (all off by default):
    offset_us: the device clock reads this much more than the node's uptime (start_us, by contrast,
        only places the raw tick counter, i.e. where the 2^30 wrap falls; device time starts at 0).
    drift_ppm: the device clock runs this many ppm fast (negative: slow) against the host's
        monotonic clock; exact in realtime mode (virtual time has no reference to drift from).
    delay_ms, jitter_ms: node-to-host bytes reach the host delay_ms + U(0, jitter_ms) late (pty and
        UDP), drawn from the seed; the relay never reorders them.
    loss: fraction of SAMPLES frames dropped by the firmware's link (seeded); dropped_frames() lists
        their sequence numbers.
    reboot_after_s: the node resets itself once, after this much uptime.
    uid: the node's 8-byte unique id (default: "emu", the node id, zeros); the simulator gives each
        rig its own, so a calibration made for one rig refuses another.
    Layout entries may also carry "site" (the name in node.json, so HELLO carries it) and
    "temp_cdeg" (what the chip's temperature register reads, 0.01 degC; STATUS reports the first).
    reopen_after: (after_s, down_s): the pty is closed after_s seconds after start and a new one is
        offered down_s later (pty only); pty_link: a symlink kept pointing at the current pty.
    """

    def __init__(self, *, imus: int | Sequence[dict[str, Any]] = 11, rate_hz: int = 100, node_id: int = 1,
                 link: str = "pty", clock: str = "realtime", start_us: int = 0, drift_ppm: int = 0,
                 seed: int = 1, source: dict[str, Any] | None = None, faults: Sequence[Fault] = (),
                 max_seconds: float | None = None, max_frames: int | None = None,
                 node_config: dict[str, Any] | str | None = None, workdir: str | Path | None = None,
                 heap: str = DEFAULT_HEAP, offset_us: int = 0, delay_ms: float = 0.0, jitter_ms: float = 0.0,
                 loss: float = 0.0, reboot_after_s: float | None = None,
                 reopen_after: tuple[float, float] | None = None, pty_link: str | Path | None = None,
                 uid: bytes | None = None) -> None:
        self.layout = build_layout(imus) if isinstance(imus, int) else [dict(e) for e in imus]
        if clock not in ("realtime", "virtual"):
            raise UserError(f"clock must be realtime or virtual, not {clock!r}")
        self.link_kind, self.link_target = parse_link(link)
        if not 0 <= offset_us <= MAX_OFFSET_US:
            raise UserError(f"offset must be 0 .. {MAX_OFFSET_US} us (half the 2^30 tick period), not {offset_us}")
        if not (0 <= delay_ms <= 10_000 and 0 <= jitter_ms <= 10_000):
            raise UserError("delay and jitter must be 0 .. 10000 ms")
        if not 0 <= loss <= 1:
            raise UserError(f"loss must be a fraction 0 .. 1, not {loss}")
        if (delay_ms or jitter_ms) and self.link_kind == "file":
            raise UserError("delay and jitter need a pty or UDP link (a file has no arrival times)")
        if (reopen_after is not None or pty_link is not None) and self.link_kind != "pty":
            raise UserError("reopening the link and --pty-link need the pty link")
        if uid is not None and len(uid) != 8:
            raise UserError(f"a node uid is 8 bytes, not {len(uid)}")
        self.uid = uid
        self.offset_us = offset_us
        self.delay_ms = delay_ms
        self.jitter_ms = jitter_ms
        self.loss = loss
        self.reboot_after_s = reboot_after_s
        self.reopen_after = reopen_after
        self.pty_link = Path(pty_link) if pty_link is not None else None
        self.reopens = 0  # times the pty was closed and a new one offered
        self.rate_hz = rate_hz
        self.node_id = node_id
        self.clock = clock
        self.start_us = start_us
        self.drift_ppm = drift_ppm
        self.source = source or {"kind": "simple", "seed": seed}
        self.faults = list(faults)
        self.max_seconds = max_seconds
        self.max_frames = max_frames
        self.node_config = node_config
        self.heap = heap
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="imusic-emu-")) if workdir is None else Path(workdir)
        self.pty_path: str | None = None
        self.restarts = 0
        self.returncode: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._out_file: Any = None
        self._stopping = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        # relay delay: (release time, bytes, UDP destination or None), released in order
        self._delayed: deque[tuple[float, bytes, Any]] = deque()
        self._delayed_cond = threading.Condition()
        self._last_release = 0.0
        self._rng = random.Random(seed * 1_000_003 + node_id)
        self._proxy: Any = None  # UDP proxy socket (delay/jitter on UDP)
        self._proxy_node_addr: Any = None

    # ---- files

    @property
    def settings_path(self) -> Path:
        return self.workdir / "emu.json"

    @property
    def config_path(self) -> Path:
        return self.workdir / "node.json"

    @property
    def stderr_path(self) -> Path:
        return self.workdir / "stderr.txt"

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def dropped_frames(self) -> list[int]:
        """Sequence numbers of the SAMPLES frames the loss knob dropped so far, in order (all boots)."""
        return [int(m) for m in DROP_LINE.findall(self.stderr_text())]

    def clock_truth(self) -> ClockTruth | None:
        """The current boot's true clock (realtime mode; None before the firmware's first clock
        reading, and always in virtual mode, which has no host reference)."""
        found = CLOCK_LINE.findall(self.stderr_text())
        if not found:
            return None
        epoch_host_us, drift_ppm, offset_us = found[-1]
        return ClockTruth(int(epoch_host_us), int(drift_ppm), int(offset_us))

    @property
    def port_path(self) -> str | None:
        """What a host opens: the stable pty_link when given, else the current pty."""
        return str(self.pty_link) if self.pty_link is not None else self.pty_path

    @property
    def _relayed(self) -> bool:
        return bool(self.delay_ms or self.jitter_ms)

    def _firmware_link(self) -> dict[str, Any]:
        if self.link_kind == "udp":
            host, port = self._udp_destination()
            return {"type": "udp", "host": host, "port": port}
        return {"type": "serial"}

    def _udp_destination(self) -> tuple[str, int]:
        """Where the firmware sends: the host's HOST:PORT, or the delaying proxy in between."""
        if self._proxy is not None:
            return self._proxy.getsockname()[:2]
        return self.link_target

    def _write_files(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if isinstance(self.node_config, str):
            self.config_path.write_text(self.node_config)
        else:
            config = self.node_config or node_config_for(self.layout, self.node_id, self.rate_hz,
                                                         self._firmware_link())
            link = config.get("link")
            if self._proxy is not None and isinstance(link, dict) and link.get("type") == "udp":
                # the proxy stands in for the host: the node sends (or announces) to it
                host, port = self._udp_destination()
                config = dict(config, link=dict(link, port=port, host=host if link.get("host") else None))
            self.config_path.write_text(json.dumps(config, indent=1))
        settings = {
            "config_path": str(self.config_path),
            "buses": 2,
            "imus": self.layout,
            "source": self.source,
            "clock": {"mode": self.clock, "start_us": self.start_us, "drift_ppm": self.drift_ppm,
                      "offset_us": self.offset_us},
            "faults": [{"imu": f.imu, "from_us": f.from_us, "to_us": f.to_us} for f in self.faults],
            "uid": (self.uid or b"emu" + self.node_id.to_bytes(1, "little") + bytes(4)).hex(),
            "boot_seed": self.node_id * 1000 + int(self.source.get("seed", 0)),
            "max_seconds": self.max_seconds or 0,
            "max_frames": self.max_frames or 0,
            "reset_exit_code": RESET_EXIT_CODE,
            "reboot_after_s": self.reboot_after_s or 0,
            "loss": self.loss,
            "loss_seed": self.node_id * 1000 + int(self.source.get("seed", 0)),
        }
        self.settings_path.write_text(json.dumps(settings, indent=1))

    # ---- process

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["MICROPYPATH"] = f".frozen:{firmware_dir()}:{MP_DIR}"
        env["IMUSIC_EMU"] = str(self.settings_path)
        env["IMUSIC_EMU_BOOT"] = str(self.restarts)  # boot number: emu_board.boot_id() differs per boot
        return env

    def run_script(self, script: str | Path, *args: str, input: bytes = b"",
                   timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        """Run a MicroPython script on this emulated board instead of firmware/main.py: tests and
        benchmarks drive the real node loop from it. With a file link the firmware writes the stream
        itself, so the script's stdout carries only the script's own output. `input` is the
        script's stdin (the serial link's host-to-node bytes); stdout and stderr come back as bytes."""
        if self.link_kind == "file" and self.node_config is None:
            self.node_config = node_config_for(self.layout, self.node_id, self.rate_hz,
                                               {"type": "file", "path": str(self.link_target)})
        self._write_files()
        return subprocess.run([find_micropython(), "-X", f"heapsize={self.heap}", str(script), *args],
                              input=input, capture_output=True, env=self._env(), cwd=self.workdir,
                              timeout=timeout)

    def _spawn(self) -> subprocess.Popen[bytes]:
        fw = firmware_dir()
        env = self._env()
        stdin = subprocess.PIPE if self.link_kind == "pty" else subprocess.DEVNULL
        if self.link_kind == "pty":
            stdout: Any = subprocess.PIPE
        elif self.link_kind == "file":
            stdout = self._out_file
        else:
            stdout = subprocess.DEVNULL
        with open(self.stderr_path, "ab") as err:
            return subprocess.Popen([find_micropython(), "-X", f"heapsize={self.heap}", str(fw / "main.py")],
                                    stdin=stdin, stdout=stdout, stderr=err, env=env, cwd=self.workdir)

    def start(self) -> "EmulatedNode":
        find_micropython()
        firmware_dir()
        if self.link_kind == "udp" and self._relayed:
            import socket

            self._proxy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._proxy.bind(("127.0.0.1", 0))
        self._write_files()
        if self.link_kind == "pty":
            self._open_pty()
        elif self.link_kind == "file":
            self._out_file = open(self.link_target, "wb")
        self._proc = self._spawn()
        self._start_thread(self._supervise, "emu-node")
        if self.link_kind == "pty":
            self._start_thread(self._pty_to_node, "emu-pty-in")
        if self._proxy is not None:
            self._start_thread(self._udp_proxy, "emu-udp-proxy")
        if self._relayed:
            self._start_thread(self._release_delayed, "emu-delay")
        if self.reopen_after is not None:
            self._start_thread(self._reopen_later, "emu-reopen")
        return self

    def _start_thread(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    # ---- the pty and its reopening

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # bytes pass unchanged: no echo, no newline translation
        os.set_blocking(master, False)
        path = os.ttyname(slave)
        with self._lock:
            self._master, self._slave = master, slave
            self.pty_path = path
        if self.pty_link is not None:
            # re-point atomically: a host retrying the path sees the old link or the new, never none
            tmp = self.pty_link.with_name(self.pty_link.name + ".new")
            tmp.unlink(missing_ok=True)
            os.symlink(path, tmp)
            os.replace(tmp, self.pty_link)

    def _close_pty(self) -> None:
        with self._lock:
            fds = (self._master, self._slave)
            self._master = self._slave = None
        for fd in fds:
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _reopen_later(self) -> None:
        """Close the pty (the host reads end-of-file, as when a cable is pulled) and offer a new one
        after the downtime; the node runs on and its bytes meanwhile are lost."""
        assert self.reopen_after is not None
        after_s, down_s = self.reopen_after
        if self._stopping.wait(after_s) or self._done.is_set():
            return
        self._close_pty()
        if self.pty_link is not None:
            self.pty_link.unlink(missing_ok=True)
        if self._stopping.wait(down_s) or self._done.is_set():
            return
        self._open_pty()
        self.reopens += 1

    # ---- relaying

    def _supervise(self) -> None:
        """Relay the node's stdout (pty mode) and restart it after a reset, until it ends."""
        while True:
            proc = self._proc
            assert proc is not None
            if self.link_kind == "pty":
                self._node_to_pty(proc)
            code = proc.wait()
            if code == RESET_EXIT_CODE and not self._stopping.is_set():
                with self._lock:
                    self.restarts += 1
                    self._proc = self._spawn()
                continue
            self.returncode = code
            break
        self._done.set()
        with self._delayed_cond:
            self._delayed_cond.notify_all()

    def _node_to_pty(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            if not data:
                return
            if self._relayed:
                self._hold(data, None)
            else:
                self._write_pty(data)

    def _write_pty(self, data: bytes) -> None:
        with self._lock:
            master = self._master
        if master is None:
            return  # the pty is closed (reopen_after): bytes are lost, as on an unplugged cable
        view = memoryview(data)
        while view:
            try:
                n = os.write(master, view)
            except BlockingIOError:
                # Nobody reads the pty and its buffer is full: like a USB-CDC port with no
                # host, the bytes are lost rather than stalling the node.
                return
            except OSError:
                return
            view = view[n:]

    def _hold(self, data: bytes, dest: Any) -> None:
        """Queue node-to-host bytes for release after the link delay (never overtaking earlier ones)."""
        delay_s = (self.delay_ms + self._rng.uniform(0.0, self.jitter_ms)) * 1e-3
        with self._delayed_cond:
            release = max(time.monotonic() + delay_s, self._last_release)
            self._last_release = release
            self._delayed.append((release, data, dest))
            self._delayed_cond.notify_all()

    def _release_delayed(self) -> None:
        queue = self._delayed
        while True:
            with self._delayed_cond:
                while not queue and not self._stopping.is_set() and not self._done.is_set():
                    self._delayed_cond.wait()
                if not queue:
                    return
                release, data, dest = queue[0]
            wait_s = release - time.monotonic()
            if wait_s > 0:
                if self._stopping.wait(wait_s):
                    return
                continue
            with self._delayed_cond:
                queue.popleft()
            if dest is None:
                self._write_pty(data)
            else:
                try:
                    self._proxy.sendto(data, dest)
                except OSError:
                    pass

    def _udp_proxy(self) -> None:
        """Between the firmware and the host's HOST:PORT: node datagrams are delayed on their way
        out; host datagrams (COMMAND, TIME_SYNC_REQ) go straight to the node."""
        import select
        import socket

        sock = self._proxy
        host, port = self.link_target
        host_addr = (socket.gethostbyname("127.0.0.1" if host == "0.0.0.0" else host), port)
        while not self._stopping.is_set() and not self._done.is_set():
            try:
                ready, _, _ = select.select([sock], [], [], 0.05)
                if not ready:
                    continue
                data, sender = sock.recvfrom(65535)
            except (OSError, ValueError):
                return
            if sender != host_addr:
                # From the node (its address changes when it reboots: a new socket).
                self._proxy_node_addr = sender
                self._hold(data, host_addr)
            elif self._proxy_node_addr is not None:
                try:
                    sock.sendto(data, self._proxy_node_addr)
                except OSError:
                    pass

    def _pty_to_node(self) -> None:
        import select

        while not self._done.is_set() and not self._stopping.is_set():
            with self._lock:
                master = self._master
            if master is None:
                self._stopping.wait(0.05)  # between close and reopen
                continue
            try:
                ready, _, _ = select.select([master], [], [], 0.05)
                if not ready:
                    continue
                data = os.read(master, 4096)
            except BlockingIOError:
                continue
            except (OSError, ValueError):
                # closed by stop() or by a reopen: stop() sets _stopping, a reopen brings a new one
                self._stopping.wait(0.05)
                continue
            with self._lock:
                proc = self._proc
            if proc is None or proc.stdin is None:
                continue
            try:
                proc.stdin.write(data)
                proc.stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                continue  # the node is restarting or gone

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the node to end (max_seconds / max_frames); its exit status, None on timeout."""
        if not self._done.wait(timeout):
            return None
        return self.returncode

    def stop(self) -> None:
        self._stopping.set()
        with self._delayed_cond:
            self._delayed_cond.notify_all()
        for thread in self._threads:
            if thread.name in ("emu-pty-in", "emu-udp-proxy", "emu-delay", "emu-reopen"):
                thread.join(1)
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._done.wait(5)
        self._close_pty()
        if self.pty_link is not None and self.pty_link.is_symlink():
            self.pty_link.unlink(missing_ok=True)
        if self._proxy is not None:
            self._proxy.close()
            self._proxy = None
        if self._out_file is not None:
            self._out_file.close()
            self._out_file = None
        if proc is not None and proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "EmulatedNode":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def parse_link(spec: str) -> tuple[str, Any]:
    """``pty``, ``udp:HOST:PORT`` or ``file:PATH`` -> (kind, target)."""
    if spec == "pty":
        return "pty", None
    kind, _, rest = spec.partition(":")
    if kind == "file" and rest:
        return "file", rest
    if kind == "udp":
        host, _, port = rest.rpartition(":")
        if host and port.isdigit() and 1 <= int(port) <= 65535:
            return "udp", (host, int(port))
    raise UserError(f"bad link {spec!r}: use pty, udp:HOST:PORT or file:PATH")
