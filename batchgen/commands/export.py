from __future__ import annotations

import argparse
import sys
from pathlib import Path

from batchgen.errors import UsageError
from batchgen.journal.opening import writer_pid
from batchgen.journal.writer import JOURNAL_NAME
from batchgen.outputs.export import FORMATS, export
from batchgen.outputs.index import METADATA

EXAMPLES = """\
examples:
  batchgen export outputs/demo --format parquet       OUT/exports/index.parquet (needs pyarrow)
  batchgen export outputs/demo --format csv --dest demo.csv
  batchgen export outputs/demo --format webdataset --shard-size 500
                                                      OUT/exports/webdataset/shard-000000.tar ...
  batchgen export outputs/demo --format csv --include-stale
                                                      stale images too (prompts since edited)
  batchgen export outputs/demo --format parquet --exclude rejected
                                                      without the images marked rejected
  batchgen export outputs/demo --format captions --only picked --dest train/10_demo
                                                      each picked image + <stem>.txt (its
                                                      prompt), for kohya-ss or diffusers
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="a run's output folder")
    p.add_argument(
        "--format",
        required=True,
        choices=list(FORMATS),
        help="parquet: the index with typed columns; csv: the index, safe to open in a"
        " spreadsheet; webdataset: tar shards of each image with its index row; captions:"
        " each image (hard-linked where possible) with a .txt of its prompt, flat in a"
        " folder. Every format has a review column (picked, rejected or empty)",
    )
    p.add_argument(
        "--dest",
        metavar="PATH",
        help="where to write: a file for parquet and csv, a folder for webdataset"
        " (default: under OUT/exports) and captions (required, outside OUT)",
    )
    p.add_argument(
        "--shard-size", type=int, default=1000, metavar="N", help="samples per webdataset shard"
    )
    p.add_argument(
        "--include-stale",
        action="store_true",
        help="keep the images of prompts no longer in the manifest (stale: an edited or"
        " removed prompt's images; left out by default)",
    )
    p.add_argument(
        "--exclude",
        choices=["rejected"],
        help="leave out the images marked rejected (batchgen mark, the review page)",
    )
    p.add_argument(
        "--only",
        choices=["picked"],
        help="export only the images marked picked",
    )


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if not ((out / METADATA).is_file() or (out / JOURNAL_NAME).is_file()):
        raise UsageError(
            f"{out} has neither {METADATA} nor {JOURNAL_NAME}: is it a batchgen output folder?"
        )
    pid = writer_pid(out / JOURNAL_NAME)
    if pid is not None:  # `batchgen index` refuses here; a snapshot is still worth having
        print(
            f"batchgen: warning: a batchgen run (pid {pid if pid > 0 else '?'}) is writing to "
            f"{out}: this export holds only the images saved so far",
            file=sys.stderr,
        )
    dest = Path(args.dest) if args.dest else None
    result = export(
        out,
        args.format,
        dest,
        shard_size=args.shard_size,
        include_stale=args.include_stale,
        exclude_rejected=args.exclude == "rejected",
        only_picked=args.only == "picked",
    )
    for path in result.paths:
        print(path)
    print(f"{result.rows} row{'s' * (result.rows != 1)} exported as {args.format}")
    if args.format == "captions":
        linked, copied = result.linked, result.copied
        print(f"{linked:,} image{'s' if linked != 1 else ''} hard-linked, {copied:,} copied")
    if result.unmarked:
        n, s = result.unmarked, "s" if result.unmarked != 1 else ""
        why = "not marked picked" if args.only else "marked rejected"
        print(f"left out {n:,} image{s} {why}")
    if result.stale:
        n = result.stale
        print(
            f"left out {n:,} stale image{'s' if n != 1 else ''} (of prompts no longer in the"
            " manifest; --include-stale keeps them)"
        )
    if result.skipped_count:
        print(f"skipped {result.skipped_count:,} images missing or changed on disk:")
        shown = result.skipped[:20]
        for name in shown:
            print(f"  {name}")
        if result.skipped_count > len(shown):
            print(f"  ... and {result.skipped_count - len(shown):,} more")
        return 1
    return 0
