"""The SQL that changes one job's row: a claim for submitting, and any other state change.

Each is one transaction: the row updated and one audit event per job written together, so a
crash leaves either both or neither. ``Journal`` (``writer.py``) decides what changes, checks
the transition, and keeps its in-memory tallies in step afterwards.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from batchgen.journal.opening import transaction
from batchgen.journal.schema import JOB_COLUMNS, JobHead, JobRow, job_row
from batchgen.planning.jobs import JobState

S = JobState


def claim_rows(
    conn: sqlite3.Connection, limit: int, origin: str | None, now: float
) -> list[JobRow]:
    """Up to ``limit`` PENDING rows of the manifest moved to SUBMITTING, FIFO; their rows as
    they were before the move. The attempt's time and input are cleared: the submitter writes
    them just before its POST (``schema``), so a claim without them was never sent."""
    with transaction(conn) as c:
        sql = f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'PENDING' AND in_manifest = 1"
        rows = list(map(job_row, c.execute(sql + " ORDER BY seq LIMIT ?", (limit,))))
        c.executemany(
            "UPDATE jobs SET state = 'SUBMITTING', submits = submits + 1,"
            " attempt_at = NULL, sent_key = NULL,"
            " origin = coalesce(?, origin), updated_at = ? WHERE seq = ?",
            [(origin, now, r.seq) for r in rows],
        )
        c.executemany(
            "INSERT INTO events (ts, job_id, kind, detail) VALUES (?, ?, 'state', ?)",
            [(now, r.job_id, f"{r.state}->SUBMITTING") for r in rows],
        )
    return rows


def move_row(
    conn: sqlite3.Connection,
    job_id: str,
    r: JobHead,
    new: JobState,
    cols: dict[str, Any],
    *,
    bump: bool,
    lost: bool,
    billed: int,
    detail: str,
    now: float,
    dup: bool = False,
) -> None:
    """Job ``job_id`` (now ``r``) to ``new`` with the columns ``cols``: attempts, lost,
    billed and possible duplicates counted up as asked, and the change written to the audit
    trail (naming the request it abandons)."""
    cols = {**cols, "state": str(new), "updated_at": now}
    assign = ", ".join(f"{k} = ?" for k in cols)
    assign += ", attempts = attempts + ?, lost = lost + ?, billed = billed + ?"
    assign += ", possible_duplicates = possible_duplicates + ?"
    with transaction(conn) as c:
        c.execute(
            f"UPDATE jobs SET {assign} WHERE seq = ?",
            (*cols.values(), int(bump), int(lost), billed, int(dup), r.seq),
        )
        old_req = f" (was {r.request_id})" if new is S.PENDING and r.request_id else ""
        c.execute(
            "INSERT INTO events (ts, job_id, kind, detail) VALUES (?, ?, 'state', ?)",
            (now, job_id, f"{r.state}->{new} {detail}{old_req}".rstrip()),
        )
