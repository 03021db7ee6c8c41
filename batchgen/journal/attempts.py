"""Submits whose answer was lost, as the journal keeps them for the look-up in fal's history
(``running/lookup.py``): when each attempt was made and what it sent (``schema``: the
``attempt_at`` and ``sent_key`` columns), and every request the folder already holds.

Pure SQL on a connection; ``Journal`` wraps each in a method.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

from batchgen.journal.opening import transaction

UNKNOWN_INPUT = "?"  # sent, but what was sent is not recorded (a journal of schema 3)
_MADE = re.compile(r"->QUEUED (\S+)")


@dataclass(frozen=True, slots=True)
class LostRow:
    """An UNKNOWN job: its last POST may have made a request whose id it never learnt."""

    job_id: str
    endpoint: str
    at: float | None  # when the POST was made (our clock, seconds since the epoch)
    key: str | None  # ``fal.matching.input_key`` of what it sent; None or "?": not known
    attempts: int
    in_manifest: bool

    @property
    def known(self) -> bool:
        """Whether its attempt can be looked for: its time and its input are recorded."""
        return self.at is not None and self.key not in (None, UNKNOWN_INPUT)


def record_attempt(conn: sqlite3.Connection, job_id: str, at: float, key: str) -> None:
    with transaction(conn) as c:
        c.execute(
            "UPDATE jobs SET attempt_at = ?, sent_key = ? WHERE job_id = ?", (at, key, job_id)
        )


def lost_rows(conn: sqlite3.Connection) -> list[LostRow]:
    """Every UNKNOWN job, oldest attempt first (few: only submits whose answer was lost)."""
    rows = conn.execute(
        "SELECT job_id, json_extract(spec, '$.endpoint'), attempt_at, sent_key, attempts,"
        " in_manifest FROM jobs WHERE state = 'UNKNOWN' ORDER BY attempt_at, seq"
    )
    return [LostRow(j, str(e), at, k, n, bool(m)) for j, e, at, k, n, m in rows]


def requests_made(conn: sqlite3.Connection, after: int = 0) -> tuple[set[str], int]:
    """The ids of every request the folder made (each is written ``->QUEUED <id>`` when made,
    and stays in the audit trail when abandoned) in events after ``after``, and the last
    event id read: the caller passes it back next time and reads only what is new."""
    made: set[str] = set()
    last = after
    for event_id, detail in conn.execute(
        "SELECT id, detail FROM events WHERE id > ? AND kind = 'state' AND job_id IS NOT NULL"
        " AND detail LIKE '%->QUEUED %' ORDER BY id",
        (after,),
    ):
        last = event_id
        if m := _MADE.search(detail):
            made.add(m.group(1))
    top = conn.execute("SELECT max(id) FROM events").fetchone()[0]
    return made, max(last, top or 0)
