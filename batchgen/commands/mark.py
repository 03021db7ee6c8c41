"""``batchgen mark OUT --pick|--reject|--clear [--where blank|near-duplicate] [TARGET ...]``.

Marks images picked or rejected (or clears their marks) from a script. The marks live in
``OUT/marks.sqlite`` (outputs/marks.py), apart from the index and the journal, so this works
while a run writes the folder. Every target is resolved first (outputs/marking.py): an unknown
name or job, or an ambiguous prefix, is one line and exit 2 with nothing changed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from batchgen.errors import UsageError
from batchgen.outputs.index import METADATA
from batchgen.outputs.marking import (
    MIN_PREFIX,
    WHERE,
    Selection,
    WhereScan,
    near_duplicate_grouping,
    select_targets,
)
from batchgen.outputs.marks import Mark, Marks, read_marks
from batchgen.outputs.scan import iter_index

EXAMPLES = f"""\
examples:
  batchgen mark outputs/demo --reject images/forest/3f9c0a1e..._0.jpg
  batchgen mark outputs/demo --pick 3f9c0a1e          every image of the job (a prefix of
                                                      {MIN_PREFIX}+ hex digits, unambiguous)
  batchgen mark outputs/demo --reject --where blank   the images the index says are blank
  batchgen mark outputs/demo --clear 3f9c0a1e         unmark them again
Unknown names or jobs: exit 2 and nothing changed. Exports then take --exclude rejected or
--only picked.
"""

TRAILING = "targets"  # `mark OUT --reject NAME ...`: the names after the flags (cli._parse)
DONE = {Mark.PICKED: "picked", Mark.REJECTED: "rejected", None: "cleared"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="a run's output folder")
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--pick", action="store_true", help="mark the images picked")
    action.add_argument("--reject", action="store_true", help="mark the images rejected")
    action.add_argument("--clear", action="store_true", help="remove the images' marks")
    p.add_argument(
        "--where",
        choices=WHERE,
        action="append",
        help="also the images a quality field selects: blank (the index says blank), or"
        " near-duplicate (all but the first of each group of near duplicates); needs the"
        " quality fields (batchgen index OUT --rebuild)",
    )
    p.add_argument(
        "targets",
        nargs="*",
        metavar="FILE_NAME|JOB_ID",
        help="images by index file name (as metadata.jsonl names them), or every image of a"
        f" job by its id or an unambiguous prefix of at least {MIN_PREFIX} hex digits",
    )


def _noun(n: int) -> str:
    return f"{n:,} image{'s' if n != 1 else ''}"


def select(out: Path, targets: list[str], where: list[str], marked: dict[str, Mark]) -> Selection:
    """Every image the targets and ``--where`` name (one pass over the index), or UsageError
    in one line."""
    grouping = near_duplicate_grouping() if "near-duplicate" in where else None
    scan = WhereScan(where, grouping)
    found = select_targets(scan.watch(iter_index(out)), targets, marked=marked)
    problem = found.problem()
    if problem:
        raise UsageError(f"{problem}; nothing changed")
    if where and not scan.seen_quality:
        raise UsageError(
            f"{out / METADATA} has no quality fields (blank, phash): run batchgen index"
            f" {out} --rebuild first; nothing changed"
        )
    for row in scan.selected():
        found.add(row)
    return found


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    targets: list[str] = args.targets
    where: list[str] = sorted(set(args.where or []))
    if not targets and not where:
        raise UsageError("name the images to mark: FILE_NAME or JOB_ID arguments, or --where")
    if not (out / METADATA).is_file():
        raise UsageError(f"{out} has no {METADATA}: is it a batchgen output folder?")
    mark = Mark.PICKED if args.pick else Mark.REJECTED if args.reject else None
    found = select(out, targets, where, read_marks(out))
    with Marks.open(out) as marks:
        changed = marks.set(found.images.items(), mark, source="mark")
    n, same = len(found.images), len(found.images) - changed
    already = "had no mark" if mark is None else "already was" if same == 1 else "already were"
    note = f" ({same:,} {already})" if same else ""
    print(f"{DONE[mark]} {_noun(n)}{note}")
    return 0
