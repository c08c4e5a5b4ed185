"""Build hook: a wheel carries the node firmware as ``imusic/_firmware`` so ``imusic flash`` and
``imusic emulate-node`` work from an installed package too (a source checkout reads ``firmware/``)."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithFirmware(build_py):
    def run(self) -> None:
        super().run()
        src = Path(__file__).parent / "firmware"
        dst = Path(self.build_lib) / "imusic" / "_firmware"
        if src.is_dir():
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithFirmware})
