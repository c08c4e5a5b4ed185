"""Many nodes, one stream of aligned frames.

``Session.open(urls)`` opens a link per URL, gets to know the node(s) behind each, keeps every node's
clock fitted onto the host timeline (TIME_SYNC bursts every few seconds, the minimum-round-trip
probe of each burst kept), maps every sample onto that timeline, and resamples all IMUs onto one
frame clock (60 Hz by default, the ARKit rate). Gaps stay gaps: NaN plus ``valid=False``.

    with imusic.Session.open(["/dev/ttyACM0", "udp://:50100"]) as session:
        for frame in session.frames():
            frame.accel_mps2, frame.gyro_rads, frame.mag_uT, frame.valid, frame.sites

A ``file://rec.imu`` URL replays a recording: decoded and aligned in bulk by ``imusic.replay``
(clocks refitted from the recorded TIME_SYNC exchanges), then handed out like live frames, as fast
as they are taken or, with ``?pace=recorded``, at the recorded pace. With ``record=PATH`` a live
session appends every byte it receives and sends to a recording (``imusic.recording``).

Threads: one reader per link (``LinkPump``), one for clock sync, one that emits frames whose
deadline passed while no data came. Frames reach the caller through ``frames()`` (a queue),
``on_frame`` callbacks (called from the reading threads: keep them short) or ``aframes()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
from collections import deque
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from imusic.align import Aligner, Frame, FrameBlock, samples_to_arrays
from imusic.errors import UserError
from imusic.links import LinkClosed, open_link, parse_url
from imusic.node import LinkPump, NodeClient, NodeError
from imusic.protocol import BROADCAST_NODE, Cmd, Hello, Message, Samples, StreamDecoder, encode_command
from imusic.recording import RecordingError, RecordingReader, RecordingWriter
from imusic.replay import ReplayResult, replay_blocks
from imusic.timesync import ClockFit

__all__ = ["FrameCorrection", "Session", "SessionStats", "recording_url"]

SYNC_INTERVAL_S = 2.0  # between TIME_SYNC bursts per node
SYNC_BURST = 8  # probes per burst


class FrameCorrection(Protocol):
    """What a session needs of a calibration (``imusic.calibration.Calibration`` is one): refuse
    other hardware (a ``UserError``), correct frames."""

    def check_hardware(self, hellos: Iterable[Hello]) -> None: ...
    def check_recording(self, path: str | Path) -> None: ...
    def apply_frame(self, frame: Frame) -> Frame: ...
    def apply_block(self, block: FrameBlock) -> FrameBlock: ...


def recording_url(path: str | Path, pace: str = "fast") -> str:
    """The ``file://`` URL that replays a recording (a missing or foreign file fails when opened)."""
    return f"file://{Path(path)}?pace={pace}"


@dataclass
class SessionStats:
    frames_aligned: int = 0
    frames_with_gaps: int = 0
    unknown_datagrams: int = 0  # UDP datagrams from sources that never said HELLO: dropped
    first_frame_t_s: float | None = None
    last_frame_t_s: float | None = None
    link_errors: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        if self.first_frame_t_s is None or self.last_frame_t_s is None:
            return 0.0
        return self.last_frame_t_s - self.first_frame_t_s


class _Peer:
    """One node as the session sees it: its client, clock fit, and where it is."""

    def __init__(self, client: NodeClient, link_id: int, source: str) -> None:
        self.client = client
        self.link_id = link_id
        self.source = source
        self.fit = ClockFit()
        client.clock_fit = self.fit
        self.boot_id: int | None = None
        self.aligned_hello: Hello | None = None


class Session:
    """See the module docstring. Build with ``Session.open``."""

    def __init__(self, *, rate_hz: float = 60.0, max_latency_s: float = 0.1, record: str | Path | None = None,
                 sync_interval_s: float = SYNC_INTERVAL_S, calibration: FrameCorrection | None = None) -> None:
        self.rate_hz = rate_hz
        self.calibration = calibration  # applied to every frame, checked against every HELLO
        self.sync_interval_s = sync_interval_s
        self.stats = SessionStats()
        self._aligner = Aligner(rate_hz=rate_hz, max_latency_s=max_latency_s)
        self._lock = threading.RLock()
        self._peers: dict[tuple[int, str], _Peer] = {}
        self._probation: dict[tuple[int, str], StreamDecoder] = {}
        self._asked: dict[str, float] = {}  # unknown UDP source -> when we last asked for its HELLO
        self._release_latency_s: deque[float] = deque(maxlen=10_000)
        self._pumps: dict[int, LinkPump] = {}  # by link id
        self._replay: tuple[str, str] | None = None  # (recording path, pace) of a replay session
        self._replay_result: ReplayResult | None = None
        self._urls: dict[int, str] = {}  # link id (the recording's, when recording) -> URL
        self._queue: queue.Queue[Frame | None] = queue.Queue()
        self._callbacks: list[Callable[[Frame], None]] = []
        self._closing = threading.Event()
        self._failure: BaseException | None = None  # what stopped a reading thread
        self._threads: list[threading.Thread] = []
        self._recorder = RecordingWriter(record) if record is not None else None
        if self._recorder is not None:
            self._recorder.meta({"session": {"rate_hz": rate_hz, "started_monotonic_s": time.monotonic(),
                                             "started_unix_s": time.time()}})

    # ---- construction

    @classmethod
    def open(cls, urls: Sequence[str], *, rate_hz: float = 60.0, record: str | Path | None = None,
             max_latency_s: float = 0.1, hello_timeout_s: float = 5.0, start: bool = True,
             sync_interval_s: float = SYNC_INTERVAL_S,
             calibration: str | Path | FrameCorrection | None = None) -> "Session":
        """Open every URL and wait until each serial/pty/emu/mem link's node has said HELLO (a UDP
        port is listened on; its nodes join when they announce themselves). Streaming is started on
        nodes that are not streaming yet when ``start``. ``sync_interval_s``: seconds between a
        node's TIME_SYNC bursts once its first four are in. ``calibration``: a calibration file
        (``imusic.calibration``) or object, checked against each node's HELLO (other hardware: frames()
        raises its UserError) and applied to every frame."""
        if not urls:
            raise UserError("a session needs at least one link URL")
        if isinstance(calibration, (str, Path)):
            from imusic.calibration import Calibration  # the one upward import, only when asked for

            calibration = Calibration.load(calibration)
        session = cls(rate_hz=rate_hz, max_latency_s=max_latency_s, record=record, sync_interval_s=sync_interval_s,
                      calibration=calibration)
        try:
            for url in urls:
                session._add(url)
            session._wait_nodes(hello_timeout_s)
            if start and session._replay is None:
                for peer in list(session._peers.values()):
                    if not peer.client.streaming:
                        peer.client.start()
            if session._pumps:
                session._spawn(session._sync_loop, "imusic-sync")
                session._spawn(session._deadline_loop, "imusic-frames")
        except BaseException:
            session.close()
            raise
        return session

    def _add(self, url: str) -> None:
        if url in self._urls.values():
            raise UserError(f"{url} is given twice")
        link_id = self._recorder.add_link(url) if self._recorder is not None else len(self._urls) + 1
        self._urls[link_id] = url
        if url.startswith("file:"):
            self._open_replay(url)
            return
        link = open_link(url)
        pump = LinkPump(url, lambda r, i=link_id: self._on_received(i, r), link=link)
        self._pumps[link_id] = pump
        if not url.startswith("udp:"):
            client = self._make_client(link_id, url, pump)
            pump.on_down = client.link_down
            pump.on_up = client.link_up
        pump.start()

    def _make_client(self, link_id: int, source: str, pump: LinkPump | None) -> NodeClient:
        dest = source if source.startswith("udp:") else None
        recorder = self._recorder if pump is not None else None
        rec_id = link_id if recorder is None or source == self._urls[link_id] else recorder.add_link(source)

        def send(data: bytes) -> None:
            if pump is None:
                return  # a replay cannot be written to
            if recorder is not None and self._recorder is not None:
                with self._recording_guard():
                    recorder.host(rec_id, time.monotonic(), data)
            pump.write(data, dest)

        client = NodeClient(send, label=source)
        peer = _Peer(client, link_id, source)
        client.listeners.append(lambda msg, t, p=peer: self._on_message(p, msg, t))
        with self._lock:
            self._peers[(link_id, source)] = peer
        return client

    def _open_replay(self, url: str) -> None:
        if len(self._urls) > 1:
            raise UserError("a replay session takes one recording and no live links")
        parsed = parse_url(url)
        parsed.check_params(("pace",))
        pace = parsed.params.get("pace", "fast")
        if pace not in ("fast", "recorded"):
            raise UserError(f"{url}: pace must be fast or recorded, not {pace!r}")
        RecordingReader(parsed.path)  # a missing or foreign file fails here, with one clear line
        self._replay = (parsed.path, pace)

    def _wait_nodes(self, timeout_s: float) -> None:
        if self._replay is not None:
            return
        for peer in list(self._peers.values()):
            peer.client.wait_hello(total_s=timeout_s)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    # ---- input

    def _on_received(self, link_id: int, received: Any) -> None:
        recorder = self._recorder
        if recorder is not None:
            with self._recording_guard():
                # Each UDP peer is recorded as a link of its own, so a replay still tells them apart.
                rec_id = link_id if received.source == self._urls[link_id] else recorder.add_link(received.source)
                recorder.data(rec_id, received.t_host_s, received.data)
        self._route(link_id, received.source, received.data, received.t_host_s)

    def _route(self, link_id: int, source: str, data: bytes, t_host_s: float) -> None:
        key = (link_id, source)
        peer = self._peers.get(key)
        if peer is None:
            if not source.startswith("udp:"):
                return  # serial links have their client from the start
            # A UDP source is admitted by a HELLO; anything before is counted and dropped.
            probe = self._probation.setdefault(key, StreamDecoder())
            messages = probe.feed(data)
            if not any(isinstance(m, Hello) for m in messages):
                with self._lock:
                    self.stats.unknown_datagrams += 1
                self._ask_who(link_id, source)
                return
            del self._probation[key]
            client = self._make_client(link_id, source, self._pumps.get(link_id))
            # Announcing nodes stream to the first host that commands them.
            threading.Thread(target=self._claim, args=(client,), daemon=True).start()
            peer = self._peers[key]
        peer.client.feed(data, t_host_s)
        self._pop_due(released_by_s=t_host_s)

    def _ask_who(self, link_id: int, source: str) -> None:
        """A node that said its boot HELLO before we listened is asked again (once a second at
        most); its datagrams stay dropped until the HELLO comes."""
        now = time.monotonic()
        if now - self._asked.get(source, -1e9) < 1.0:
            return
        self._asked[source] = now
        pump = self._pumps.get(link_id)
        if pump is not None:
            try:
                pump.write(encode_command(BROADCAST_NODE, 0, Cmd.GET_HELLO), source)
            except (LinkClosed, OSError):
                pass

    def _claim(self, client: NodeClient) -> None:
        try:
            client.wait_hello(total_s=2.0)
            client.start()
        except (NodeError, LinkClosed):
            pass

    def _on_message(self, peer: _Peer, msg: Message, t_host_s: float) -> None:
        """Every message of every node, in its link's reading thread (or the replay loop)."""
        if isinstance(msg, Hello):
            with self._lock:
                if peer.boot_id is not None and msg.boot_id != peer.boot_id:
                    peer.fit.reset()  # a new boot: its device clock started again
                peer.boot_id = msg.boot_id
                if peer.aligned_hello is None or peer.aligned_hello.imus != msg.imus:
                    self._aligner.add_node(msg.node_id, msg)
                peer.aligned_hello = msg
            if self.calibration is not None:
                self._check_calibration([msg])
        elif isinstance(msg, Samples):
            hello = peer.aligned_hello
            if hello is None or peer.client.refused is not None:
                return  # samples before the node's HELLO (or of a refused node) cannot be read
            t_us = msg.t_us()
            peer.fit.add_arrival(int(t_us[-1]), t_host_s)
            with self._lock:
                arrays = samples_to_arrays(msg, hello, peer.fit)
                self._aligner.add_samples(msg.node_id, *arrays)

    def _check_calibration(self, hellos: list[Hello]) -> None:
        """Other hardware than the calibration's: the session stops and frames() raises why."""
        assert self.calibration is not None
        try:
            self.calibration.check_hardware(hellos)
        except UserError as exc:
            if self._failure is None:
                self._failure = exc
                self._queue.put(None)

    # ---- background work (live)

    def _sync_loop(self) -> None:
        next_burst: dict[tuple[int, str], float] = {}
        while not self._closing.is_set():
            now = time.monotonic()
            for key, peer in list(self._peers.items()):
                if peer.client.hello is None or peer.client.refused is not None:
                    continue
                if now >= next_burst.get(key, 0.0):
                    try:
                        peer.client.time_sync_burst(SYNC_BURST)
                    except (NodeError, LinkClosed):
                        pass
                    self._record_fit(peer)
                    # The first bursts come quickly so drift is known early; then every interval.
                    done = peer.fit.n_points
                    next_burst[key] = time.monotonic() + (0.25 if done < 4 else self.sync_interval_s)
            self._closing.wait(0.05)

    def _record_fit(self, peer: _Peer) -> None:
        """The node's clock fit as session metadata (a replay refits from the recorded probes; this
        says what the live session used)."""
        fit, recorder = peer.fit, self._recorder
        if recorder is None or not fit.ready:
            return
        with self._recording_guard():
            recorder.meta({f"sync.node{peer.client.node_id}": {
                "offset_s": fit.offset_s, "drift_ppm": fit.device_drift_ppm, "rtt_min_s": fit.rtt_min_s,
                "points": fit.n_points, "source": fit.source, "t_host_s": time.monotonic()}})

    @contextlib.contextmanager
    def _recording_guard(self) -> Iterator[None]:
        """A recording that fails (a full disk) stops: everything flushed before reads back, the
        session stops recording, and frames() raises the error (one clear line from the CLI)."""
        try:
            yield
        except RecordingError as exc:
            self._recorder = None
            if self._failure is None:
                self._failure = exc
                self._queue.put(None)

    def _deadline_loop(self) -> None:
        period_s = 1.0 / self.rate_hz
        while not self._closing.wait(period_s):
            self._pop_due()
            for link_id, pump in self._pumps.items():
                if pump.error is not None and not isinstance(pump.error, LinkClosed) and self._failure is None:
                    # A reader that died of a bug must not look like a quiet node: stop and say so.
                    self._failure = RuntimeError(f"reading {self._urls[link_id]} failed: {pump.error!r}")
                    self._failure.__cause__ = pump.error
                    self._queue.put(None)

    def _pop_due(self, released_by_s: float | None = None) -> None:
        # Popping and queueing are one step under the lock: frames leave in order, each once,
        # whichever thread (a link's reader or the deadline loop) gets there first.
        with self._lock:
            frames = self._aligner.pop_frames(time.monotonic())
            self._emit(frames)
            if frames and released_by_s is not None:
                # From the receive time of the bytes that made these frames due to their hand-off.
                self._release_latency_s.append(time.monotonic() - released_by_s)

    def release_latencies_s(self) -> list[float]:
        """Recent latencies (s) from the arrival of the bytes that made frames due to those frames
        being handed out (the session's own processing delay; the last 10,000)."""
        with self._lock:
            return list(self._release_latency_s)

    def _emit(self, frames: list[Frame], *, enqueue: bool = True) -> None:
        if not frames:
            return
        if self.calibration is not None:
            if self._failure is not None:
                return  # refused hardware: no frame goes out uncorrected or wrongly corrected
            frames = [self.calibration.apply_frame(f) for f in frames]
        with self._lock:
            st = self.stats
            st.frames_aligned += len(frames)
            st.frames_with_gaps += sum(1 for f in frames if not f.valid.all())
            if st.first_frame_t_s is None:
                st.first_frame_t_s = frames[0].t_host_s
            st.last_frame_t_s = frames[-1].t_host_s
        for frame in frames:
            for callback in self._callbacks:
                callback(frame)
            if enqueue:
                self._queue.put(frame)

    # ---- output

    def frames(self, timeout_s: float | None = None) -> Iterator[Frame]:
        """Aligned frames, in order. Live: blocks for the next one (ends after ``timeout_s`` without
        one, or when the session closes). Replay: runs the recording through and ends with it."""
        if self._replay is not None:
            yield from self._replay_frames()
            return
        while True:
            try:
                frame = self._queue.get(timeout=timeout_s)
            except queue.Empty:
                return
            if frame is None:
                if self._failure is not None:
                    raise self._failure
                return
            yield frame

    def _replay_frames(self) -> Iterator[Frame]:
        assert self._replay is not None
        path, pace = self._replay
        if self._replay_result is None:
            self._replay_result = replay_blocks(path, self.rate_hz)
        result = self._replay_result
        with self._lock:
            self.stats.frames_aligned = result.frames_aligned
            self.stats.frames_with_gaps = result.frames_with_gaps
            self.stats.first_frame_t_s = result.first_frame_t_s
            self.stats.last_frame_t_s = result.last_frame_t_s
        t_wall0 = time.monotonic()
        blocks = result.blocks
        if self.calibration is not None:
            self.calibration.check_recording(path)  # other hardware: one UserError line
            blocks = [self.calibration.apply_block(b) for b in blocks]
        for frame in (f for b in blocks for f in b.frames()):
            if self._closing.is_set():
                return
            if pace == "recorded" and result.first_frame_t_s is not None:
                wait_s = (frame.t_host_s - result.first_frame_t_s) - (time.monotonic() - t_wall0)
                if wait_s > 0:
                    time.sleep(wait_s)
            for callback in self._callbacks:
                callback(frame)
            yield frame

    def on_frame(self, callback: Callable[[Frame], None]) -> None:
        """Call ``callback(frame)`` for every frame (from a reading thread: keep it short)."""
        self._callbacks.append(callback)

    async def aframes(self) -> AsyncIterator[Frame]:
        """``frames()`` for asyncio apps: waits in a worker thread, never blocks the loop."""
        loop = asyncio.get_running_loop()
        iterator = self.frames(timeout_s=0.5)
        sentinel = object()
        while not self._closing.is_set():
            frame = await loop.run_in_executor(None, next, iterator, sentinel)
            if frame is sentinel:
                if self._replay is not None or self._closing.is_set():
                    return
                iterator = self.frames(timeout_s=0.5)
                continue
            yield frame  # type: ignore[misc]

    # ---- state

    @property
    def nodes(self) -> dict[int, NodeClient]:
        return {p.client.node_id: p.client for p in self._peers.values() if p.client.node_id is not None}

    def clock_fits(self) -> dict[int, ClockFit]:
        """Each known node's clock fit (device us -> host monotonic s), by node id: for reading
        only (benchmarks and tests compare it with the emulator's truth)."""
        return {p.client.node_id: p.fit for p in self._peers.values() if p.client.node_id is not None}

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(f"node{p.client.node_id}/{imu.site}" for p in sorted(
            self._peers.values(), key=lambda p: p.client.node_id or 0) if p.aligned_hello
            for imu in p.aligned_hello.imus)

    def node_report(self) -> dict[str, dict[str, Any]]:
        """Per node: what ``imusic stats --json`` prints."""
        if self._replay is not None:
            if self._replay_result is None:
                self._replay_result = replay_blocks(self._replay[0], self.rate_hz)
            return self._replay_result.nodes
        report = {}
        for peer in sorted(self._peers.values(), key=lambda p: p.client.node_id or 0):
            st = peer.client.stats()
            fit = peer.fit
            report[str(st.node_id)] = {
                "imus": peer.aligned_hello.n_imus if peer.aligned_hello else 0,
                "samples": st.samples,
                "lost_frames": st.lost_frames,
                "crc_errors": st.crc_errors,
                "rate_hz": round(st.rate_hz, 3),
                "clock_offset_ms": round(fit.offset_s * 1e3, 3) if fit.ready else None,
                "clock_drift_ppm": round(fit.device_drift_ppm, 3) if fit.ready else None,
                "clock_source": fit.source,
                "reboots": st.reboots,
                "source": peer.source,
            }
        return report

    def close(self) -> None:
        self._closing.set()
        for pump in self._pumps.values():
            pump.close()
        for thread in self._threads:
            thread.join(2)
        if self._recorder is not None:
            with self._recording_guard():
                self._recorder.close()
        self._queue.put(None)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
