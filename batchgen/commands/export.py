from __future__ import annotations

import argparse

from batchgen.errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="a run's output folder")
    p.add_argument("--format", required=True, choices=["parquet", "csv", "webdataset"])
    p.add_argument("--dest", help="where to write (default: inside the output folder)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per webdataset shard")


def run(args: argparse.Namespace) -> int:
    raise UsageError("export is not built yet")
