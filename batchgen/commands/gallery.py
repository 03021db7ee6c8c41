from __future__ import annotations

import argparse

from batchgen.errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="a run's output folder")


def run(args: argparse.Namespace) -> int:
    raise UsageError("gallery is not built yet")
