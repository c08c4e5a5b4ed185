"""A loop that falls behind by whole periods sends what it has as a shorter frame, skips the missed
ticks (counted in STATUS) and goes on at the schedule: every frame stays evenly spaced."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import decode_all
from imusic.emulation.launcher import EmulatedNode
from imusic.protocol import Samples, Status

HELPER = Path(__file__).resolve().parent / "mp_node" / "overrun.py"


def test_overrun_skips_ticks_and_keeps_frames_evenly_spaced(tmp_path: Path, micropython: str) -> None:
    node = EmulatedNode(imus=3, rate_hz=200, clock="virtual", link="pty", workdir=tmp_path)
    # 10 ticks (t = 5..50 ms) = 2 full frames + 2 samples of the third. Then the clock jumps 7 1/3
    # periods: ticks 11..16 (55..80 ms) are wholly past and skipped, tick 17 (85 ms) is read a third
    # of a period late. Then 1.5 s more.
    proc = node.run_script(HELPER, "10", "7", "300", timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    messages, decoder = decode_all(proc.stdout)
    samples = [m for m in messages if isinstance(m, Samples)]
    assert [s.n_samples for s in samples[:4]] == [4, 4, 2, 4]  # the third frame was cut short
    assert decoder.nodes[1].lost_frames == 0
    t = np.concatenate([s.t_us() for s in samples])
    gaps = np.diff(t)
    assert sorted(set(gaps.tolist())) == [5000, 5000 * 7]  # one gap: the 6 skipped ticks
    assert t[0] == 5000 and t[9] == 50_000 and t[10] == 85_000
    assert [m.ticks_missed for m in messages if isinstance(m, Status)][-1] == 6
