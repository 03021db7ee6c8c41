"""``run --replace-rejected``: the folder's rejected images (``outputs.marks``) each get one new
take of their job (``journal.replacing``), announced with its cost before any submit.

The takes are ordinary PENDING jobs from then on: the announcement's count and cost, the
approval, ``--max-cost`` and a resume treat them as the manifest's own.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from batchgen.journal.replacing import Replacing, add_takes
from batchgen.journal.writer import Journal
from batchgen.outputs.marks import Mark, Marks
from batchgen.planning.jobs import JobSpec


def rejected_images(out: Path) -> list[tuple[str, str | None]]:
    """``(file_name, job_id)`` of each image marked rejected, oldest mark first."""
    try:
        with Marks.open(out, create=False) as marks:
            return [(m.file_name, m.job_id) for m in marks.rows() if m.mark is Mark.REJECTED]
    except FileNotFoundError:
        return []


def replace_rejected(
    journal: Journal, out: Path, cost_of: Callable[[JobSpec], float] | None
) -> Replacing:
    """Add the takes to the journal (one transaction; the tallies rebuilt)."""
    rejected = rejected_images(out)
    found: list[Replacing] = []

    def change(conn: sqlite3.Connection, now: float) -> int:
        found.append(add_takes(conn, rejected, cost_of=cost_of, now=now))
        return found[-1].new

    journal.bulk(change)
    return found[0]


def replacing_line(r: Replacing) -> str:
    """The announcement's line: "3 rejected images to replace: 3 new takes, ~$0.12"."""
    if not r.rejected:
        return "no rejected images to replace (none is marked rejected in marks.sqlite)"
    head = f"{_n(r.rejected, 'rejected image')}"
    if r.new:
        line = f"{head} to replace: {_n(r.new, 'new take')}, ~${r.cost:.2f}"
    else:
        line = f"{head}: no new take"
    more = []
    if r.already:
        more.append(f"{r.already:,} replaced before")
    if r.elsewhere:
        more.append(f"{r.elsewhere:,} not of the manifest's jobs, left as they are")
    return line + (f" ({', '.join(more)})" if more else "")


def _n(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"
