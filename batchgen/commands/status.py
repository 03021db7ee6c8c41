from __future__ import annotations

import argparse

from batchgen.errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="a run's output folder")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")


def run(args: argparse.Namespace) -> int:
    raise UsageError("status is not built yet")
