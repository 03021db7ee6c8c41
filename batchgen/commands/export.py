from __future__ import annotations

import argparse
from pathlib import Path

from batchgen.errors import UsageError
from batchgen.journal.writer import JOURNAL_NAME
from batchgen.outputs.export import FORMATS, export
from batchgen.outputs.index import METADATA

EXAMPLES = """\
examples:
  batchgen export outputs/demo --format parquet       OUT/exports/index.parquet (needs pyarrow)
  batchgen export outputs/demo --format csv --dest demo.csv
  batchgen export outputs/demo --format webdataset --shard-size 500
                                                      OUT/exports/webdataset/shard-000000.tar ...
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="a run's output folder")
    p.add_argument(
        "--format",
        required=True,
        choices=list(FORMATS),
        help="parquet: the index with typed columns; csv: the index, safe to open in a"
        " spreadsheet; webdataset: tar shards of each image with its index row",
    )
    p.add_argument(
        "--dest",
        metavar="PATH",
        help="where to write: a file for parquet and csv, a folder for webdataset"
        " (default: under OUT/exports)",
    )
    p.add_argument(
        "--shard-size", type=int, default=1000, metavar="N", help="samples per webdataset shard"
    )


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if not ((out / METADATA).is_file() or (out / JOURNAL_NAME).is_file()):
        raise UsageError(
            f"{out} has neither {METADATA} nor {JOURNAL_NAME}: is it a batchgen output folder?"
        )
    dest = Path(args.dest) if args.dest else None
    result = export(out, args.format, dest, shard_size=args.shard_size)
    for path in result.paths:
        print(path)
    print(f"{result.rows} rows exported as {args.format}")
    if result.skipped_count:
        print(f"skipped {result.skipped_count:,} images missing or changed on disk:")
        shown = result.skipped[:20]
        for name in shown:
            print(f"  {name}")
        if result.skipped_count > len(shown):
            print(f"  ... and {result.skipped_count - len(shown):,} more")
        return 1
    return 0
