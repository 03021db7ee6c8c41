from __future__ import annotations

import argparse

from batchgen.errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="a run's output folder")
    p.add_argument("--rebuild", action="store_true", help="rewrite the index from the journal")


def run(args: argparse.Namespace) -> int:
    raise UsageError("index is not built yet")
