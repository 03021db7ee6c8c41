"""Reading the journal: the queries shared by the writer (``Journal``) and ``batchgen status``.

A :class:`JournalReader` never writes. Opened through :func:`connect_readonly` it uses a
``mode=ro`` connection, so it can watch a run in progress: WAL gives it a consistent snapshot
per query while the writer keeps committing.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from batchgen.errors import JournalError
from batchgen.journal.attempts import LostRow, lost_rows, requests_made
from batchgen.journal.bills import (
    Billed,
    RequestTrail,
    StoredBill,
    read_billed,
    read_bills,
    read_trail,
)
from batchgen.journal.origin import EMULATOR
from batchgen.journal.saved import SavedFile, saved_files
from batchgen.journal.schema import (
    IN_FLIGHT,
    JOB_COLUMNS,
    FailureGroup,
    JobHead,
    JobRow,
    RunInfo,
    Tallies,
    Upload,
    job_row,
)
from batchgen.journal.stale import StaleJobs, stale_images, stale_jobs
from batchgen.planning.jobs import JobState
from batchgen.planning.pricing import usage_of

S = JobState


def tallies(conn: sqlite3.Connection) -> Tallies:
    """One pass over the jobs table (about 0.3 s per million rows)."""
    counts = dict.fromkeys(S, 0)
    gone = dict.fromkeys(S, 0)
    spent = in_flight = to_submit = 0.0
    lost = dups = retries = 0
    rehearsal = 0.0
    for state, in_manifest, emulated, n, cost, billed_cost, n_lost, n_dup, n_att in conn.execute(
        "SELECT state, in_manifest, coalesce(origin = ? OR origin LIKE ?, 0), count(*),"
        " total(cost), total(cost * (possible_duplicates + billed)), total(lost),"
        " total(possible_duplicates), total(attempts)"
        " FROM jobs GROUP BY 1, 2, 3",
        (EMULATOR, EMULATOR + ":%"),
    ):
        st = JobState(state)
        (counts if in_manifest else gone)[st] += n
        # Billed: every completion fal ran (lost results included) and every possible
        # duplicate; the budget would rather over- than under-count. The emulator's are
        # counted apart: it bills nothing.
        if emulated:
            rehearsal += billed_cost
        else:
            spent += billed_cost
        in_flight += cost if st in IN_FLIGHT else 0.0
        to_submit += cost if in_manifest and st is S.PENDING else 0.0
        lost += int(n_lost)
        dups += int(n_dup)
        retries += int(n_att)
    return Tallies(counts, gone, spent, in_flight, to_submit, lost, dups, retries, rehearsal)


class JournalReader:
    """Queries over a journal connection. Closing it closes the connection."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn: sqlite3.Connection | None = conn
        self.path = path

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Self]:
        """Run several queries against one consistent state while a writer keeps going (WAL
        gives a read transaction its own snapshot). Not for use inside the writer's calls."""
        self._db().execute("BEGIN")
        try:
            yield self
        finally:
            self._db().execute("COMMIT")

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise JournalError(f"the journal {self.path} is closed")
        return self._conn

    def _select(
        self, where: str, params: tuple[Any, ...] = (), *, order: str = "seq", limit: int = -1
    ) -> list[JobRow]:
        sql = f"SELECT {JOB_COLUMNS} FROM jobs WHERE {where} ORDER BY {order} LIMIT ?"
        return [job_row(r) for r in self._db().execute(sql, (*params, limit))]

    def lost_submits(self) -> list[LostRow]:
        """The UNKNOWN jobs with their last attempt (``attempts.py``); schema 4 only."""
        return lost_rows(self._db())

    def saved_files(self, chunk: int = 5000) -> Iterator[list[SavedFile]]:
        """The files every DOWNLOADED job of the manifest recorded (``saved.py``), chunked."""
        return saved_files(self._db(), chunk)

    def requests_made(self, after: int = 0) -> tuple[set[str], int]:
        return requests_made(self._db(), after)

    # ---- jobs ---------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRow | None:
        rows = self._select("job_id = ?", (job_id,))
        return rows[0] if rows else None

    def head(self, job_id: str) -> JobHead:
        """The columns a state change needs, or JournalError when there is no such job."""
        # Only the columns a transition needs: parsing the spec on every commit would double
        # the cost of the hot path (bench/journal.py).
        found = (
            self._db()
            .execute(
                "SELECT seq, state, in_manifest, cost, possible_duplicates, billed, request_id,"
                " origin FROM jobs WHERE job_id = ?",
                (job_id,),
            )
            .fetchone()
        )
        if found is None:
            raise JournalError(f"no job {job_id[:16]} in the journal {self.path}")
        return JobHead(found[0], JobState(found[1]), bool(found[2]), *found[3:])

    def find(self, id_or_prefix: str, limit: int = 2) -> list[JobRow]:
        """Jobs whose id starts with ``id_or_prefix`` (file names carry 16 hex digits), or
        whose current request id is it; at most ``limit`` (two tell an ambiguous prefix)."""
        text = id_or_prefix.strip().lower()
        if not text:
            return []
        if all(c in "0123456789abcdef" for c in text):
            # A range on the unique index, not LIKE: as quick at a million rows as at ten.
            rows = self._select("job_id >= ? AND job_id < ?", (text, text + "g"), limit=limit)
            if rows:
                return rows
        return self._select("request_id = ?", (id_or_prefix.strip(),), limit=limit)

    def states(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        """The state of each of ``job_ids`` found in the journal."""
        if not job_ids:
            return {}
        marks = ", ".join("?" * len(job_ids))
        sql = f"SELECT job_id, state FROM jobs WHERE job_id IN ({marks})"
        return {j: JobState(s) for j, s in self._db().execute(sql, tuple(job_ids))}

    def by_origin(self) -> dict[str, dict[JobState, int]]:
        """How many jobs of each state each server worked on (jobs with no request left out)."""
        out: dict[str, dict[JobState, int]] = {}
        for origin, state, n in self._db().execute(
            "SELECT origin, state, count(*) FROM jobs WHERE origin IS NOT NULL GROUP BY 1, 2"
        ):
            out.setdefault(origin, {})[JobState(state)] = n
        return out

    def attached(self) -> list[JobRow]:
        """Jobs with a live request on fal's side (QUEUED/RUNNING/COMPLETED with a handle), to
        re-attach on resume. Includes jobs the manifest no longer names: they are paid for."""
        return self._select("state IN ('QUEUED', 'RUNNING', 'COMPLETED') AND handle IS NOT NULL")

    def in_flight(self, limit: int = -1) -> list[JobRow]:
        """Submitted and not finished on fal's side, oldest submit first; the first ``limit``
        only when given (SQLite keeps just those while sorting: a report of a million
        running jobs holds ``limit`` rows, not a million)."""
        return self._select(
            "state IN ('QUEUED', 'RUNNING')", order="submitted_at, seq", limit=limit
        )

    def iter_jobs(self, *states: JobState, chunk: int = 1000) -> Iterator[JobRow]:
        """Every job (or those in ``states``) in FIFO order, streamed ``chunk`` rows at a
        time so a million-row journal never sits in memory (index rebuilds, exports)."""
        where = f"state IN ({', '.join('?' * len(states))}) AND " if states else ""
        last = 0
        while True:
            rows = self._select(f"{where}seq > ?", (*map(str, states), last), limit=chunk)
            yield from rows
            if len(rows) < chunk:
                return
            last = rows[-1].seq

    # ---- aggregates ---------------------------------------------------------------------

    def tallies(self) -> Tallies:
        return tallies(self._db())

    def counts(self) -> dict[JobState, int]:
        """Jobs named by the current manifest, by state (every state present, zeros too)."""
        return self.tallies().counts

    def spent_estimate(self) -> float:
        return self.tallies().spent

    def in_flight_estimate(self) -> float:
        return self.tallies().in_flight

    def to_submit(self) -> tuple[int, int, float]:
        """(jobs, images, estimated USD) a run would submit now: the manifest's PENDING jobs and
        its UNKNOWN ones (resubmitted). One pass over those rows."""
        jobs, images, cost = (
            self._db()
            .execute(
                "SELECT count(*), total(coalesce(json_extract(spec, '$.input.num_images'), 1)),"
                " total(cost) FROM jobs WHERE state IN ('PENDING', 'UNKNOWN') AND in_manifest = 1"
            )
            .fetchone()
        )
        return int(jobs), int(images), float(cost)

    def usages(self) -> Iterator[tuple[dict[str, Any], int]]:
        """``(usage, number of images)`` of every job whose stored result carries a ``usage``
        object (BYOK responses), for the real cost. Only those results are parsed."""
        rows = self._db().execute(
            "SELECT result FROM jobs WHERE result IS NOT NULL AND instr(result, '\"usage\"')"
        )
        for (text,) in rows:
            result = json.loads(text)
            usage = usage_of(result)
            if usage is not None:
                images = result.get("images")
                yield usage, len(images) if isinstance(images, list) else 0

    def stale(self) -> StaleJobs:
        """The jobs the manifest no longer names (``stale.py``): their images are stale."""
        return stale_jobs(self._db())

    def stale_images(self) -> int:
        return stale_images(self._db())

    def failures_by_class(self) -> list[FailureGroup]:
        """Final failures of the manifest's jobs (what ``counts`` calls FAILED, what
        failures.jsonl lists) grouped by class, most frequent first, with the latest message."""
        # SQLite fills the bare columns (error, job_id) from the row holding max(updated_at).
        rows = self._db().execute(
            "SELECT coalesce(error_class, 'unknown'), count(*), error, job_id, max(updated_at)"
            " FROM jobs WHERE state = 'FAILED' AND in_manifest = 1 GROUP BY 1 ORDER BY 2 DESC, 1"
        )
        return [FailureGroup(c, n, msg or "", jid) for c, n, msg, jid, _ in rows]

    # ---- runs, events, uploads ----------------------------------------------------------

    def runs(self) -> list[RunInfo]:
        return [
            RunInfo(r[0], r[1], r[2], r[3], json.loads(r[4]), *r[5:])
            for r in self._db().execute(
                "SELECT id, manifest_sha256, manifest_path, version, settings, started_at,"
                " planned_at, ended_at, exit_code FROM runs ORDER BY id"
            )
        ]

    def entered_at(self, job_ids: Sequence[str], state: JobState) -> dict[str, float]:
        """When each of ``job_ids`` last entered ``state``, from the audit trail (those that
        never did are left out). For rebuilding an index: completion and download times."""
        if not job_ids:
            return {}
        marks = ", ".join("?" * len(job_ids))
        rows = self._db().execute(
            f"SELECT job_id, max(ts) FROM events WHERE job_id IN ({marks}) AND kind = 'state'"
            " AND (detail LIKE ? OR detail LIKE ?) GROUP BY job_id",
            (*job_ids, f"%->{state}", f"%->{state} %"),
        )
        return dict(rows.fetchall())

    def events(self, job_id: str | None = None) -> list[tuple[float, str | None, str, str]]:
        """The audit trail (ts, job_id, kind, detail), oldest first; one job's when given."""
        sql = "SELECT ts, job_id, kind, detail FROM events"
        if job_id is None:
            return list(self._db().execute(sql + " ORDER BY id"))
        return list(self._db().execute(sql + " WHERE job_id = ? ORDER BY id", (job_id,)))

    def request_trail(self) -> RequestTrail:
        """Every request the folder made, from the audit trail (``bills.request_trail``)."""
        return read_trail(self._db())

    def bills(self, server: str | None = None) -> list[StoredBill]:
        """What `batchgen reconcile` recorded fal (or ``server``) billed."""
        return read_bills(self._db(), server)

    def billed(self) -> Billed | None:
        """The last reconcile's bill of the server the last run went to (``bills.read_billed``)."""
        return read_billed(self._db())

    def upload_get(self, sha256: str) -> Upload | None:
        sql = (
            "SELECT sha256, url, content_type, bytes, uploaded_at, origin FROM uploads"
            " WHERE sha256 = ?"
        )
        r = self._db().execute(sql, (sha256,)).fetchone()
        return Upload(*r) if r else None
