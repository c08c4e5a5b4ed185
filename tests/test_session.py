"""Sessions of emulated nodes (the real firmware under MicroPython) on ptys and UDP, with drift,
jitter, loss, a reboot and a pulled cable; recordings killed mid-write; export round trips."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from imusic.emulation.launcher import EmulatedNode
from imusic.export import read_frames
from imusic.session import Session, recording_url
from testenv import assert_one_line_error, run_cli


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _collect(session: Session, seconds: float) -> list:
    frames, t_end = [], time.monotonic() + seconds
    for frame in session.frames(timeout_s=2.0):
        frames.append(frame)
        if time.monotonic() >= t_end:
            break
    return frames


def test_nodes_on_ptys_and_udp_at_once_come_out_aligned(tmp_path: Path) -> None:
    port = _free_udp_port()
    recording = tmp_path / "mixed.imu"
    with EmulatedNode(imus=3, rate_hz=100, node_id=3, seed=3, link=f"udp:127.0.0.1:{port}"):
        urls = ["emu://?imus=4&rate=200&node_id=1", "emu://?imus=2&rate=60&node_id=2&seed=2",
                f"udp://127.0.0.1:{port}"]
        with Session.open(urls, record=recording) as session:
            # A stranger on the UDP port: counted and dropped, never a node of the session.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
                for _ in range(5):
                    stranger.sendto(b"\xa5\x5a not a frame", ("127.0.0.1", port))
            deadline = time.monotonic() + 10
            while len(session.nodes) < 3 and time.monotonic() < deadline:
                _collect(session, 0.5)
            assert sorted(session.nodes) == [1, 2, 3]
            frames = _collect(session, 3.0)
            assert session.stats.unknown_datagrams >= 5
    last = frames[-60:]
    assert all(f.valid.size == 9 for f in last)  # 4 + 2 + 3 IMUs, nodes by id
    assert [f.node_ids for f in last][-1] == (1, 1, 1, 1, 2, 2, 3, 3, 3)
    steps = np.diff([f.t_host_s for f in frames])
    assert np.allclose(steps, 1 / 60)  # one frame clock, no frame twice, none skipped
    valid = np.array([f.valid for f in last])
    assert valid.mean() > 0.95
    accel = np.array([f.accel_mps2 for f in last])
    assert np.all(np.isnan(accel[~valid])) and not np.isnan(accel[valid]).any()
    assert 9.0 < np.nanmedian(np.linalg.norm(accel, axis=2)) < 10.6  # gravity, in m/s^2
    # The recording keeps each UDP peer apart from the stranger and from the pty nodes.
    with Session.open([recording_url(recording)]) as replay:
        replayed = list(replay.frames())
        report = replay.node_report()
    assert sorted(report) == ["1", "2", "3"] and report["3"]["imus"] == 3 and report["3"]["samples"] > 300
    assert replayed[-1].valid.size == 9


def test_drift_and_jitter_are_fitted_and_frames_stay_aligned() -> None:
    urls = ["emu://?imus=2&node_id=1&drift_ppm=200&jitter_ms=5&seed=4",
            "emu://?imus=2&node_id=2&drift_ppm=-200&jitter_ms=5&seed=5"]
    with Session.open(urls, sync_interval_s=0.5) as session:
        frames = _collect(session, 6.0)
        report = session.node_report()
    fast, slow = report["1"]["clock_drift_ppm"], report["2"]["clock_drift_ppm"]
    assert report["1"]["clock_source"] == "probes" and report["2"]["clock_source"] == "probes"
    # +-200 ppm injected: the fitted difference is 400 ppm, within what 6 s of 0-5 ms jitter allow.
    assert 250 < fast - slow < 550, (fast, slow)
    valid = np.array([f.valid for f in frames[-120:]])
    assert valid.mean() > 0.9


def test_injected_loss_is_reported_exactly_and_leaves_marked_gaps() -> None:
    with EmulatedNode(imus=2, rate_hz=100, node_id=1, loss=0.1, seed=6, link="pty") as node:
        with Session.open([str(node.pty_path)]) as session:
            client = session.nodes[1]
            seqs: list[int] = []
            client.listeners.append(lambda msg, t: seqs.append(msg.seq))
            frames = _collect(session, 4.0)
        # The session is closed: what it counted is frozen. The node runs on; its log is the truth.
        lost = client.stats().lost_frames
        dropped = node.dropped_frames()
    # The decoder sees a loss between the first and the newest frame it received.
    first, newest = min(seqs), max(seqs)
    injected = [seq for seq in dropped if first < seq < newest]
    assert len(injected) > 10
    assert lost == len(injected)
    valid = np.array([f.valid for f in frames[30:]])
    assert 0 < (~valid).mean() < 0.5  # lost samples show as gaps, never filled


def test_reboot_mid_session_is_detected_and_the_stream_goes_on() -> None:
    with EmulatedNode(imus=2, rate_hz=100, node_id=1, reboot_after_s=1.5, link="pty") as node:
        with Session.open([str(node.pty_path)]) as session:
            frames = _collect(session, 5.0)
            client = session.nodes[1]
            assert client.reboots == 1
    t = np.array([f.t_host_s for f in frames])
    valid = np.array([f.valid.all() for f in frames])
    assert valid[-60:].all()  # a clean stream after the new boot, on the same frame clock
    assert np.allclose(np.diff(t), 1 / 60)


def test_pty_closed_and_reopened_reconnects(tmp_path: Path) -> None:
    link = tmp_path / "node1"
    with EmulatedNode(imus=2, rate_hz=100, node_id=1, link="pty", reopen_after=(1.5, 0.7), pty_link=str(link)):
        deadline = time.monotonic() + 5
        while not link.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with Session.open([str(link)]) as session:
            frames = _collect(session, 5.0)
            client = session.nodes[1]
            assert client.reconnects >= 1
    valid = np.array([f.valid.all() for f in frames])
    assert not valid.all()  # the cable was out for a while: those frames are gaps
    assert valid[-60:].all()  # and the stream came back


def test_recording_killed_with_sigkill_reads_back(tmp_path: Path) -> None:
    out = tmp_path / "killed.imu"
    proc = subprocess.Popen([sys.executable, "-m", "imusic.cli", "record", "--out", str(out), "--emulate", "1",
                             "--seconds", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        assert proc.stdout is not None
        while time.monotonic() < deadline:  # wait for two progress lines: data is flowing
            line = proc.stdout.readline()
            if line.startswith("t=  2"):
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    stats = run_cli("stats", str(out), "--json", timeout=120)
    assert stats.returncode == 0, stats.stderr
    report = json.loads(stats.stdout)
    assert report["nodes"]["1"]["samples"] >= 11 * 100  # at least the first second survived
    assert report["frames_aligned"] > 60


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rec") / "session.imu"
    with Session.open(["emu://?imus=3&rate=100&node_id=1", "emu://?imus=2&rate=200&node_id=2&seed=2"],
                      record=path) as session:
        _collect(session, 3.0)
    return path


def test_replay_reproduces_the_recorded_session(recording: Path) -> None:
    with Session.open([recording_url(recording)]) as replay:
        frames = list(replay.frames())
        report = replay.node_report()
    assert sorted(report) == ["1", "2"] and report["1"]["imus"] == 3 and report["2"]["imus"] == 2
    assert report["1"]["lost_frames"] == 0 and report["1"]["clock_source"] == "probes"
    assert len(frames) > 150 and np.array([f.valid for f in frames[10:]]).mean() > 0.95


@pytest.mark.parametrize("fmt", ["npz", "csv", "hdf5"])
def test_export_to_each_format_reads_back_the_same_numbers(recording: Path, fmt: str, tmp_path: Path) -> None:
    out = tmp_path / f"frames.{fmt}"
    proc = run_cli("export", str(recording), "--to", fmt, "--out", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr
    with Session.open([recording_url(recording)]) as replay:
        frames = list(replay.frames())
    back = read_frames(out)
    assert back.t_host_s.shape[0] == len(frames)
    np.testing.assert_array_equal(back.t_host_s, [f.t_host_s for f in frames])
    np.testing.assert_array_equal(back.accel_mps2, np.array([f.accel_mps2 for f in frames]))
    np.testing.assert_array_equal(back.gyro_rads, np.array([f.gyro_rads for f in frames]))
    np.testing.assert_array_equal(back.valid, np.array([f.valid for f in frames]))


def test_bad_input_to_the_session_commands_is_one_line(tmp_path: Path, recording: Path) -> None:
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b"\xa5\x5a" + os.urandom(300))
    assert_one_line_error(run_cli("stats", str(raw)), "raw.bin")
    assert_one_line_error(run_cli("stats", str(tmp_path / "none.imu")), "none.imu")
    assert_one_line_error(run_cli("record", "--out", str(tmp_path / "a.imu"), "bogus://x"), "bogus")
    assert_one_line_error(run_cli("record", "--out", str(tmp_path / "b.imu"), "/dev/ttyNOPE9"), "/dev/ttyNOPE9")
    assert_one_line_error(run_cli("record", "--out", str(recording), "--emulate", "1"), "exists")
    assert_one_line_error(run_cli("export", str(recording), "--to", "npz", "--out", str(recording)), "exists")


def test_callbacks_and_async_iteration_see_the_same_frames() -> None:
    import asyncio

    seen: list[float] = []
    with Session.open(["emu://?imus=2&rate=100&node_id=1"]) as session:
        session.on_frame(lambda frame: seen.append(frame.t_host_s))

        async def first_frames(n: int) -> list[float]:
            out = []
            async for frame in session.aframes():
                out.append(frame.t_host_s)
                if len(out) == n:
                    break
            return out

        got = asyncio.run(first_frames(60))
    assert len(got) == 60 and np.allclose(np.diff(got), 1 / 60)
    assert set(got) <= set(seen)  # every frame the async iterator gave went through the callback


def test_the_example_runs_on_the_emulated_rig() -> None:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "examples" / "print_frames.py")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("t=")]
    assert len(lines) == 4 and all("valid" in line for line in lines)
    assert lines[-1].split("valid ")[1].startswith("5/5")


def test_a_reader_that_dies_is_raised_not_hidden() -> None:
    # Callbacks run in the reading thread: one that raises stops that reader, and the caller hears of
    # it instead of seeing a node fall silent.
    with Session.open(["emu://?imus=1&rate=100&node_id=1"]) as session:
        session.on_frame(lambda frame: 1 / 0)
        with pytest.raises(RuntimeError, match="ZeroDivisionError"):
            for _ in session.frames(timeout_s=5.0):
                pass


def test_a_full_disk_stops_the_recording_with_one_line_and_keeps_it_readable(tmp_path: Path) -> None:
    import resource

    out = tmp_path / "full.imu"

    def small_disk() -> None:  # the file may not grow past 150 kB: writes then fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))

    proc = subprocess.run([sys.executable, "-m", "imusic.cli", "record", "--out", str(out), "--emulate", "1",
                           "--seconds", "30"], capture_output=True, text=True, timeout=60, preexec_fn=small_disk)
    assert_one_line_error(proc, str(out))
    assert out.stat().st_size <= 150_000
    stats = run_cli("stats", str(out), "--json", timeout=120)
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["nodes"]["1"]["samples"] > 1000  # what was flushed before is all there
