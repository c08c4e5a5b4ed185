"""`imusic demo` (what `make demo` runs): a simulated subject on the emulated rig through the shipped
model; and `--raw`, emulated nodes over ptys straight into the host decoder."""

from __future__ import annotations

import os
import re

from testenv import run_cli


def test_demo_streams_every_node_without_loss() -> None:
    proc = run_cli("demo", "--raw", "--nodes", "2", "--imus", "4", "--rate", "60", "--seconds", "3", timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = proc.stdout.split("summary:")[1]
    rows = re.findall(r"node (\d+): (\d+) frames, (\d+) IMU-samples, ([\d.]+) Hz, lost (\d+), CRC errors (\d+)",
                      summary)
    assert sorted(int(r[0]) for r in rows) == [1, 2]
    for _, frames, samples, rate_hz, lost, crc in rows:
        assert int(frames) > 60 and int(samples) > 4 * 60 * 2  # about 3 s of 4 IMUs at 60 Hz
        assert abs(float(rate_hz) - 60.0) < 0.5
        assert int(lost) == 0 and int(crc) == 0


def test_demo_predicts_blendshapes_close_to_the_truth(tmp_path) -> None:
    """The main job: firmware -> session -> features -> shipped int8 model, scored against the
    simulator's truth after the aligner put it on the session's clock."""
    proc = run_cli("demo", "--seconds", "12", "--seed", "11", timeout=600, env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    bars = [line for line in proc.stdout.splitlines() if re.match(r"\s*\d+\.\ds ", line)]
    assert len(bars) >= 8  # a line a second
    m = re.search(r"(\d+) frames; .* MAE against the simulator's truth ([\d.]+) over (\d+) frames", proc.stdout)
    assert m, proc.stdout
    assert int(m.group(1)) > 8 * 60
    # the shipped model scores about 0.03-0.05 on held-out simulated subjects; predicting zeros scores
    # the mean weight (about 0.1): a broken pipeline (wrong site order, no calibration, bad alignment) does not
    # get under 0.08
    assert float(m.group(2)) < 0.08
