"""The sample-pack-send loop allocates nothing in the steady state (real loop code under
MicroPython, emulated buses with muxes and magnetometers, a file link)."""

from __future__ import annotations

from pathlib import Path

from imusic.emulation.launcher import EmulatedNode, build_layout

HELPER = Path(__file__).resolve().parent / "mp_node" / "alloc_loop.py"


def test_loop_does_not_allocate_over_1000_iterations(tmp_path: Path, micropython: str) -> None:
    layout = build_layout(11, chips=["qmi8658", "icm42688"] * 5 + ["qmi8658"], mags=(1, 6))
    node = EmulatedNode(imus=layout, rate_hz=200, clock="virtual", link="file:/dev/null", workdir=tmp_path)
    proc = node.run_script(HELPER, "1000")
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    alloc = next(line.split() for line in lines if line.startswith("ALLOC"))
    allocated, frames, iterations = int(alloc[1]), int(alloc[2]), int(alloc[3])
    # 1000 ticks at 200 Hz, 4 samples per frame: 250 SAMPLES + 5 STATUS frames went out.
    assert iterations == 1000 and frames == 255
    assert allocated == 0, f"{allocated} bytes allocated in {iterations} loop iterations"
    assert "LOCKED OK" in lines, proc.stderr.decode()
