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
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import tty
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import imusic
from imusic.errors import UserError
from imusic.flash import firmware_dir

RESET_EXIT_CODE = 75  # emu_board.reset() exits with this; the node is then started again
MP_DIR = Path(__file__).resolve().parent / "mp"
CHIPS = ("qmi8658", "icm42688")
DEFAULT_HEAP = "4m"


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
    """The node.json a user would write for this layout."""
    return {
        "node_id": node_id,
        "board": "emulated",
        "rate_hz": rate_hz,
        "imus": [{"bus": e["bus"], "mux": e["mux"], "channel": e["channel"], "site": f"imu{i}", "chip": "auto"}
                 for i, e in enumerate(layout)],
        "link": link,
        "autostart": True,
    }


class EmulatedNode:
    """One emulated node process. Use as a context manager, or start()/stop().

    link: ``"pty"``, ``"udp:HOST:PORT"`` or ``"file:PATH"``.
    node_config: replaces the generated node.json (a dict, or raw text to test bad files).
    """

    def __init__(self, *, imus: int | Sequence[dict[str, Any]] = 11, rate_hz: int = 100, node_id: int = 1,
                 link: str = "pty", clock: str = "realtime", start_us: int = 0, drift_ppm: int = 0,
                 seed: int = 1, source: dict[str, Any] | None = None, faults: Sequence[Fault] = (),
                 max_seconds: float | None = None, max_frames: int | None = None,
                 node_config: dict[str, Any] | str | None = None, workdir: str | Path | None = None,
                 heap: str = DEFAULT_HEAP) -> None:
        self.layout = build_layout(imus) if isinstance(imus, int) else [dict(e) for e in imus]
        if clock not in ("realtime", "virtual"):
            raise UserError(f"clock must be realtime or virtual, not {clock!r}")
        self.link_kind, self.link_target = parse_link(link)
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

    def _firmware_link(self) -> dict[str, Any]:
        if self.link_kind == "udp":
            host, port = self.link_target
            return {"type": "udp", "host": host, "port": port}
        return {"type": "serial"}

    def _write_files(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if isinstance(self.node_config, str):
            self.config_path.write_text(self.node_config)
        else:
            config = self.node_config or node_config_for(self.layout, self.node_id, self.rate_hz,
                                                         self._firmware_link())
            self.config_path.write_text(json.dumps(config, indent=1))
        settings = {
            "config_path": str(self.config_path),
            "buses": 2,
            "imus": self.layout,
            "source": self.source,
            "clock": {"mode": self.clock, "start_us": self.start_us, "drift_ppm": self.drift_ppm},
            "faults": [{"imu": f.imu, "from_us": f.from_us, "to_us": f.to_us} for f in self.faults],
            "uid": (b"emu" + self.node_id.to_bytes(1, "little") + bytes(4)).hex(),
            "boot_seed": self.node_id * 1000 + int(self.source.get("seed", 0)),
            "max_seconds": self.max_seconds or 0,
            "max_frames": self.max_frames or 0,
            "reset_exit_code": RESET_EXIT_CODE,
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
        self._write_files()
        if self.link_kind == "pty":
            self._master, self._slave = os.openpty()
            tty.setraw(self._slave)  # bytes pass unchanged: no echo, no newline translation
            self.pty_path = os.ttyname(self._slave)
            os.set_blocking(self._master, False)
        elif self.link_kind == "file":
            self._out_file = open(self.link_target, "wb")
        self._proc = self._spawn()
        supervisor = threading.Thread(target=self._supervise, name="emu-node", daemon=True)
        self._threads.append(supervisor)
        supervisor.start()
        if self.link_kind == "pty":
            to_node = threading.Thread(target=self._pty_to_node, name="emu-pty-in", daemon=True)
            self._threads.append(to_node)
            to_node.start()
        return self

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

    def _node_to_pty(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None and self._master is not None
        fd = proc.stdout.fileno()
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            if not data:
                return
            view = memoryview(data)
            while view:
                try:
                    n = os.write(self._master, view)
                except BlockingIOError:
                    # Nobody reads the pty and its buffer is full: like a USB-CDC port with no
                    # host, the bytes are lost rather than stalling the node.
                    break
                except OSError:
                    return
                view = view[n:]

    def _pty_to_node(self) -> None:
        import select

        master = self._master
        assert master is not None
        while not self._done.is_set() and not self._stopping.is_set():
            try:
                ready, _, _ = select.select([master], [], [], 0.05)
                if not ready:
                    continue
                data = os.read(master, 4096)
            except BlockingIOError:
                continue
            except (OSError, ValueError):
                return  # the pty was closed by stop()
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
        for thread in self._threads:
            if thread.name == "emu-pty-in":
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
        for fd in (self._master, self._slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = None
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
