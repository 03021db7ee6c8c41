"""Planning into the journal: loading a manifest's jobs incrementally, in bounded batches.

Kept out of ``writer`` because it is the one bulk path: a million rows must load in
seconds with flat memory, and a re-plan must not rewrite the rows it keeps.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable

from batchgen.errors import JournalError
from batchgen.journal.opening import transaction
from batchgen.journal.replacing import follow_roots
from batchgen.journal.schema import SECRET_MARKERS, AddReport, dumps, find_secret
from batchgen.planning.jobs import SECRET_FIELDS, JobSpec

# Rows per transaction. Each commit writes every index page it touched to the WAL, and job ids
# are random keys, so small batches rewrite the same pages over and over: 20,000 rows (about
# 15 MB in memory) loads 2-3x faster than 5,000 (bench/journal.py), and memory stays flat.
BATCH = 20_000
PLAN_CACHE_KIB = 32 * 1024  # page cache while planning, so the job-id index stays in memory
# WAL pages between checkpoints while planning (64 MB instead of 4 MB): each checkpoint costs
# two fsyncs, and a bulk load would otherwise take hundreds of them (10-20% of the time).
PLAN_CHECKPOINT_PAGES = 16_384


def plan_into(
    conn: sqlite3.Connection,
    specs: Iterable[JobSpec],
    *,
    cost_of: Callable[[JobSpec], float] | None,
    run_id: int,
    clock: Callable[[], float],
) -> AddReport:
    """Insert the jobs not yet in the journal; flag the ones ``specs`` no longer names (a
    replacement take, which no manifest names, follows the job it descends from)."""
    last_seq: int = conn.execute("SELECT coalesce(max(seq), 0) FROM jobs").fetchone()[0]
    fresh = last_seq == 0
    if not fresh:
        # This plan's membership goes to a temp table of row numbers, not the jobs rows:
        # flagging a million rows would rewrite every page of the database into the WAL.
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS named (seq INTEGER PRIMARY KEY)")
        conn.execute("DELETE FROM temp.named")
    new = kept = 0
    batch: list[JobSpec] = []
    now = clock()

    def flush() -> None:
        nonlocal new, kept
        known: dict[str, int] = {}
        if not fresh:  # one indexed look-up per batch; kept jobs are never re-serialised
            marks = ",".join("?" * len(batch))
            sql = f"SELECT job_id, seq FROM jobs WHERE job_id IN ({marks}) AND seq <= ?"
            known = dict(conn.execute(sql, (*(s.job_id for s in batch), last_seq)))
        rows = [_row(s, cost_of, now) for s in batch if s.job_id not in known]
        with transaction(conn) as c:
            c.executemany(
                "INSERT OR IGNORE INTO jobs (job_id, spec, state, cost, created_at, updated_at)"
                " VALUES (?, ?, 'PENDING', ?, ?, ?)",
                rows,
            )
            if known:
                kept += c.executemany(
                    "INSERT OR IGNORE INTO temp.named VALUES (?)", [(q,) for q in known.values()]
                ).rowcount
        batch.clear()

    cache = conn.execute("PRAGMA cache_size").fetchone()[0]
    checkpoint = conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    conn.execute(f"PRAGMA cache_size = -{PLAN_CACHE_KIB}")
    conn.execute(f"PRAGMA wal_autocheckpoint = {PLAN_CHECKPOINT_PAGES}")
    try:
        for spec in specs:
            if not SECRET_FIELDS.isdisjoint(spec.input):
                _refuse(spec)
            batch.append(spec)
            if len(batch) >= BATCH:
                flush()
        if batch:
            flush()
    finally:
        conn.execute(f"PRAGMA cache_size = {int(cache)}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {int(checkpoint)}")

    with transaction(conn) as c:
        new = c.execute("SELECT count(*) FROM jobs WHERE seq > ?", (last_seq,)).fetchone()[0]
        gone = 0
        if not fresh:
            c.execute(
                "UPDATE jobs SET in_manifest = 0 WHERE in_manifest = 1 AND seq <= ?"
                " AND seq NOT IN (SELECT seq FROM temp.named)",
                (last_seq,),
            )
            c.execute(
                "UPDATE jobs SET in_manifest = 1 WHERE in_manifest = 0"
                " AND seq IN (SELECT seq FROM temp.named)"
            )
            follow_roots(c)  # run --replace-rejected's takes: in the manifest as their root is
            gone = c.execute("SELECT count(*) FROM jobs WHERE in_manifest = 0").fetchone()[0]
        c.execute("UPDATE runs SET planned_at = ? WHERE id = ?", (clock(), run_id))
        c.execute(
            "INSERT INTO events (ts, job_id, kind, detail) VALUES (?, NULL, 'plan', ?)",
            (clock(), f"new={new} kept={kept} not_in_manifest={gone}"),
        )
    if not fresh:
        conn.execute("DROP TABLE temp.named")
    return AddReport(new=new, kept=kept, not_in_manifest=gone)


def _row(
    spec: JobSpec, cost_of: Callable[[JobSpec], float] | None, now: float
) -> tuple[str, str, float, float, float]:
    text = dumps(spec.to_json())
    if any(m in text for m in SECRET_MARKERS):  # a C-speed scan; the walk only on a hit
        _refuse(spec)
    return (spec.job_id, text, float(cost_of(spec)) if cost_of else 0.0, now, now)


def _refuse(spec: JobSpec) -> None:
    where = find_secret(spec.input)
    if where:
        raise JournalError(
            f"job {spec.short_id} carries a secret in {where}: secrets are added at "
            "submit time and never stored in the journal"
        )
