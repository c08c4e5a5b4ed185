"""Build hook: a wheel carries the node firmware as ``imusic/_firmware`` and the placement layouts
as ``imusic/_placements``, so ``imusic flash``, ``imusic emulate-node`` and ``imusic placement``
work from an installed package too (a source checkout reads ``firmware/`` and
``hardware/placements/``)."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

# source folder in the checkout -> folder inside the installed package
BUNDLED = {"firmware": "_firmware", "hardware/placements": "_placements"}


class BuildPyWithBundles(build_py):
    def run(self) -> None:
        super().run()
        root = Path(__file__).parent
        for src_rel, dst_name in BUNDLED.items():
            src = root / src_rel
            dst = Path(self.build_lib) / "imusic" / dst_name
            if src.is_dir():
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithBundles})
