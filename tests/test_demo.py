"""`imusic demo` (what `make demo` runs): emulated nodes over ptys into the host decoder."""

from __future__ import annotations

import re

from testenv import run_cli


def test_demo_streams_every_node_without_loss() -> None:
    proc = run_cli("demo", "--nodes", "2", "--imus", "4", "--rate", "60", "--seconds", "3", timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = proc.stdout.split("summary:")[1]
    rows = re.findall(r"node (\d+): (\d+) frames, (\d+) IMU-samples, ([\d.]+) Hz, lost (\d+), CRC errors (\d+)",
                      summary)
    assert sorted(int(r[0]) for r in rows) == [1, 2]
    for _, frames, samples, rate_hz, lost, crc in rows:
        assert int(frames) > 60 and int(samples) > 4 * 60 * 2  # about 3 s of 4 IMUs at 60 Hz
        assert abs(float(rate_hz) - 60.0) < 0.5
        assert int(lost) == 0 and int(crc) == 0
