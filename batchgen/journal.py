"""The resume journal: one SQLite file per output folder, the only record of what was paid for.

Rules (DESIGN.md, "The journal and the job states"):

* Intent before action: every method commits before it returns, so a caller acts (POSTs,
  downloads) only on state that is already on disk.
* Durability: WAL with ``synchronous=NORMAL``. A commit is in the WAL (the OS page cache) when
  it returns, which survives a ``kill -9`` of the process; a power loss may drop the last
  commits. The one commit whose loss costs money, the request id of ``set_submitted``, is made
  with ``synchronous=FULL`` (an fsync of the WAL, which also persists every earlier commit)
  unless ``durable_submits=False``. Measured on the dev VM: ~12 µs per NORMAL commit,
  ~120 µs per FULL one (bench/journal.py).
* Concurrency: one writer process, guarded by an ``flock`` on ``journal.sqlite.lock`` (a second
  ``batchgen run`` on the same folder would submit every job twice). The writer is used from
  one asyncio thread with short synchronous transactions: at tens of microseconds per commit,
  blocking the loop is cheaper than a thread hop. Readers (``batchgen status``) open the file
  read-only and see committed state while a run writes (WAL).
* Tallies (counts by state, spend) are kept in memory by the writer and updated after each
  commit, so the scheduler can ask before every submit without scanning a million rows.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from batchgen.errors import JournalError
from batchgen.jobs import JobSpec, JobState, check_transition
from batchgen.journal_query import JournalReader, connect_readonly, tallies
from batchgen.journal_schema import (
    BILLED,
    DDL,
    IN_FLIGHT,
    JOB_COLUMNS,
    JOURNAL_NAME,
    SCHEMA_VERSION,
    AddReport,
    JobRow,
    dumps,
    find_secret,
    job_row,
    one_line,
    redact_settings,
    strip_data_uris,
)

try:  # POSIX; elsewhere the single-writer guard is skipped.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["JOURNAL_NAME", "AddReport", "JobRow", "Journal", "JournalReader", "ManifestChanged"]

S = JobState
BATCH = 5000  # rows per transaction when planning: big enough to amortise, small in memory


class ManifestChanged(JournalError):
    """The folder's journal was started from a different manifest (another file, or edited)."""

    def __init__(self, message: str, *, recorded_sha256: str, recorded_path: str | None) -> None:
        self.recorded_sha256 = recorded_sha256
        self.recorded_path = recorded_path
        super().__init__(message)


class Journal(JournalReader):
    """The writer. Open with :meth:`open`; every method commits before returning."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        run_id: int,
        lock: IO[bytes] | None,
        clock: Callable[[], float],
        durable_submits: bool,
        needs_plan: bool,
    ) -> None:
        super().__init__(conn, path)
        self.run_id = run_id
        self._lock = lock
        self._clock = clock
        self._durable_submits = durable_submits
        self.needs_plan = needs_plan
        self._reload_tallies()

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
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = _lock(path)
        try:
            conn = sqlite3.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            _unlock(lock)
            raise JournalError(f"cannot open the journal {path}: {exc}") from exc
        try:
            run_id, needs_plan = _start(
                conn, path, manifest_sha256, version, settings, clock(), manifest_path,
                allow_manifest_change,
            )
            return cls(
                conn, path, run_id=run_id, lock=lock, clock=clock,
                durable_submits=durable_submits, needs_plan=needs_plan,
            )
        except BaseException:
            conn.close()
            _unlock(lock)
            raise

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
        finally:
            super().close()
            _unlock(self._lock)
            self._lock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- planning -----------------------------------------------------------------------

    def add_jobs(
        self, specs: Iterable[JobSpec], *, cost_of: Callable[[JobSpec], float] | None = None
    ) -> AddReport:
        """Add the manifest's jobs incrementally; call once per run with the whole plan.

        New jobs go to the end of the FIFO, jobs already here keep their state, and jobs this
        plan does not name are flagged ``in_manifest = 0``: never claimed, still re-attached if
        paid for, never deleted. Memory stays flat: rows go in batches of ``BATCH``.
        """
        conn = self._db()
        fresh = conn.execute("SELECT NOT EXISTS (SELECT 1 FROM jobs)").fetchone()[0]
        if not fresh:
            # Membership of this plan goes to a temp table (not the jobs rows): marking a
            # million big rows would rewrite every page of the database into the WAL.
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS named (job_id TEXT PRIMARY KEY)")
            conn.execute("DELETE FROM temp.named")
        new = named = 0
        batch: list[tuple[Any, ...]] = []

        def flush() -> None:
            nonlocal new, named
            with self._tx() as c:
                new += c.executemany(
                    "INSERT OR IGNORE INTO jobs (job_id, spec, state, cost, created_at,"
                    " updated_at) VALUES (?, ?, 'PENDING', ?, ?, ?)",
                    batch,
                ).rowcount
                if not fresh:
                    named += c.executemany(
                        "INSERT OR IGNORE INTO temp.named VALUES (?)", [(b[0],) for b in batch]
                    ).rowcount
            batch.clear()

        now = self._clock()
        for spec in specs:
            secret = find_secret(spec.input)
            if secret:
                raise JournalError(
                    f"job {spec.short_id} carries a secret in {secret}: secrets are added at "
                    "submit time and never stored in the journal"
                )
            cost = float(cost_of(spec)) if cost_of else 0.0
            batch.append((spec.job_id, dumps(spec.to_json()), cost, now, now))
            if len(batch) >= BATCH:
                flush()
        if batch:
            flush()
        with self._tx() as c:
            if fresh:
                kept = gone = 0
            else:
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
            c.execute("UPDATE runs SET planned_at = ? WHERE id = ?", (self._clock(), self.run_id))
            c.execute(
                "INSERT INTO events (ts, job_id, kind, detail) VALUES (?, NULL, 'plan', ?)",
                (self._clock(), f"new={new} kept={kept} not_in_manifest={gone}"),
            )
        if not fresh:
            conn.execute("DROP TABLE temp.named")
        self.needs_plan = False
        self._reload_tallies()
        return AddReport(new=new, kept=kept, not_in_manifest=gone)

    # ---- the submit path ----------------------------------------------------------------

    def claim(self, limit: int) -> list[JobRow]:
        """Move up to ``limit`` jobs to SUBMITTING, FIFO, UNKNOWN ones (resubmits) first.

        Committed before returning: a crash after this leaves SUBMITTING rows, which
        :meth:`interrupted_submits` turns into UNKNOWN (the POST may have been sent).
        """
        if limit <= 0:
            return []
        now = self._clock()
        with self._tx() as c:
            rows = [job_row(r) for r in c.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'UNKNOWN' AND in_manifest = 1"
                " ORDER BY seq LIMIT ?", (limit,)
            )]
            rows += [job_row(r) for r in c.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'PENDING' AND in_manifest = 1"
                " ORDER BY seq LIMIT ?", (limit - len(rows),)
            )]
            c.executemany(
                "UPDATE jobs SET state = 'SUBMITTING', submits = submits + 1,"
                " possible_duplicates = possible_duplicates + (state = 'UNKNOWN'),"
                " updated_at = ? WHERE seq = ?",
                [(now, r.seq) for r in rows],
            )
            c.executemany(
                "INSERT INTO events (ts, job_id, kind, detail) VALUES (?, ?, 'state', ?)",
                [(now, r.job_id, f"{r.state}->SUBMITTING") for r in rows],
            )
        out = []
        for r in rows:
            self._tally(r, r.state, S.SUBMITTING, r.possible_duplicates, r.lost)
            dup = r.possible_duplicates + (r.state is S.UNKNOWN)
            out.append(replace(r, state=S.SUBMITTING, updated_at=now, submits=r.submits + 1,
                                possible_duplicates=dup))
        return out

    def set_submitted(self, job_id: str, handle: dict[str, Any]) -> None:
        """SUBMITTING -> QUEUED with the request id and handle, committed (fsynced) at once."""
        request_id = handle.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise JournalError(f"a submit handle without a request_id for job {job_id[:16]}")
        durable = self._durable_submits
        if durable:
            self._db().execute("PRAGMA synchronous = FULL")
        try:
            self._move(job_id, S.QUEUED, detail=request_id, sets={
                "request_id": request_id, "handle": dumps(handle),
                "submitted_at": self._clock(),
            })
        finally:
            if durable:
                self._db().execute("PRAGMA synchronous = NORMAL")

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
        self._move(job_id, new, sets=sets, bump=bump_attempts,
                   detail=" ".join(x for x in (error_class, one_line(error)) if x))

    def set_result(self, job_id: str, result: dict[str, Any]) -> None:
        """Keep the result JSON (before any download) and mark the job COMPLETED."""
        self._move(job_id, S.COMPLETED, sets={"result": dumps(result)}, same_ok=True)

    def mark_downloaded(self, job_id: str, files: list[dict[str, Any]]) -> None:
        """COMPLETED -> DOWNLOADED with the files written; inline image data is dropped."""
        row = self._get_or_raise(job_id)
        sets: dict[str, Any] = {"files": dumps(files)}
        if row.result is not None:
            sets["result"] = dumps(strip_data_uris(row.result))
        self._move(job_id, S.DOWNLOADED, sets=sets, row=row, detail=f"{len(files)} files")

    def fail(self, job_id: str, error_class: str, message: str) -> None:
        """A final failure with its class (``http_422``, ``content_policy_violation``, ...)."""
        self.transition(job_id, S.FAILED, error_class=error_class, error=message)

    def requeue(self, job_id: str, reason: str, *, lost: bool = False) -> None:
        """Back to PENDING with attempts + 1 (retry or resubmit); ``lost`` = the result expired."""
        self._move(job_id, S.PENDING, bump=True, lost=lost,
                   detail=("lost: " if lost else "") + (one_line(reason) or ""))

    def retry_failed(self) -> int:
        """``--retry-failed``: every final failure in the manifest back to PENDING, attempts 0."""
        now = self._clock()
        with self._tx() as c:
            c.execute(
                "INSERT INTO events (ts, job_id, kind, detail) SELECT ?, job_id, 'state',"
                " 'FAILED->PENDING retry-failed' FROM jobs"
                " WHERE state = 'FAILED' AND in_manifest = 1", (now,)
            )
            n: int = c.execute(
                "UPDATE jobs SET state = 'PENDING', attempts = 0, error_class = NULL,"
                " error = NULL, updated_at = ? WHERE state = 'FAILED' AND in_manifest = 1",
                (now,),
            ).rowcount
        self._reload_tallies()
        return n

    def interrupted_submits(self) -> list[JobRow]:
        """SUBMITTING rows left by a crash become UNKNOWN (the POST may have gone out).

        Call once when resuming, before claiming: it would also catch this run's own claims.
        They are resubmitted by :meth:`claim` and counted as possible duplicates then.
        """
        rows = self._select("state = 'SUBMITTING'")
        for r in rows:
            self._move(r.job_id, S.UNKNOWN, row=r, detail="interrupted submit")
        return [replace(r, state=S.UNKNOWN) for r in rows]

    def event(self, job_id: str | None, kind: str, detail: str) -> None:
        """Append to the audit trail (retries, HTTP failures, resumes); never a secret."""
        with self._tx() as c:
            c.execute(
                "INSERT INTO events (ts, job_id, kind, detail) VALUES (?, ?, ?, ?)",
                (self._clock(), job_id, kind, one_line(detail) or ""),
            )

    def upload_put(self, sha256: str, url: str, content_type: str, size: int) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO uploads VALUES (?, ?, ?, ?, ?)",
                (sha256, url, content_type, size, self._clock()),
            )

    # ---- tallies (in memory, exact: this process is the only writer) --------------------

    def counts(self) -> dict[JobState, int]:
        return {s: self._counts[s] for s in S}

    def spent_estimate(self) -> float:
        return self._spent

    def in_flight_estimate(self) -> float:
        return self._in_flight

    def _reload_tallies(self) -> None:
        t = tallies(self._db())
        self._counts: Counter[JobState] = Counter(t.counts)
        self._spent = t.spent
        self._in_flight = t.in_flight

    def _tally(self, r: JobRow, old: JobState, new: JobState, dup: int, lost: int) -> None:
        if r.in_manifest:
            self._counts[old] -= 1
            self._counts[new] += 1
        extra = (dup - r.possible_duplicates) + (lost - r.lost)
        self._spent += r.cost * (extra + (new in BILLED) - (old in BILLED))
        self._in_flight += r.cost * ((new in IN_FLIGHT) - (old in IN_FLIGHT))

    # ---- the one state-changing path ----------------------------------------------------

    def _move(
        self,
        job_id: str,
        new: JobState,
        *,
        sets: dict[str, Any] | None = None,
        bump: bool = False,
        lost: bool = False,
        same_ok: bool = False,
        row: JobRow | None = None,
        detail: str = "",
    ) -> None:
        r = row or self._get_or_raise(job_id)
        if not (same_ok and r.state is new):
            check_transition(r.state, new)
        cols = dict(sets or {})
        if new is S.PENDING:  # the old request is abandoned: never re-attach it
            cols.update(request_id=None, handle=None, result=None, submitted_at=None)
        now = self._clock()
        cols.update(state=str(new), updated_at=now)
        assign = ", ".join(f"{k} = ?" for k in cols)
        assign += ", attempts = attempts + ?, lost = lost + ?"
        with self._tx() as c:
            c.execute(f"UPDATE jobs SET {assign} WHERE seq = ?",
                      (*cols.values(), int(bump), int(lost), r.seq))
            old_req = f" (was {r.request_id})" if new is S.PENDING and r.request_id else ""
            c.execute(
                "INSERT INTO events (ts, job_id, kind, detail) VALUES (?, ?, 'state', ?)",
                (now, job_id, f"{r.state}->{new} {detail}{old_req}".rstrip()),
            )
        self._tally(r, r.state, new, r.possible_duplicates, r.lost + int(lost))

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front, so a transaction never fails halfway
        # on a lock upgrade; the rollback keeps a failed call from leaving anything behind.
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _get_or_raise(self, job_id: str) -> JobRow:
        row = self.get(job_id)
        if row is None:
            raise JournalError(f"no job {job_id[:16]} in the journal {self.path}")
        return row


def _start(
    conn: sqlite3.Connection,
    path: Path,
    sha: str,
    version: str,
    settings: dict[str, Any],
    now: float,
    manifest_path: str | None,
    allow_change: bool,
) -> tuple[int, bool]:
    """Check or create the schema, check the manifest, insert this run. Returns (run id, needs
    a plan)."""
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA busy_timeout = 5000")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise JournalError(f"{path} is not a batchgen journal ({exc})") from exc
    if tables and "meta" not in tables:
        raise JournalError(f"{path} is an SQLite file but not a batchgen journal")
    if not tables:
        conn.executescript(f"BEGIN IMMEDIATE; {DDL} COMMIT;")
        conn.execute(
            "INSERT INTO meta VALUES ('schema_version', ?), ('created_by', ?)",
            (str(SCHEMA_VERSION), version),
        )
    found = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if found is None or found[0] != str(SCHEMA_VERSION):
        have = found[0] if found else "none"
        raise JournalError(
            f"{path} has journal schema {have}; this batchgen ({version}) reads schema "
            f"{SCHEMA_VERSION}. Use the batchgen version that wrote it, or another --out folder."
        )
    if manifest_path is None:
        guess = settings.get("manifest_path", settings.get("manifest"))
        manifest_path = str(guess) if isinstance(guess, (str, os.PathLike)) else None
    last = conn.execute(
        "SELECT manifest_sha256, manifest_path, version, planned_at FROM runs"
        " WHERE planned_at IS NOT NULL ORDER BY id DESC LIMIT 1"
    ).fetchone()
    if last and last[0] != sha and not allow_change:
        raise ManifestChanged(
            f"{path.parent} holds a run of another manifest ({last[1] or 'unknown path'}, "
            f"sha256 {last[0][:12]}); this one ({manifest_path or '?'}) has sha256 {sha[:12]}. "
            "Use another --out folder, or allow the change to re-plan this folder "
            "(new jobs are added, finished ones kept, dropped ones reported and not run).",
            recorded_sha256=last[0],
            recorded_path=last[1],
        )
    needs_plan = not (last and last[0] == sha and last[2] == version)
    cur = conn.execute(
        "INSERT INTO runs (manifest_sha256, manifest_path, version, settings, started_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (sha, manifest_path, version, dumps(redact_settings(settings)), now),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid, needs_plan


def _lock(path: Path) -> IO[bytes] | None:
    """Take the folder's writer lock, or explain who holds it. Released by the OS on kill -9."""
    if fcntl is None:  # pragma: no cover
        return None
    f = open(path.with_name(path.name + ".lock"), "a+b")  # noqa: SIM115 (held until close)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        pid = f.read().decode(errors="replace").strip() or "?"
        f.close()
        raise JournalError(
            f"another batchgen process (pid {pid}) is running in {path.parent}; "
            "wait for it or stop it before resuming"
        ) from None
    f.truncate(0)
    f.write(str(os.getpid()).encode())
    f.flush()
    return f


def _unlock(lock: IO[bytes] | None) -> None:
    if lock is not None:
        lock.close()  # closing the file drops the flock
