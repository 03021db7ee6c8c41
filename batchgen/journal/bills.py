"""What fal billed, kept beside what the folder believes: the ``bills`` table (schema 3), and the
requests the folder made, read back from its audit trail.

A job's row holds its current request only; every request it ever had is in the events
(``moves.py`` writes ``SUBMITTING->QUEUED <request id>`` when one is made, and ``(was <id>)``
when one is abandoned). ``request_trail`` replays them: which job made each request, when, on
which run's server, and which of them the folder counts as paid: the one a job held when it
completed, and one whose result was lost (``journal.schema.charges`` counts the same).

``record_bills`` is the one write outside a run: it takes the folder's writer lock (so never
while a run writes), brings an old journal up to this schema, and upserts the billing events
of one server with one audit event, in one transaction. ``read_billed`` reads back what the
last of them found at the server the folder's last run went to (`batchgen status`, the
gallery).
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import filelock

from batchgen.errors import JournalError
from batchgen.journal.opening import (
    MIGRATIONS,
    lock_folder,
    migrate,
    transaction,
    unlock_folder,
)
from batchgen.journal.origin import of_target, server_of
from batchgen.journal.schema import SCHEMA_VERSION, one_line

_QUEUED = re.compile(r"->QUEUED (\S+)")
_LOST = re.compile(r"^(\w+)->PENDING lost:.*\(was (\S+)\)$")
_COMPLETED = re.compile(r"^(\w+)->COMPLETED\b")
_DONE = ("COMPLETED", "DOWNLOADED")


@dataclass(frozen=True, slots=True)
class Run:
    """When a run started, and the origin its requests were made at (``journal.origin``)."""

    started_at: float
    origin: str


@dataclass
class RequestTrail:
    """Every request the folder made: its job, when, at which origin; and those it counts as
    paid for."""

    owners: dict[str, str] = field(default_factory=dict)  # request id -> job id
    made_at: dict[str, float] = field(default_factory=dict)  # request id -> when (our clock)
    origins: dict[str, str] = field(default_factory=dict)  # request id -> its run's origin
    paid: set[str] = field(default_factory=set)


def request_trail(
    events: Iterable[tuple[float, str | None, str]], runs: Sequence[Run]
) -> RequestTrail:
    """Replay ``(ts, job_id, detail)`` state events, oldest first. Pure."""
    trail = RequestTrail()
    current: dict[str, str] = {}  # job id -> the request it holds
    ordered = sorted(runs, key=lambda r: r.started_at)
    for ts, job_id, detail in events:
        if job_id is None:
            continue
        if made := _QUEUED.search(detail):
            rid = made.group(1)
            current[job_id] = rid
            trail.owners[rid] = job_id
            trail.made_at[rid] = ts
            trail.origins[rid] = _origin_at(ordered, ts)
        elif (lost := _LOST.match(detail)) and lost.group(1) not in _DONE:
            trail.paid.add(lost.group(2))
        elif (
            (done := _COMPLETED.match(detail)) and done.group(1) not in _DONE and job_id in current
        ):
            trail.paid.add(current[job_id])
    return trail


def _origin_at(runs: Sequence[Run], ts: float) -> str:
    origin = runs[0].origin if runs else "fal"
    for run in runs:
        if run.started_at <= ts:
            origin = run.origin
    return origin


def runs_of(rows: Iterable[tuple[float, str]]) -> list[Run]:
    """``(started_at, settings JSON)`` rows of the runs table as ``Run``s."""
    out = []
    for started, settings_text in rows:
        settings = json.loads(settings_text)
        endpoint = settings.get("endpoint")
        origin = of_target(
            str(settings.get("target")), endpoint if isinstance(endpoint, str) else None
        )
        out.append(Run(started, origin))
    return out


def read_trail(conn: sqlite3.Connection) -> RequestTrail:
    """The trail of a journal (a full pass over its state events)."""
    runs = runs_of(conn.execute("SELECT started_at, settings FROM runs ORDER BY id"))
    events = conn.execute(
        "SELECT ts, job_id, detail FROM events WHERE kind = 'state' AND job_id IS NOT NULL"
        " ORDER BY id"
    )
    return request_trail(events, runs)


@dataclass(frozen=True, slots=True)
class StoredBill:
    """One billing event as the journal keeps it (``n``: its place among the request's)."""

    request_id: str
    n: int
    job_id: str | None
    endpoint_id: str | None
    billed_at: str | None
    cost: float


def read_bills(conn: sqlite3.Connection, server: str | None = None) -> list[StoredBill]:
    sql = "SELECT request_id, n, job_id, endpoint_id, billed_at, cost FROM bills"
    rows = conn.execute(
        sql + (" WHERE server = ?" if server else "") + " ORDER BY request_id, n",
        (server,) if server else (),
    )
    return [StoredBill(*r) for r in rows]


def reconcile_head(server: str) -> str:
    """How the detail of a ``reconcile`` event begins: ``read_billed`` finds its server there."""
    return f"billed by {server}: "


@dataclass(frozen=True, slots=True)
class Billed:
    """The bill of one server as the journal holds it after the last reconcile against it."""

    server: str  # "fal", or an --endpoint server's base URL
    usd: float  # every billing event recorded for the server
    requests: int  # the distinct requests they billed
    reconciled_at: float  # when (seconds since the epoch, our clock)
    before_last_run: bool  # the folder's last run started after it: its requests are missing


def read_billed(conn: sqlite3.Connection) -> Billed | None:
    """What the last reconcile against the server of the folder's last run found; None when
    none was, or when that run had no server to ask (``--emulate``). Cheap on a large
    journal: the run-level events (``job_id`` NULL, indexed) are few."""
    last = runs_of(conn.execute("SELECT started_at, settings FROM runs ORDER BY id DESC LIMIT 1"))
    server = server_of(last[0].origin) if last else None
    if server is None:
        return None
    head = reconcile_head(server)
    (at,) = conn.execute(
        "SELECT max(ts) FROM events WHERE job_id IS NULL AND kind = 'reconcile'"
        " AND substr(detail, 1, ?) = ?",
        (len(head), head),
    ).fetchone()
    if at is None:
        return None
    usd, n = conn.execute(
        "SELECT total(cost), count(DISTINCT request_id) FROM bills WHERE server = ?", (server,)
    ).fetchone()
    return Billed(server, usd, n, at, last[0].started_at > at)


def open_for_update(path: Path) -> tuple[sqlite3.Connection, filelock.BaseFileLock]:
    """An existing journal for a change outside a run: its writer lock taken, its schema
    brought up to date, no run recorded. The caller closes both (``record_bills`` does)."""
    if not path.is_file():
        raise JournalError(f"no journal at {path}: is this a batchgen output folder?")
    lock = lock_folder(path)
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            found = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise JournalError(f"{path} is not a batchgen journal ({exc})") from exc
        have = found[0] if found else "none"
        if have.isdigit() and int(have) in MIGRATIONS:
            migrate(conn, int(have))
        elif have != str(SCHEMA_VERSION):
            conn.close()
            raise JournalError(
                f"{path} has journal schema {have}; this batchgen reads schema {SCHEMA_VERSION}"
            )
    except BaseException:
        unlock_folder(lock, path)
        raise
    return conn, lock


def record_bills(
    path: Path, server: str, bills: Sequence[StoredBill], summary: str, *, now: float | None = None
) -> None:
    """Upsert ``bills`` (fetched from ``server``) and one ``reconcile`` event, together."""
    conn, lock = open_for_update(path)
    at = time.time() if now is None else now
    try:
        with transaction(conn) as c:
            c.executemany(
                "INSERT OR REPLACE INTO bills (server, request_id, n, job_id, endpoint_id,"
                " billed_at, cost, fetched_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (server, b.request_id, b.n, b.job_id, b.endpoint_id, b.billed_at, b.cost, at)
                    for b in bills
                ],
            )
            c.execute(
                "INSERT INTO events (ts, job_id, kind, detail) VALUES (?, NULL, 'reconcile', ?)",
                (at, one_line(summary) or ""),
            )
    finally:
        conn.close()
        unlock_folder(lock, path)
