from __future__ import annotations

import argparse
from pathlib import Path

from batchgen.errors import UsageError
from batchgen.journal.writer import JOURNAL_NAME
from batchgen.outputs.gallery import build_gallery
from batchgen.outputs.index import METADATA

EXAMPLES = """\
examples:
  batchgen gallery outputs/demo    then open outputs/demo/index.html in any browser
  batchgen gallery outputs/demo --include-stale    with the images of prompts since edited
A run rebuilds the gallery itself when it ends; this is for a folder changed since, or for a
look at a folder a run is still writing (it takes no lock and changes nothing the run reads).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="a run's output folder")
    p.add_argument(
        "--include-stale",
        action="store_true",
        help="show the images of prompts no longer in the manifest too (stale: an edited or"
        " removed prompt's images; left out by default, and again by a run's next refresh)",
    )


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if not ((out / METADATA).is_file() or (out / JOURNAL_NAME).is_file()):
        raise UsageError(
            f"{out} has neither {METADATA} nor {JOURNAL_NAME}: is it a batchgen output folder?"
        )
    report = build_gallery(out, include_stale=args.include_stale)
    extra = f", {report.missing} files missing" if report.missing else ""
    if report.stale:
        extra += f", {report.stale} stale left out (--include-stale shows them)"
    print(
        f"{report.path}: {report.images} images, {report.failures} failures, "
        f"{report.thumbnails_made} new thumbnails{extra}"
    )
    return 0
