"""``batchgen index OUT [--rebuild]``: rewrite the index files from the journal, verifying images.

Rebuilding is the command's only action, so ``--rebuild`` is implied; the flag is still
accepted, for the scripts and docs that spell it.

Exit 0 when every image the journal lists is on disk with its checksum, 1 when some are
missing, changed or not images (each listed), 2 for usage errors (no journal, a run writing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from batchgen.outputs.index import FAILURES, METADATA
from batchgen.outputs.rebuild import rebuild_index

SHOWN = 20  # file names listed per problem; the rest are counted


EXAMPLES = """\
examples:
  batchgen index outputs/demo    metadata.jsonl and failures.jsonl anew, every image verified
Exit 1 lists images missing, changed or broken on disk; a run must not be writing the folder.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="a run's output folder")
    p.add_argument(
        "--rebuild",
        action="store_true",
        help="rewrite the index from the journal (implied: the command's only action)",
    )


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    report = rebuild_index(out)
    print(f"{out / METADATA}: {report.rows:,} images")
    print(f"{out / FAILURES}: {report.failures:,} failed jobs")
    for what, problem in (
        ("missing", "missing"),
        ("changed since download (checksum differs)", "changed"),
        ("not a valid image", "invalid"),
    ):
        count, names = report.counts[problem], getattr(report, problem)[:SHOWN]
        if count:
            print(f"{count:,} {what}:", file=sys.stderr)
            for name in names:
                print(f"  {name}", file=sys.stderr)
            if count > len(names):
                print(f"  ... and {count - len(names):,} more", file=sys.stderr)
    return 0 if report.ok else 1
