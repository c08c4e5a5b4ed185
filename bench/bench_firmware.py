"""Firmware figures, measured on the emulated rig (the real firmware under the MicroPython unix
port on this machine):

1. Pack cost: microseconds and heap bytes per SAMPLES frame and per IMU-sample, for the firmware's
   own path and a naive packer, in one run (bench/mp/pack_bench.py).
2. Bytes on the wire per 6-axis IMU-sample, counted in streams the firmware wrote (SAMPLES frames,
   and everything: HELLO, STATUS, LOG included).
3. Link budget: those streams' bytes per second against UART at 921,600 baud and USB-CDC.

    .venv/bin/python bench/bench_firmware.py

Unix-port timings are for comparing the two packers in one run; a board's core is slower.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from imusic.emulation.launcher import EmulatedNode
from imusic.protocol import Samples, StreamDecoder

HERE = Path(__file__).resolve().parent
UART_BPS = 921_600 / 10  # 8N1: 10 bits on the wire per byte
# USB full speed bulk: at most 19 packets of 64 bytes per 1 ms frame. MicroPython's CDC stack
# reaches less; the ceiling is the bus's, stated as such.
USB_FS_BULK_BPS = 19 * 64 * 1000
QUAT_ACCEL_BYTES = 28  # float32 quaternion (16) + float32 acceleration (12), before any header


def pack_cost(n_imus: int = 11, rate_hz: int = 200) -> list[list[str]]:
    node = EmulatedNode(imus=n_imus, rate_hz=rate_hz, clock="virtual", link="file:/dev/null")
    proc = node.run_script(HERE / "mp" / "pack_bench.py", "3000", timeout=600)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr.decode())
    rows = []
    for line in proc.stdout.decode().splitlines():
        if line.startswith("RESULT"):
            _, case, us, heap, per_frame = line.split()
            n = int(per_frame)
            rows.append([case, f"{float(us):.1f}", f"{float(us) / n:.3f}", f"{float(heap):.0f}",
                         f"{float(heap) / n:.1f}"])
    return rows


def stream_bytes(n_imus: int, rate_hz: int, seconds: float = 5.0) -> tuple[float, float, int]:
    """(bytes per IMU-sample in SAMPLES frames, all bytes per second, samples per frame)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "s.bin"
        node = EmulatedNode(imus=n_imus, rate_hz=rate_hz, clock="virtual", link=f"file:{out}",
                            max_seconds=seconds)
        with node:
            node.wait(timeout=300)
        data = out.read_bytes()
    decoder = StreamDecoder()
    messages = decoder.feed(data) + decoder.flush()
    samples = [m for m in messages if isinstance(m, Samples)]
    samples_bytes = sum(14 + 16 + m.n_imus + 12 * m.n_samples * m.n_imus for m in samples)
    imu_samples = sum(m.n_samples * m.n_imus for m in samples)
    duration_s = (samples[-1].t_us()[-1] - samples[0].t_us()[0]) / 1e6 + 1 / rate_hz
    return samples_bytes / imu_samples, len(data) / duration_s, samples[0].n_samples


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def main() -> int:
    print("### Pack cost, 11 IMUs x 4 samples per frame (MicroPython unix port, x86-64)\n")
    print(table(["packer", "us/frame", "us/IMU-sample", "heap B/frame", "heap B/IMU-sample"], pack_cost()))
    print("\n(loop = the whole node.step() loop with emulated I2C chips in Python: the emulator's cost.)\n")

    print("### Wire bytes and link budget (6-axis IMUs, streams written by the firmware)\n")
    rows = []
    for n_imus in (11, 16):
        for rate_hz in (60, 100, 200):
            per_sample, bps, spf = stream_bytes(n_imus, rate_hz)
            rows.append([n_imus, rate_hz, spf, f"{per_sample:.2f}", f"{(per_sample / 12 - 1) * 100:.1f}%",
                         f"{bps:,.0f}", f"{bps / UART_BPS * 100:.1f}%", f"{bps / USB_FS_BULK_BPS * 100:.2f}%",
                         f"{n_imus * rate_hz * QUAT_ACCEL_BYTES:,}"])
    print(table(["IMUs", "rate Hz", "samples/frame", "B/IMU-sample", "overhead", "all B/s",
                 "UART 921.6k", "USB FS bulk", "quat+accel B/s (no headers)"], rows))
    print(f"\nUART 921,600 baud 8N1 = {UART_BPS:,.0f} B/s; USB full-speed bulk ceiling = {USB_FS_BULK_BPS:,} B/s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
