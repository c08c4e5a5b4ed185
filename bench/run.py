"""Run every benchmark in bench/ (files named bench_*.py) and print their tables.

`make bench` runs this. Figures quoted in docs/bench.md come from here, with the command that
measured them; nothing here is a pass/fail threshold.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    print(f"# imusic benchmarks on {platform.machine()} / Python {platform.python_version()}\n")
    status = 0
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"## {script.stem}  (python bench/{script.name})\n", flush=True)
        proc = subprocess.run([sys.executable, str(script)], cwd=HERE.parent)
        status |= proc.returncode
        print(flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
