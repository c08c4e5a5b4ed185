"""Make the golden byte streams in this folder: the real firmware under MicroPython, emulated IMUs,
virtual clock (so every run gives the same bytes), file link.

    .venv/bin/python tests/vectors/make_vectors.py

The wire format may only change with a new protocol version; then re-run this and commit the new
vectors together with the version bump. `manifest.json` records what each stream was made from, so
the tests can check the decoded content against the emulation, not against the decoder itself.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> how the emulated node was set up
VECTORS: dict[str, dict] = {
    # IMUSIC's rig: 11 QMI8658 over two buses, one TCA9548A each.
    "v1_node1_11imu_100hz": {"node_id": 1, "chips": ["qmi8658"] * 11, "mags": [], "rate_hz": 100,
                             "seconds": 2, "seed": 1, "start_us": 0, "faults": []},
    # Mixed chips, two 9-axis sites, the fastest rate.
    "v1_node7_mixed_mag_200hz": {"node_id": 7, "chips": ["qmi8658", "icm42688", "qmi8658", "icm42688"],
                                 "mags": [0, 3], "rate_hz": 200, "seconds": 1, "seed": 7, "start_us": 0,
                                 "faults": []},
    # ARKit rate, one IMU stops answering for half a second, clock started 1 s before the 2^30 wrap.
    "v1_node3_fault_wrap_60hz": {"node_id": 3, "chips": ["qmi8658"] * 3, "mags": [], "rate_hz": 60,
                                 "seconds": 2, "seed": 3, "start_us": (1 << 30) - 1_000_000,
                                 "faults": [[1, 500_000, 1_000_000]]},
}


def make(name: str, spec: dict, out: Path) -> None:
    from imusic.emulation.launcher import EmulatedNode, Fault, build_layout

    layout = build_layout(len(spec["chips"]), spec["chips"], spec["mags"])
    # Fault windows are in device time, which starts at 0 at the node's first clock reading.
    faults = [Fault(imu, t0, t1) for imu, t0, t1 in spec["faults"]]
    node = EmulatedNode(imus=layout, rate_hz=spec["rate_hz"], node_id=spec["node_id"], link=f"file:{out}",
                        clock="virtual", start_us=spec["start_us"], seed=spec["seed"], faults=faults,
                        max_seconds=spec["seconds"])
    with node:
        code = node.wait(timeout=120)
    if code not in (0, None) or not out.exists() or out.stat().st_size == 0:
        raise SystemExit(f"{name}: the emulated node failed ({code}): {node.stderr_text()[-500:]}")


def main(dest: Path = HERE) -> int:
    for name, spec in VECTORS.items():
        make(name, spec, dest / f"{name}.bin")
        print(f"{name}.bin: {(dest / f'{name}.bin').stat().st_size} bytes")
    (dest / "manifest.json").write_text(json.dumps(VECTORS, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE))
