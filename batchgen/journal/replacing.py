"""Replacement takes: ``run --replace-rejected`` makes one new take of each rejected image's job.

A take is the same request (endpoint, input, reference files) with another ``variant``, hence
another content-derived job id (``planning.jobs.job_id``): an ordinary PENDING job, claimed,
priced, budgeted and downloaded like the manifest's, its images saved beside the rejected one.
What it replaces is kept twice: in its spec (``replaces``: the rejected image's ``file_name``
and ``job_id``, and ``root``, the manifest's job the takes descend from) and in the table
``replacements``, made here when first needed (an older journal simply has none):

- a rejected image is replaced once: a second ``--replace-rejected`` finds its row and adds
  nothing; rejecting the replacement too makes one more take (its own row);
- the manifest does not name the takes, so a re-plan (``loading.plan_into``) would flag them
  ``in_manifest = 0``; :func:`follow_roots` gives each take its root job's flag instead, so a
  take is stale exactly when the manifest's job it descends from is.

The take's variant is the first after the rejected job's that no job of the journal holds:
a ``repeat: 3`` combination's rejected take 0 is replaced by take 3, then 4, ...
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from batchgen.journal.opening import transaction
from batchgen.journal.schema import dumps
from batchgen.planning.jobs import JobSpec, job_id

TABLE = "replacements"

_DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    file_name TEXT NOT NULL,
    replaced_job TEXT NOT NULL,
    job_id TEXT NOT NULL UNIQUE,
    root_job TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (file_name, replaced_job)
)
"""


@dataclass(frozen=True, slots=True)
class Replacing:
    """What ``--replace-rejected`` found: rejected images, and what became of them."""

    rejected: int = 0  # rejected images in marks.sqlite
    new: int = 0  # takes added now (PENDING jobs)
    cost: float = 0.0  # their estimate, USD
    already: int = 0  # replaced by an earlier run: nothing added
    elsewhere: int = 0  # their job is not the manifest's (stale, unknown, or no job id)


def has_table(conn: sqlite3.Connection) -> bool:
    sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    return conn.execute(sql, (TABLE,)).fetchone() is not None


def add_takes(
    conn: sqlite3.Connection,
    rejected: Iterable[tuple[str, str | None]],
    *,
    cost_of: Callable[[JobSpec], float] | None,
    now: float,
) -> Replacing:
    """One new take for each rejected ``(file_name, job_id)`` not replaced yet whose job is
    in the manifest, in one transaction."""
    counts = {"rejected": 0, "new": 0, "already": 0, "elsewhere": 0}
    cost = 0.0
    conn.execute(_DDL)
    with transaction(conn):
        for file_name, replaced in rejected:
            counts["rejected"] += 1
            if replaced is None:
                counts["elsewhere"] += 1
                continue
            done = conn.execute(
                f"SELECT 1 FROM {TABLE} WHERE file_name = ? AND replaced_job = ?",
                (file_name, replaced),
            ).fetchone()
            if done is not None:
                counts["already"] += 1
                continue
            row = conn.execute(
                "SELECT spec, in_manifest FROM jobs WHERE job_id = ?", (replaced,)
            ).fetchone()
            if row is None or not row[1]:
                counts["elsewhere"] += 1
                continue
            take = next_take(conn, JobSpec.from_json(json.loads(row[0])), file_name)
            price = float(cost_of(take)) if cost_of else 0.0
            conn.execute(
                "INSERT INTO jobs (job_id, spec, state, cost, created_at, updated_at)"
                " VALUES (?, ?, 'PENDING', ?, ?, ?)",
                (take.job_id, dumps(take.to_json()), price, now, now),
            )
            conn.execute(
                f"INSERT INTO {TABLE} (file_name, replaced_job, job_id, root_job, at)"
                " VALUES (?, ?, ?, ?, ?)",
                (file_name, replaced, take.job_id, take.replaces["root"], now),
            )
            conn.execute(
                "INSERT INTO events (ts, job_id, kind, detail) VALUES (?, ?, 'replace', ?)",
                (now, take.job_id, f"take {take.variant} replaces {file_name} ({replaced[:16]})"),
            )
            counts["new"] += 1
            cost += price
    return Replacing(cost=cost, **counts)


def next_take(conn: sqlite3.Connection, spec: JobSpec, file_name: str) -> JobSpec:
    """``spec`` as its first take after ``spec.variant`` that no job of the journal holds
    (the rows added in this transaction included), recording what it replaces."""
    variant = spec.variant + 1
    while True:
        new_id = job_id(spec.endpoint, spec.input, variant, spec.files)
        if conn.execute("SELECT 1 FROM jobs WHERE job_id = ?", (new_id,)).fetchone() is None:
            break
        variant += 1
    root = spec.replaces.get("root") or spec.job_id
    return dataclasses.replace(
        spec,
        job_id=new_id,
        variant=variant,
        replaces={"file_name": file_name, "job_id": spec.job_id, "root": root},
    )


def follow_roots(conn: sqlite3.Connection) -> None:
    """Each take's ``in_manifest`` as its root job's (call inside the re-plan's transaction,
    after the manifest's jobs were flagged)."""
    if not has_table(conn):
        return
    conn.execute(
        f"UPDATE jobs SET in_manifest = coalesce((SELECT root.in_manifest FROM {TABLE} r"
        " JOIN jobs root ON root.job_id = r.root_job WHERE r.job_id = jobs.job_id), 0)"
        f" WHERE job_id IN (SELECT job_id FROM {TABLE})"
    )
