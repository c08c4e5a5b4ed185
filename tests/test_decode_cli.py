"""``imusic decode``: run as a subprocess on files written here; exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import imusic.protocol as P
from testenv import REPO


def run_decode(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "host_sdk"), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "imusic.cli", "decode", *args], capture_output=True, text=True,
                          env=env, timeout=60)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def _samples(node_id: int, seq: int, n_imus: int, t_first_us: int) -> bytes:
    values = np.full((3, 4, n_imus, 3), seq, dtype=np.int16)
    return P.encode(P.Samples(node_id, seq, 0, t_first_us, 5000, 4, n_imus, np.zeros(n_imus, np.uint8), *values))


@pytest.fixture()
def recording(tmp_path: Path) -> tuple[Path, dict]:
    """Two nodes; node 1 loses its frame 5 and has one corrupt frame; 13 bytes of junk up front."""
    junk = b"\x00\x01 not a frame"
    frames = [junk]
    corrupt = bytearray(_samples(1, 5, 11, 5 * 20_000))
    corrupt[20] ^= 0xFF
    for k in range(20):
        frames.append(bytes(corrupt) if k == 5 else _samples(1, k, 11, k * 20_000))
        frames.append(_samples(2, 100 + k, 3, 7_000_000 + k * 20_000))
    path = tmp_path / "rec.bin"
    path.write_bytes(b"".join(frames))
    expected = {"bytes": path.stat().st_size, "frames": 39, "crc_errors": 1, "garbage_bytes": len(junk) + len(corrupt)}
    return path, expected


def test_json_summary_is_one_object_with_the_counts(recording):
    path, expected = recording
    proc = run_decode(str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)  # exactly one JSON document
    for key, value in expected.items():
        assert summary[key] == value, key
    node1, node2 = summary["nodes"]["1"], summary["nodes"]["2"]
    assert (node1["imus"], node1["samples"], node1["lost_frames"]) == (11, 19 * 4 * 11, 1)
    assert (node1["first_us"], node1["last_us"]) == (0, 19 * 20_000 + 15_000)
    assert node1["rate_hz"] == pytest.approx(19 * 4 / (20 * 0.020))  # one frame of 20 missing
    assert (node2["imus"], node2["samples"], node2["lost_frames"], node2["first_us"]) == (3, 20 * 4 * 3, 0, 7_000_000)
    assert node2["rate_hz"] == pytest.approx(200.0)


def test_human_summary(recording):
    path, _ = recording
    proc = run_decode(str(path))
    assert proc.returncode == 0 and proc.stderr == ""
    assert "node 1" in proc.stdout and "836 IMU-samples" in proc.stdout and "1 lost" in proc.stdout
    assert "node 2" in proc.stdout and "240 IMU-samples at 200.0 Hz" in proc.stdout


@pytest.mark.parametrize("content", [b"", bytes(range(256)).replace(b"\xa5", b"") * 40, b"\xa5\x5a\x01\x02" * 500])
def test_file_without_frames_is_an_error_but_still_decoded(tmp_path, content):
    path = tmp_path / "noise.bin"
    path.write_bytes(content)
    proc = run_decode(str(path))
    assert proc.returncode == 1
    assert "no imusic frames found" in one_error_line(proc)
    proc = run_decode(str(path), "--json")
    assert proc.returncode == 1
    assert "no imusic frames found" in one_error_line(proc)
    summary = json.loads(proc.stdout)
    assert summary["frames"] == 0 and summary["bytes"] == len(content) and summary["nodes"] == {}


def test_unreadable_paths_are_user_errors(tmp_path):
    a_file = tmp_path / "file.bin"
    a_file.write_bytes(b"x")
    for path, words in ((tmp_path / "missing.bin", "no such file"), (tmp_path, "directory"), (a_file / "below", "cannot read")):
        proc = run_decode(str(path))
        assert proc.returncode == 2
        line = one_error_line(proc)
        assert line.startswith("imusic: error:") and words in line
