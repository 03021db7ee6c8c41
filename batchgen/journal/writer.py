"""The resume journal: one SQLite file per output folder, the only record of what was paid for.

Rules (docs/interfaces.md, the journal):

* Intent before action: every method commits before it returns, so a caller acts (POSTs,
  downloads) only on state that is already on disk. A job takes four or five commits: its
  share of a claim, the request id, RUNNING when fal says so, the result, its files.
* Durability: WAL with ``synchronous=NORMAL``: a returned commit survives a ``kill -9``; a
  power loss may drop the last ones. The commit whose loss costs money, the request id of
  ``set_submitted``, is fsynced (``synchronous=FULL``) unless ``durable_submits=False``; the
  scheduler instead fsyncs the WAL off the event loop, once for many (``walsync.py``). What
  that costs is measured by bench/journal.py (docs/benchmarks.md).
* Concurrency: one writer process, guarded by a lock (``opening.py``: a second run on the
  folder would submit every job twice), on one asyncio thread with short synchronous
  transactions (tens of microseconds: cheaper than a thread hop). Readers (``status``) open
  the file read-only and see committed state while a run writes (WAL).
* Tallies (counts by state, spend) are kept in memory by the writer and updated after each
  commit, so the scheduler can ask before every submit without scanning a million rows.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import filelock

from batchgen.errors import JournalError, is_disk_full
from batchgen.journal import resets
from batchgen.journal.attempts import record_attempt
from batchgen.journal.loading import plan_into
from batchgen.journal.moves import claim_rows, move_row
from batchgen.journal.opening import (
    ManifestChanged,
    connect_readonly,
    open_locked,
    start_run,
    transaction,
    unlock_folder,
    writer_pid,
)
from batchgen.journal.query import JournalReader, tallies
from batchgen.journal.room import needs_room
from batchgen.journal.schema import (
    JOURNAL_NAME,
    AddReport,
    JobRow,
    LiveTallies,
    charges,
    dumps,
    one_line,
    strip_data_uris,
)
from batchgen.journal.walsync import WalSync
from batchgen.planning.jobs import JobSpec, JobState, check_transition

__all__ = [
    "JOURNAL_NAME",
    "AddReport",
    "JobRow",
    "Journal",
    "JournalReader",
    "ManifestChanged",
    "writer_pid",
]

S = JobState


class Journal(JournalReader):
    """The writer. Open with :meth:`open`; every method commits before returning."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        run_id: int,
        lock: filelock.BaseFileLock | None,
        clock: Callable[[], float],
        durable_submits: bool,
        needs_plan: bool,
    ) -> None:
        super().__init__(conn, path)
        self.run_id = run_id
        self._lock = lock
        self._clock = clock
        self._durable_submits = durable_submits
        self._wal = WalSync(path)
        self.needs_plan = needs_plan
        self._live = LiveTallies(tallies(self._db()))
        self.on_full: Callable[[], bool] | None = None  # a full disk: make room (room.py)

    # ---- opening ------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        manifest_sha256: str,
        version: str,
        settings: dict[str, Any],
        clock: Callable[[], float] = time.time,
        manifest_path: str | None = None,
        allow_manifest_change: bool = False,
        durable_submits: bool = True,
    ) -> Journal:
        """Create or open the journal at ``path`` and record a new run in it.

        Raises :class:`JournalError` for a file of another schema version or not a journal, for
        a folder another process is running in, and :class:`ManifestChanged` when the last run
        used another manifest sha256 and ``allow_manifest_change`` is false.
        """
        path = Path(path)
        with open_locked(path) as (conn, lock):
            run_id, needs_plan = start_run(
                conn,
                path,
                manifest_sha256,
                version,
                settings,
                clock(),
                manifest_path,
                allow_manifest_change,
            )
            return cls(
                conn,
                path,
                run_id=run_id,
                lock=lock,
                clock=clock,
                durable_submits=durable_submits,
                needs_plan=needs_plan,
            )

    @staticmethod
    def open_readonly(path: Path) -> JournalReader:
        """A reader that never writes, safe to use while a run is writing (``status``)."""
        return JournalReader(connect_readonly(Path(path)), Path(path))

    def close(self, exit_code: int | None = None) -> None:
        """Record the end of the run (with ``exit_code`` when given), then release the folder."""
        if self._conn is None:
            return
        try:
            self._conn.execute(
                "UPDATE runs SET ended_at = ?, exit_code = coalesce(?, exit_code) WHERE id = ?",
                (self._clock(), exit_code, self.run_id),
            )
        except sqlite3.OperationalError as exc:
            if not is_disk_full(exc):  # on a full disk the run's end time is all that is lost
                raise
        finally:
            self._wal.close()
            super().close()
            unlock_folder(self._lock, self.path)
            self._lock = None

    # ---- planning -----------------------------------------------------------------------

    def add_jobs(
        self, specs: Iterable[JobSpec], *, cost_of: Callable[[JobSpec], float] | None = None
    ) -> AddReport:
        """Add the manifest's jobs incrementally; call once per run with the whole plan.

        New jobs go to the end of the FIFO, jobs already here keep their state, and jobs this
        plan does not name are flagged ``in_manifest = 0``: never claimed, still re-attached if
        paid for, never deleted. Memory stays flat: rows go in batches of ``BATCH``.
        """
        report = plan_into(
            self._db(), specs, cost_of=cost_of, run_id=self.run_id, clock=self._clock
        )
        self.needs_plan = False
        self._live = LiveTallies(tallies(self._db()))
        return report

    # ---- the submit path ----------------------------------------------------------------

    @needs_room
    def claim(self, limit: int, *, origin: str | None = None) -> list[JobRow]:
        """Move up to ``limit`` PENDING jobs to SUBMITTING, FIFO, their requests to be made at
        ``origin`` (recorded before the POST; None keeps the old one).

        Committed before returning: a crash after this leaves SUBMITTING rows, which
        :meth:`interrupted_submits` sorts out (sent or not, by :meth:`sending`)."""
        if limit <= 0:
            return []
        now = self._clock()
        out = []
        for r in claim_rows(self._db(), limit, origin, now):
            where = origin or r.origin
            self._live.move(
                r, S.SUBMITTING, dup=r.possible_duplicates, billed=r.billed, origin=where
            )
            new = replace(r, state=S.SUBMITTING, updated_at=now, submits=r.submits + 1)
            out.append(replace(new, origin=where))
        return out

    @needs_room
    def sending(self, job_id: str, input_key: str) -> None:
        """Just before a POST: when it is made and what it sends (``attempts.py``), so a lost
        answer can be looked for in fal's history. Not fsynced: a crash that loses it loses
        the claim's SUBMITTING too, or leaves a row that looks unsent and is sent again."""
        record_attempt(self._db(), job_id, self._clock(), input_key)

    def set_submitted(
        self,
        job_id: str,
        handle: dict[str, Any],
        *,
        origin: str | None = None,
        sync: bool = True,
        at: float | None = None,
    ) -> None:
        """SUBMITTING -> QUEUED with the request id and handle, committed (fsynced) at once;
        ``origin`` corrects where it was made when the answer said more than the claim knew.
        ``sync=False`` leaves the fsync to the caller: it calls :meth:`sync_wal` (from any
        thread, once for many jobs) before acting on the job, as the scheduler does. Also
        UNKNOWN -> QUEUED, for a request found in fal's history, ``at`` its attempt's time."""
        request_id = handle.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise JournalError(f"a submit handle without a request_id for job {job_id[:16]}")
        durable = self._durable_submits and sync
        if durable:
            self._db().execute("PRAGMA synchronous = FULL")
        try:
            sets: dict[str, Any] = {"request_id": request_id, "handle": dumps(handle)}
            sets.update(submitted_at=at or self._clock(), attempt_at=None, sent_key=None)
            sets.update({"origin": origin} if origin else {})
            self._move(job_id, S.QUEUED, detail=request_id, sets=sets)
        finally:
            if durable:
                self._db().execute("PRAGMA synchronous = NORMAL")

    def sync_wal(self) -> None:
        """Every commit returned so far on disk (walsync.py); safe from a worker thread."""
        if self._durable_submits:
            self._wal.sync()

    def transition(
        self,
        job_id: str,
        new: JobState,
        *,
        error_class: str | None = None,
        error: str | None = None,
        bump_attempts: bool = False,
    ) -> None:
        """Any allowed state change (``check_transition``), recorded as an event.

        QUEUED is reached only through :meth:`set_submitted` (a queued job without its handle
        could never be re-attached). Going back to PENDING forgets the old request (it stays in
        the events), so it is not re-attached.
        """
        if new is S.QUEUED:
            raise JournalError("use set_submitted() to record a submitted job with its handle")
        sets: dict[str, Any] = {}
        if error_class is not None or error is not None:
            sets.update(error_class=error_class, error=one_line(error))
        self._move(
            job_id,
            new,
            sets=sets,
            bump=bump_attempts,
            detail=" ".join(x for x in (error_class, one_line(error)) if x),
        )

    def set_result(self, job_id: str, result: dict[str, Any]) -> None:
        """Keep the result JSON (before any download) and mark the job COMPLETED."""
        self._move(job_id, S.COMPLETED, sets={"result": dumps(result)}, same_ok=True)

    def mark_downloaded(self, job_id: str, files: list[dict[str, Any]]) -> None:
        """COMPLETED -> DOWNLOADED with the files written; inline image data is dropped."""
        sets: dict[str, Any] = {"files": dumps(files)}
        found = self._db().execute("SELECT result FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if found and found[0] and "data:" in found[0]:  # parse only when there is data to drop
            sets["result"] = dumps(strip_data_uris(json.loads(found[0])))
        self._move(job_id, S.DOWNLOADED, sets=sets, detail=f"{len(files)} files")

    def fail(self, job_id: str, error_class: str, message: str) -> None:
        """A final failure with its class (``http_422``, ``content_policy_violation``, ...)."""
        self.transition(job_id, S.FAILED, error_class=error_class, error=message)

    def requeue(self, job_id: str, reason: str, *, lost: bool = False, dup: bool = False) -> None:
        """Back to PENDING with attempts + 1 (retry or resubmit); ``lost`` = the result expired;
        ``dup`` = the request it abandons ran, so fal may bill it too: a possible duplicate."""
        why = ("lost: " if lost else "") + ("possible duplicate: " if dup else "")
        detail = why + (one_line(reason) or "")
        self._move(job_id, S.PENDING, bump=True, lost=lost, dup=dup, detail=detail)

    # ---- before a run submits: bulk changes (resets.py), tallies rebuilt after each -----

    def bulk(self, change: Callable[[sqlite3.Connection, float], int]) -> int:
        """One of ``resets``' changes (``change(conn, now)``), with the tallies rebuilt."""
        n = change(self._db(), self._clock())
        if n:
            self._live = LiveTallies(tallies(self._db()))
        return n

    def retry_failed(self) -> int:
        """``--retry-failed`` (after ``resets.redownload_failed``): failures back to PENDING."""
        return self.bulk(resets.retry_failed)

    def interrupted_submits(self) -> list[JobRow]:
        """SUBMITTING rows left by a crash: those whose POST was made (:meth:`sending`) become
        UNKNOWN, to be looked for in fal's history; the rest were never sent: PENDING.

        Call once when resuming, before claiming: it would also catch this run's own claims.
        Returns the UNKNOWN ones."""
        rows = self._select("state = 'SUBMITTING' AND sent_key IS NOT NULL")
        for r in rows:
            self._move(r.job_id, S.UNKNOWN, detail="interrupted submit")
        for r in self._select("state = 'SUBMITTING'"):
            self._move(r.job_id, S.PENDING, detail="interrupted before its submit was sent")
        return [replace(r, state=S.UNKNOWN) for r in rows]

    @needs_room
    def event(self, job_id: str | None, kind: str, detail: str) -> None:
        """Append to the audit trail (retries, HTTP failures, resumes); never a secret."""
        with transaction(self._db()) as c:
            c.execute(
                "INSERT INTO events (ts, job_id, kind, detail) VALUES (?, ?, ?, ?)",
                (self._clock(), job_id, kind, one_line(detail) or ""),
            )

    @needs_room
    def upload_put(
        self, sha256: str, url: str, content_type: str, size: int, origin: str | None = None
    ) -> None:
        with transaction(self._db()) as c:
            c.execute(
                "INSERT OR REPLACE INTO uploads VALUES (?, ?, ?, ?, ?, ?)",
                (sha256, url, content_type, size, self._clock(), origin),
            )

    # ---- tallies (in memory, exact: this process is the only writer) --------------------

    def counts(self) -> dict[JobState, int]:
        return {s: self._live.counts[s] for s in S}

    def spent_estimate(self) -> float:
        """What fal may bill for this folder (see ``Tallies``), kept exact in memory."""
        return self._live.spent

    def rehearsal_estimate(self) -> float:
        """The same figure for the emulator's requests: what they would cost on fal."""
        return self._live.rehearsal

    def in_flight_estimate(self) -> float:
        return self._live.in_flight

    # ---- the one state-changing path ----------------------------------------------------

    @needs_room
    def _move(
        self,
        job_id: str,
        new: JobState,
        *,
        sets: dict[str, Any] | None = None,
        bump: bool = False,
        lost: bool = False,
        dup: bool = False,
        same_ok: bool = False,
        detail: str = "",
    ) -> None:
        r = self.head(job_id)
        if not (same_ok and r.state is new):
            check_transition(r.state, new)
        cols = dict(sets or {})
        if new is S.PENDING:  # the old request is abandoned: never re-attach it
            cols.update(request_id=None, handle=None, result=None, submitted_at=None)
            if not (r.billed or r.possible_duplicates or dup):  # no server is owed: forget it
                cols["origin"] = None
        billed = charges(r.state, new, lost=lost)
        move_row(
            self._db(),
            job_id,
            r,
            new,
            cols,
            bump=bump,
            lost=lost,
            billed=billed,
            detail=detail,
            now=self._clock(),
            dup=dup,
        )
        self._live.move(
            r, new, dup=r.possible_duplicates + dup, billed=r.billed + billed, origin=r.origin
        )
