"""``imusic simulate``: under construction (issue 4)."""

from __future__ import annotations

import argparse

from imusic.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise UserError("imusic simulate is not built yet")
