"""The bulk state changes a run makes before it submits anything (``running/recovery.py``
decides which apply): work of another server that cannot count, requests whose server is
gone, final failures given another chance, and saved images found missing or broken.

Each is one transaction of set-based SQL over the jobs table, with one audit event per job,
so a million-row folder resumes in seconds and a crash midway leaves the journal as it was.
The caller rebuilds its in-memory tallies afterwards.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection

from batchgen.journal.opening import transaction
from batchgen.journal.origin import EMULATOR

# What a job keeps of a request once it is abandoned: nothing (it stays in the events).
_FORGET = (
    "request_id = NULL, handle = NULL, result = NULL, files = NULL, submitted_at = NULL,"
    " error_class = NULL, error = NULL"
)
# A final failure in the download alone: the request completed and its result is kept.
_DOWNLOAD_ONLY = "error_class LIKE 'download%' AND result IS NOT NULL"


def _apply(
    conn: sqlite3.Connection,
    now: float,
    where: str,
    params: tuple[object, ...],
    sets: str,
    new: str,
    note: str,
) -> int:
    with transaction(conn) as c:
        c.execute(
            "INSERT INTO events (ts, job_id, kind, detail)"
            f" SELECT ?, job_id, 'state', state || '->{new} {note}' FROM jobs WHERE {where}",
            (now, *params),
        )
        n: int = c.execute(
            f"UPDATE jobs SET state = '{new}', {sets}, updated_at = ? WHERE {where}",
            (now, *params),
        ).rowcount
    return n


def replace_rehearsal(conn: sqlite3.Connection, now: float, keep: str | None) -> int:
    """Every job an emulator worked on (but ``keep``, the one this run talks to) goes back to
    PENDING as if never run: no request, no charge, no attempt (an emulator bills nothing,
    and its images are placeholders)."""
    return _apply(
        conn,
        now,
        "(origin = ? OR origin LIKE ?) AND origin IS NOT ? AND (state != 'PENDING'"
        " OR billed > 0 OR possible_duplicates > 0 OR attempts > 0)",
        (EMULATOR, EMULATOR + ":%", keep),
        f"{_FORGET}, origin = NULL, attempts = 0, lost = 0, billed = 0, possible_duplicates = 0",
        "PENDING",
        "rehearsal replaced by real work",
    )


def drop_emulator_requests(conn: sqlite3.Connection, now: float, keep: str | None) -> int:
    """Requests of an in-process emulator are gone with the run that started it, and those of
    an emulator this run does not talk to (``keep``: the one it does) cannot be followed:
    their jobs are resubmitted at once, with no attempt counted (they cost nothing, so their
    charges are forgotten too: a rehearsal's "on fal" figure counts each job once). A
    download that failed against one is retried the same way: its URLs died too."""
    return _apply(
        conn,
        now,
        "(origin = ? OR origin LIKE ?) AND origin IS NOT ? AND (state IN"
        " ('SUBMITTING', 'UNKNOWN', 'QUEUED', 'RUNNING', 'COMPLETED') OR (state = 'FAILED'"
        f" AND {_DOWNLOAD_ONLY}))",
        (EMULATOR, EMULATOR + ":%", keep),
        f"{_FORGET}, billed = 0, possible_duplicates = 0, lost = 0",
        "PENDING",
        "emulator gone: resubmitted",
    )


def redownload_failed(conn: sqlite3.Connection, now: float, origins: tuple[str, str]) -> int:
    """Jobs that failed only in their download, on this run's server (either of ``origins``),
    go back to COMPLETED: the image is paid for and the result is kept, so it is fetched
    again, never resubmitted."""
    return _apply(
        conn,
        now,
        f"state = 'FAILED' AND in_manifest = 1 AND {_DOWNLOAD_ONLY} AND origin IN (?, ?)",
        origins,
        "error_class = NULL, error = NULL, attempts = 0",
        "COMPLETED",
        "download retried from the stored result",
    )


def retry_failed(conn: sqlite3.Connection, now: float) -> int:
    """``--retry-failed``: every other final failure of the manifest back to PENDING with a
    fresh count of attempts and no request (a new one is made)."""
    return _apply(
        conn,
        now,
        "state = 'FAILED' AND in_manifest = 1",
        (),
        f"{_FORGET}, attempts = 0",
        "PENDING",
        "retry-failed",
    )


def _mark(conn: sqlite3.Connection, job_ids: Collection[str]) -> None:
    """Name the jobs a repair looks at, in a temporary table of this connection (a million
    ids never sit in one statement)."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS repair (job_id TEXT PRIMARY KEY)")
    with transaction(conn) as c:
        c.execute("DELETE FROM temp.repair")
        c.executemany("INSERT OR IGNORE INTO temp.repair VALUES (?)", ((j,) for j in job_ids))


_REPAIR = "state = 'DOWNLOADED' AND job_id IN (SELECT job_id FROM temp.repair)"


def repair_from_result(
    conn: sqlite3.Connection, now: float, job_ids: Collection[str], origins: tuple[str, str]
) -> int:
    """Downloaded jobs of ``job_ids``, whose images are missing or broken
    on disk, made on this run's server (either of ``origins``), go back to COMPLETED: their
    result is kept, so their images are fetched again from it, never resubmitted (when fal
    no longer has the media, the download reports the result lost and it is made again)."""
    _mark(conn, job_ids)
    return _apply(
        conn,
        now,
        f"{_REPAIR} AND result IS NOT NULL AND origin IN (?, ?)",
        origins,
        "error_class = NULL, error = NULL",
        "COMPLETED",
        "saved images missing or broken: fetched again from the stored result",
    )


def remake_rehearsal(
    conn: sqlite3.Connection, now: float, job_ids: Collection[str], keep: str | None
) -> int:
    """The same jobs, made by an emulator this run cannot ask (the in-process one is gone
    with its run; ``keep`` is the one this run talks to): their media died with it, so they
    are made again at once, free, as :func:`drop_emulator_requests` does."""
    _mark(conn, job_ids)
    return _apply(
        conn,
        now,
        f"{_REPAIR} AND (origin = ? OR origin LIKE ?) AND origin IS NOT ?",
        (EMULATOR, EMULATOR + ":%", keep),
        f"{_FORGET}, billed = 0, possible_duplicates = 0, lost = 0",
        "PENDING",
        "saved images missing or broken, emulator gone: made again",
    )
