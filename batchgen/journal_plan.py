"""Planning into the journal: loading a manifest's jobs incrementally, in bounded batches.

Kept out of ``journal.py`` because it is the one bulk path: a million rows must load in
seconds with flat memory, and a re-plan must not rewrite the rows it keeps.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

from batchgen.errors import JournalError
from batchgen.jobs import JobSpec
from batchgen.journal_open import transaction
from batchgen.journal_schema import SECRET_MARKERS, AddReport, dumps, find_secret

BATCH = 5000  # rows per transaction: big enough to amortise a commit, small in memory


def plan_into(
    conn: sqlite3.Connection,
    specs: Iterable[JobSpec],
    *,
    cost_of: Callable[[JobSpec], float] | None,
    run_id: int,
    clock: Callable[[], float],
) -> AddReport:
    """Insert the jobs not yet in the journal; flag the ones ``specs`` no longer names."""
    fresh = conn.execute("SELECT NOT EXISTS (SELECT 1 FROM jobs)").fetchone()[0]
    if not fresh:
        # This plan's membership goes to a temp table, not the jobs rows: flagging a million
        # rows would rewrite every page of the database into the WAL on every resume.
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS named (job_id TEXT PRIMARY KEY)")
        conn.execute("DELETE FROM temp.named")
    new = named = 0
    batch: list[tuple[Any, ...]] = []

    def flush() -> None:
        nonlocal new, named
        with transaction(conn) as c:
            new += c.executemany(
                "INSERT OR IGNORE INTO jobs (job_id, spec, state, cost, created_at, updated_at)"
                " VALUES (?, ?, 'PENDING', ?, ?, ?)",
                batch,
            ).rowcount
            if not fresh:
                named += c.executemany(
                    "INSERT OR IGNORE INTO temp.named VALUES (?)", [(b[0],) for b in batch]
                ).rowcount
        batch.clear()

    now = clock()
    for spec in specs:
        text = dumps(spec.to_json())
        if any(m in text for m in SECRET_MARKERS):
            secret = find_secret(spec.input)
            if secret:
                raise JournalError(
                    f"job {spec.short_id} carries a secret in {secret}: secrets are added at "
                    "submit time and never stored in the journal"
                )
        cost = float(cost_of(spec)) if cost_of else 0.0
        batch.append((spec.job_id, text, cost, now, now))
        if len(batch) >= BATCH:
            flush()
    if batch:
        flush()

    with transaction(conn) as c:
        kept = gone = 0
        if not fresh:
            kept = named - new
            c.execute(
                "UPDATE jobs SET in_manifest = 0 WHERE in_manifest = 1"
                " AND job_id NOT IN (SELECT job_id FROM temp.named)"
            )
            c.execute(
                "UPDATE jobs SET in_manifest = 1 WHERE in_manifest = 0"
                " AND job_id IN (SELECT job_id FROM temp.named)"
            )
            gone = c.execute("SELECT count(*) FROM jobs WHERE in_manifest = 0").fetchone()[0]
        c.execute("UPDATE runs SET planned_at = ? WHERE id = ?", (clock(), run_id))
        c.execute(
            "INSERT INTO events (ts, job_id, kind, detail) VALUES (?, NULL, 'plan', ?)",
            (clock(), f"new={new} kept={kept} not_in_manifest={gone}"),
        )
    if not fresh:
        conn.execute("DROP TABLE temp.named")
    return AddReport(new=new, kept=kept, not_in_manifest=gone)
