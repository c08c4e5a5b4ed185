"""Recordings (``imusic.recording``) and their replay (``file://``): round trip of every chunk kind,
the periodic flush, a writer killed with SIGKILL, a full disk, torn and foreign files."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import imusic.protocol as P
import imusic.recording as R
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from imusic.errors import UserError
from imusic.links import LinkClosed, LinkError, Received, open_link
from imusic.links.file import FileLink
from imusic.recording import ChunkKind, RecordingError, RecordingReader, RecordingWriter
from testenv import REPO


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text, text
    return text


def write_sample_recording(path: Path) -> list[tuple[int, int, float, bytes]]:
    """Two links, every chunk kind, payloads with every byte value; returns (kind, link, t, payload)."""
    rng = random.Random(7)
    expected = []
    with RecordingWriter(path, meta={"session": "test", "layout": {"sites": ["a", "b"]}}) as w:
        serial = w.add_link("serial:///dev/ttyACM0", board="emulated")
        udp = w.add_link("udp://127.0.0.1:50111")
        assert (serial, udp) == (1, 2)
        assert w.add_link("serial:///dev/ttyACM0") == serial  # one URL, one id
        for k in range(200):
            t = 1000.0 + k * 0.005 + rng.random() * 1e-3
            payload = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
            if k % 10 == 3:
                w.host(udp, t, payload)
                expected.append((ChunkKind.HOST, udp, t, payload))
            else:
                link = serial if k % 2 else udp
                w.data(link, t, payload)
                expected.append((ChunkKind.DATA, link, t, payload))
        w.data(serial, 2000.0, bytes(range(256)))
        expected.append((ChunkKind.DATA, serial, 2000.0, bytes(range(256))))
        w.meta({"layout": {"sites": ["c"]}, "sync": {"1": {"offset_s": 0.25}}})
        w.meta({"rate_hz": 60}, link_id=serial)
    return expected


def test_every_chunk_kind_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "rec.imu"
    expected = write_sample_recording(path)
    reader = RecordingReader(path)
    chunks = list(reader.chunks())
    body = [(c.kind, c.link_id, c.t_host_s, c.payload) for c in chunks if c.kind != ChunkKind.META]
    assert body == expected
    assert reader.links == {1: "serial:///dev/ttyACM0", 2: "udp://127.0.0.1:50111"}
    assert reader.link_meta[1] == {"board": "emulated", "url": "serial:///dev/ttyACM0", "rate_hz": 60}
    meta = reader.meta
    assert meta["session"] == "test" and meta["format"] == "imusic-recording"
    assert meta["layout"] == {"sites": ["c"]}  # a later META chunk wins, key by key
    assert meta["sync"] == {"1": {"offset_s": 0.25}}
    assert reader.truncated_bytes == 0 and reader.tail_problem is None
    assert reader.valid_bytes == path.stat().st_size
    assert reader.chunk_counts[ChunkKind.HOST] == sum(1 for e in expected if e[0] == ChunkKind.HOST)
    # Offsets point at the chunks; kinds filter.
    raw = path.read_bytes()
    assert all(raw[c.offset:c.offset + 4] == len(c.payload).to_bytes(4, "little") for c in chunks)
    assert [c.payload for c in reader.chunks(kinds=[ChunkKind.HOST])] == [e[3] for e in expected if e[0] == ChunkKind.HOST]


def test_layout_on_disk_is_the_documented_one(tmp_path: Path) -> None:
    path = tmp_path / "rec.imu"
    with RecordingWriter(path) as w:
        link = w.add_link("mem://x")
        w.data(link, 12.5, b"\xa5\x5a")
    raw = path.read_bytes()
    assert raw[:8] == b"IMUREC\x00\x01"
    last = raw[-(16 + 2 + 4):]
    assert last[:16] == (2).to_bytes(4, "little") + bytes([1, 0]) + link.to_bytes(2, "little") + np.float64(12.5).tobytes()
    assert last[16:18] == b"\xa5\x5a"
    import zlib
    assert last[18:] == zlib.crc32(last[:18]).to_bytes(4, "little")


def test_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "rec.imu"
    path.write_bytes(b"precious")
    with pytest.raises(RecordingError) as info:
        RecordingWriter(path)
    assert "already exists" in one_line(info.value)
    assert path.read_bytes() == b"precious"
    with RecordingWriter(path, overwrite=True) as w:
        w.data(w.add_link("mem://a"), 1.0, b"new")
    assert [c.payload for c in RecordingReader(path).chunks([ChunkKind.DATA])] == [b"new"]
    with pytest.raises(RecordingError) as info:
        RecordingWriter(tmp_path / "no" / "such" / "dir.imu")
    assert "no such directory" in one_line(info.value)


def test_chunks_reach_the_file_without_further_calls(tmp_path: Path) -> None:
    """The timer flushes: a chunk written and then nothing else still reaches the OS."""
    path = tmp_path / "rec.imu"
    w = RecordingWriter(path)
    try:
        w.data(w.add_link("mem://idle"), 5.0, b"lonely chunk")
        deadline = time.monotonic() + 30  # a hang guard, not a timing requirement
        found: list[bytes] = []
        while not found and time.monotonic() < deadline:
            found = [c.payload for c in RecordingReader(path).chunks([ChunkKind.DATA])]
            time.sleep(0.01)
        assert found == [b"lonely chunk"]
        assert w.chunks_flushed == w.chunks_written
    finally:
        w.close()


def test_torn_tail_at_every_cut_reads_back_the_whole_chunks(tmp_path: Path) -> None:
    path = tmp_path / "rec.imu"
    with RecordingWriter(path) as w:
        link = w.add_link("mem://t")
        for k in range(3):
            w.data(link, float(k), bytes([k]) * (5 + k))
    full = path.read_bytes()
    ends = [c.offset + 20 + len(c.payload) for c in RecordingReader(path).chunks()]
    cut_path = tmp_path / "cut.imu"
    for cut in range(len(R.MAGIC), len(full)):
        cut_path.write_bytes(full[:cut])
        reader = RecordingReader(cut_path)
        whole = [e for e in ends if e <= cut]
        assert len(list(reader.chunks())) == len(whole)
        assert reader.truncated_bytes == cut - (whole[-1] if whole else len(R.MAGIC))
        assert (reader.tail_problem is None) == (reader.truncated_bytes == 0)


def test_corrupt_chunk_stops_the_reader_there(tmp_path: Path) -> None:
    path = tmp_path / "rec.imu"
    with RecordingWriter(path) as w:
        link = w.add_link("mem://c")
        for k in range(10):
            w.data(link, float(k), b"payload %d" % k)
    chunks = list(RecordingReader(path).chunks([ChunkKind.DATA]))
    raw = bytearray(path.read_bytes())
    raw[chunks[6].offset + 20] ^= 0x01  # a bit flip in chunk 6's payload
    path.write_bytes(bytes(raw))
    reader = RecordingReader(path)
    assert [c.payload for c in reader.chunks([ChunkKind.DATA])] == [b"payload %d" % k for k in range(6)]
    assert reader.truncated_bytes == len(raw) - chunks[6].offset
    assert "CRC" in (reader.tail_problem or "")
    # A length field that claims gigabytes is corruption, not a reason to read gigabytes.
    raw[chunks[2].offset:chunks[2].offset + 4] = (0xFFFFFFF0).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    reader = RecordingReader(path)
    assert len(list(reader.chunks([ChunkKind.DATA]))) == 2
    assert "corrupt" in (reader.tail_problem or "")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tail=st.binary(max_size=400), flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=4))
def test_any_damage_after_the_header_never_raises(tmp_path: Path, tail: bytes, flips: list[tuple[int, int]]) -> None:
    """Garbage appended, bytes flipped: the reader returns an intact prefix and accounts for the rest."""
    path = tmp_path / "fuzz.imu"
    if not path.exists():
        with RecordingWriter(path) as w:
            link = w.add_link("mem://fuzz")
            for k in range(20):
                w.data(link, float(k), bytes([k]) * k)
    good = path.read_bytes()
    original = [c.payload for c in RecordingReader(path).chunks()]
    damaged = bytearray(good + tail)
    for at, xor in flips:
        damaged[len(R.MAGIC) + at % (len(damaged) - len(R.MAGIC))] ^= xor
    bad = tmp_path / "damaged.imu"
    bad.write_bytes(bytes(damaged))
    reader = RecordingReader(bad)
    payloads = [c.payload for c in reader.chunks()]
    assert reader.valid_bytes + reader.truncated_bytes == len(damaged)
    # a CRC-32 catches every burst of up to 32 flipped bits, so what comes back is an unchanged prefix
    n = min(len(payloads), len(original))
    assert payloads[:n] == original[:n]
    if not flips:
        assert len(payloads) >= len(original)


def _raw_stream() -> bytes:
    values = np.zeros((3, 4, 2, 3), dtype=np.int16)
    frames = [P.encode(P.Samples(1, k, 0, k * 20_000, 5000, 4, 2, np.zeros(2, np.uint8), *values)) for k in range(3)]
    return b"\x13junk" + b"".join(frames)


@pytest.mark.parametrize("content, needle", [
    (None, "no such file"),
    ("dir", "is a directory"),
    (b"", "is empty"),
    (b"IMU", "truncated"),
    (b"IMUREC\x00\x07" + b"\x00" * 40, "format version 7"),
    (_raw_stream(), "imusic decode"),
    (b"PK\x03\x04" + b"\x00" * 30, "npz"),
    (b"\x89HDF\r\n\x1a\n" + b"\x00" * 30, "HDF5"),
    (b"hello, this is text\n", "not an imusic recording"),
])
def test_unreadable_files_get_one_clear_line(tmp_path: Path, content: bytes | str | None, needle: str) -> None:
    path = tmp_path / "input.imu"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        assert isinstance(content, bytes)
        path.write_bytes(content)
    with pytest.raises(RecordingError) as info:
        RecordingReader(path)
    assert isinstance(info.value, UserError)
    line = one_line(info.value)
    assert needle in line and str(path) in line, line
    # The file link says the same, as a LinkError.
    with pytest.raises(LinkError) as link_info:
        open_link(f"file://{path}")
    assert needle in one_line(link_info.value)


# -- SIGKILL and full disk: real processes ---------------------------------------------------------
def _python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "host_sdk"), env.get("PYTHONPATH")]))
    return env


KILL_WRITER = textwrap.dedent("""
    import random, sys, time
    from imusic.recording import RecordingWriter
    rng = random.Random(int(sys.argv[2]))
    w = RecordingWriter(sys.argv[1])
    link = w.add_link("mem://killed")
    reported = 0
    k = 0
    while True:
        # chunk k carries its number and a deterministic body of random length
        body = bytes([k % 251]) * rng.randrange(0, 3000)
        w.data(link, time.monotonic(), k.to_bytes(4, "little") + body)
        k += 1
        if k % 97 == 0:
            time.sleep(0.15)  # an idle spell: the timer alone must flush
        else:
            time.sleep(0.0005)
        flushed = w.chunks_flushed
        if flushed != reported:
            reported = flushed
            print(flushed, flush=True)
""")


def test_writer_killed_with_sigkill_keeps_everything_flushed(tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    path = tmp_path / "killed.imu"
    proc = subprocess.Popen([sys.executable, "-c", KILL_WRITER, str(path), str(seed)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_python_env())
    reported_flushed = 0
    try:
        assert proc.stdout is not None
        reports_before_kill = random.Random(seed).randrange(3, 20)
        for _ in range(reports_before_kill):
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            reported_flushed = int(line)
        time.sleep(random.Random(seed + 1).random() * 0.05)  # land anywhere in the write loop
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close() if proc.stdout else None
        proc.stderr.close() if proc.stderr else None
    assert proc.returncode == -signal.SIGKILL
    reader = RecordingReader(path)
    data = [c.payload for c in reader.chunks([ChunkKind.DATA])]  # never raises at the torn tail
    # reported counts include the header META chunk and the link's META chunk
    assert len(data) >= reported_flushed - 2, f"seed {seed}"
    rng = random.Random(seed)
    for k, payload in enumerate(data):
        body = bytes([k % 251]) * rng.randrange(0, 3000)
        assert payload == k.to_bytes(4, "little") + body, f"chunk {k}, seed {seed}"
    assert reader.valid_bytes + reader.truncated_bytes == path.stat().st_size


FSIZE_WRITER = textwrap.dedent("""
    import resource, signal, sys
    from imusic.recording import RecordingError, RecordingWriter
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
    w = RecordingWriter(sys.argv[1])
    link = w.add_link("mem://full")
    k = 0
    try:
        while True:
            w.data(link, float(k), k.to_bytes(4, "little") + bytes(700 + k % 300))
            k += 1
            if k % 50 == 0:
                w.flush()
    except RecordingError as exc:
        print(w.chunks_flushed)
        print(exc)
    try:
        w.data(link, 0.0, b"after")
    except RecordingError as exc:
        print(exc)
    try:
        w.close()
    except RecordingError as exc:
        print(exc)
""")


def test_file_size_limit_stops_the_writer_with_a_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "full.imu"
    limit = 200_000
    proc = subprocess.run([sys.executable, "-c", FSIZE_WRITER, str(path), str(limit)], capture_output=True,
                          text=True, env=_python_env(), timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    flushed, error, again, at_close = proc.stdout.splitlines()
    assert "stopped" in error and "file size limit" in error and str(path) in error
    assert again == error and at_close == error  # the writer stays stopped, saying why
    reader = RecordingReader(path)
    data = [c.payload for c in reader.chunks([ChunkKind.DATA])]
    assert len(data) == int(flushed) - 2  # minus the two META chunks
    assert all(p == k.to_bytes(4, "little") + bytes(700 + k % 300) for k, p in enumerate(data))
    assert reader.truncated_bytes == 0  # cut back to the last whole chunk
    assert path.stat().st_size <= limit


def test_full_disk_in_the_timer_thread_surfaces_on_the_next_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "enospc.imu"
    budget = [3000]
    real_write = os.write

    def write_until_full(fd: int, data: bytes | memoryview) -> int:
        if fd != w._fd:  # only the recording's disk is full
            return real_write(fd, data)
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real_write(fd, bytes(data[:budget[0]]))
        budget[0] -= n
        return n

    w = RecordingWriter(path)
    link = w.add_link("mem://disk")
    before = w.flushed_bytes
    monkeypatch.setattr(os, "write", write_until_full)  # the os module imusic.recording writes with
    with pytest.raises(RecordingError) as info:
        for k in range(100_000):
            w.data(link, float(k), bytes([k % 256]) * 100)
            time.sleep(0.0002)
    assert "the disk is full" in one_line(info.value)
    assert w.error is info.value
    with pytest.raises(RecordingError):
        w.close()
    monkeypatch.undo()
    reader = RecordingReader(path)
    data = [c.payload for c in reader.chunks([ChunkKind.DATA])]
    assert data == [bytes([k % 256]) * 100 for k in range(len(data))]
    assert len(data) > 0 and reader.truncated_bytes == 0
    assert reader.valid_bytes == w.flushed_bytes == path.stat().st_size <= before + 3000


# -- file:// replay ------------------------------------------------------------------------------
def test_replay_returns_the_recorded_bytes_times_and_sources(tmp_path: Path) -> None:
    path = tmp_path / "rec.imu"
    expected = write_sample_recording(path)
    urls = {1: "serial:///dev/ttyACM0", 2: "udp://127.0.0.1:50111"}
    with open_link(f"file://{path}") as link:
        assert isinstance(link, FileLink) and link.pace == "fast"
        got: list[Received] = []
        while True:
            try:
                got += link.read(timeout_s=0)
            except LinkClosed:
                break
        assert link.finished and link.truncated_bytes == 0
        assert link.links == urls and link.meta["session"] == "test"
        link.write(b"a command nobody answers")
        assert link.discarded_bytes == len(b"a command nobody answers")
    data = [e for e in expected if e[0] == ChunkKind.DATA]
    assert got == [Received(payload, t, urls[link_id]) for _, link_id, t, payload in data]
    with pytest.raises(LinkClosed):
        link.read()
    with pytest.raises(LinkClosed):
        link.write(b"x")

    # read_replay shows both sides, in file order
    replay = FileLink(str(path))
    both = []
    while not replay.finished:
        try:
            both += replay.read_replay()
        except LinkClosed:
            pass
    replay.close()
    assert [(ChunkKind.HOST if r.sent_by_host else ChunkKind.DATA, r.received.source, r.received.t_host_s,
             r.received.data) for r in both] == [(k, urls[i], t, p) for k, i, t, p in expected]


def test_replay_of_a_torn_recording_ends_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "rec.imu"
    expected = write_sample_recording(path)
    raw = path.read_bytes()
    path.write_bytes(raw[:-7])  # the last chunk (a META) and part of the one before are torn
    link = FileLink(str(path))
    got: list[Received] = []
    with pytest.raises(LinkClosed):
        while True:
            got += link.read()
    assert link.finished and link.truncated_bytes > 0
    data = [e for e in expected if e[0] == ChunkKind.DATA]
    assert [r.data for r in got] == [e[3] for e in data][:len(got)] and len(got) >= len(data) - 1


def test_bad_replay_urls_get_one_line(tmp_path: Path) -> None:
    path = tmp_path / "rec.imu"
    write_sample_recording(path)
    for url, needle in ((f"file://{path}?pace=slow", "pace"), (f"file://{path}?speed=2", "unknown parameter"),
                        ("file://", "expected file://PATH")):
        with pytest.raises(LinkError) as info:
            open_link(url)
        assert needle in one_line(info.value)


def test_recorded_pace_follows_the_recorded_gaps(tmp_path: Path) -> None:
    path = tmp_path / "paced.imu"
    recorded = [100.0, 100.05, 100.1, 101.0, 101.05, 101.2]  # one long gap among short ones
    with RecordingWriter(path) as w:
        link_id = w.add_link("mem://paced")
        for k, t in enumerate(recorded):
            w.data(link_id, t, bytes([k]))
    link = open_link(f"file://{path}?pace=recorded")
    out_at: list[float] = []
    got: list[Received] = []
    while len(got) < len(recorded):
        batch = link.read(timeout_s=None)
        now = time.monotonic()
        got += batch
        out_at += [now] * len(batch)
    assert isinstance(link, FileLink) and link.finished  # the last chunk is out
    link.close()
    assert [r.t_host_s for r in got] == recorded and [r.data for r in got] == [bytes([k]) for k in range(6)]
    replayed = np.array(out_at) - out_at[0]
    offsets = np.array(recorded) - recorded[0]
    # Never early (a small allowance for the clock's granularity), and not wildly late overall.
    assert np.all(replayed >= offsets - 0.005), (replayed, offsets)
    assert replayed[-1] / offsets[-1] < 5, (replayed, offsets)
    # The long gap stands out as the longest in the replay too.
    assert np.argmax(np.diff(replayed)) == np.argmax(np.diff(offsets))


def test_recorded_pace_honours_timeout_and_close(tmp_path: Path) -> None:
    path = tmp_path / "slow.imu"
    with RecordingWriter(path) as w:
        link_id = w.add_link("mem://slow")
        w.data(link_id, 10.0, b"first")
        w.data(link_id, 3610.0, b"an hour later")
    link = open_link(f"file://{path}?pace=recorded")
    assert [r.data for r in link.read()] == [b"first"]
    assert link.read(timeout_s=0) == []
    assert link.read(timeout_s=0.01) == []
    errors: list[BaseException] = []

    def blocked_read() -> None:
        try:
            link.read(timeout_s=None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    reader = threading.Thread(target=blocked_read)
    reader.start()
    time.sleep(0.05)
    link.close()
    reader.join(timeout=30)
    assert not reader.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], LinkClosed)
