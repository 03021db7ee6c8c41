"""Opening a journal file: schema checks, the manifest check, the run record, the writer lock.

Separate from ``writer`` (the state changes) because none of this runs after ``open``.

The manifest rule (what a user sees):

* The same manifest file, edited since the last run (same absolute path, new sha256): allowed.
  That is the everyday "add a few prompts and re-run" case. The sha256 is the manifest's
  identity (``manifest/identity.py``): it covers every file the manifest read, so an edited
  prompts file or reference image counts as an edit of the manifest. The caller re-plans
  (``needs_plan``): new jobs are added, finished ones kept, and jobs the file no longer names
  are reported and never run (kept in the journal, so paid work is never forgotten).
* Another manifest file aimed at a folder that holds a run: refused with
  :class:`ManifestChanged` naming both files, unless the caller passes
  ``allow_manifest_change=True``. Mixing two unrelated plans in one folder is almost always a
  wrong ``--out``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock

from batchgen.errors import JournalError
from batchgen.journal.origin import of_target
from batchgen.journal.schema import BILLS_TABLE, DDL, SCHEMA_VERSION, dumps, redact_settings

# A `status` probe holds the writer lock for microseconds: a starting run waits this long for
# it before saying the folder is in use, and a probe waits as long for another probe.
LOCK_WAIT_S = 0.3
PROBE_WAIT_S = 0.05
POLL_S = 0.01


class ManifestChanged(JournalError):
    """The folder's journal was started from a different manifest (another file, or edited)."""

    def __init__(self, message: str, *, recorded_sha256: str, recorded_path: str | None) -> None:
        self.recorded_sha256 = recorded_sha256
        self.recorded_path = recorded_path
        super().__init__(message)


def start_run(
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
        # One transaction, so a kill -9 here never leaves tables without their schema version.
        with transaction(conn) as c:
            for statement in filter(str.strip, DDL.split(";")):
                c.execute(statement)
            c.execute(
                "INSERT INTO meta VALUES ('schema_version', ?), ('created_by', ?)",
                (str(SCHEMA_VERSION), version),
            )
    found = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    have = found[0] if found else "none"
    if have.isdigit() and int(have) in MIGRATIONS:
        migrate(conn, int(have))
    elif have != str(SCHEMA_VERSION):
        raise JournalError(
            f"{path} has journal schema {have}; this batchgen ({version}) reads schema "
            f"{SCHEMA_VERSION}. Use the batchgen version that wrote it, or another --out folder."
        )
    if manifest_path is None:
        guess = settings.get("manifest_path", settings.get("manifest"))
        manifest_path = str(guess) if isinstance(guess, (str, os.PathLike)) else None
    if manifest_path is not None:  # absolute: the resume command must work from any folder
        manifest_path = os.path.abspath(manifest_path)
    last = conn.execute(
        # The latest run, planned or not: a re-plan cut short must be redone before claiming.
        "SELECT manifest_sha256, manifest_path, version, planned_at FROM runs"
        " ORDER BY id DESC LIMIT 1"
    ).fetchone()
    edited = last is not None and manifest_path is not None and last[1] == manifest_path
    if last and last[0] != sha and not (allow_change or edited):
        raise ManifestChanged(
            f"{path.parent} holds a run of another manifest ({last[1] or 'unknown path'}, "
            f"sha256 {last[0][:12]}); this one ({manifest_path or '?'}) has sha256 {sha[:12]}. "
            "To build on that folder (jobs both manifests share are kept, new ones are added, "
            "the rest are left out), run again with --reuse-folder; else use another --out.",
            recorded_sha256=last[0],
            recorded_path=last[1],
        )
    needs_plan = not (last and last[0] == sha and last[2] == version and last[3] is not None)
    cur = conn.execute(
        "INSERT INTO runs (manifest_sha256, manifest_path, version, settings, started_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (sha, manifest_path, version, dumps(redact_settings(settings)), now),
    )
    assert cur.lastrowid is not None
    if last and last[0] != sha:
        conn.execute(
            "INSERT INTO events (ts, job_id, kind, detail) VALUES (?, NULL, 'manifest', ?)",
            (now, f"manifest changed: sha256 {last[0][:12]} -> {sha[:12]} ({manifest_path})"),
        )
    return cur.lastrowid, needs_plan


def _writer_lock(path: Path) -> filelock.BaseFileLock:
    """The folder's writer lock on ``journal.sqlite.lock``: ``flock`` on POSIX, ``LockFileEx``
    on Windows. Both belong to an open file, so the OS drops them when the process dies, kill -9
    included (filelock's SoftFileLock, a file that exists, would outlive a crash and lock the
    folder for good). Elsewhere a run is refused: without the lock two runs would each submit,
    and pay for, every job."""
    if sys.platform == "win32":
        kind: type[filelock.BaseFileLock] = filelock.WindowsFileLock
    elif filelock.has_fcntl:
        kind = filelock.UnixFileLock
    else:
        raise JournalError(
            f"cannot lock {path.parent} against a second run on this platform ({sys.platform}), "
            "which has neither flock nor Windows' file locking"
        )
    return kind(
        path.with_name(path.name + ".lock"),
        thread_local=False,  # taken and released by the Journal, from whichever thread
        fallback_to_soft=False,  # a filesystem without flock is refused, not soft-locked
        # Never unlinked (Windows would on release): a probe's release must not remove the
        # name of the file a starting run is locking.
        preserve_lock_file=True,
    )


def _pid_file(path: Path) -> Path:
    return path.with_name(path.name + ".pid")


def _holder(path: Path) -> int | None:
    """The pid the lock's holder wrote (a separate file: Windows bars reads of a locked range)."""
    try:
        text = _pid_file(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def lock_folder(path: Path) -> filelock.BaseFileLock:
    """Take the folder's writer lock, or explain who holds it. Released by the OS on kill -9."""
    lock = _writer_lock(path)
    try:
        lock.acquire(timeout=LOCK_WAIT_S, poll_interval=POLL_S)
    except filelock.Timeout:
        pid = _holder(path)
        raise JournalError(
            f"another batchgen process (pid {pid or '?'}) is running in {path.parent}; "
            "wait for it or stop it before resuming"
        ) from None
    except OSError as exc:  # e.g. a network filesystem without locks
        raise JournalError(
            f"cannot lock {path.parent} against a second run ({exc.strerror or exc}); "
            "use a folder on a local disk for --out"
        ) from None
    try:
        _pid_file(path).write_text(str(os.getpid()))
    except OSError as exc:
        lock.release()
        raise JournalError(f"cannot write in {path.parent}: {exc.strerror or exc}") from None
    return lock


@contextlib.contextmanager
def open_locked(path: Path) -> Iterator[tuple[sqlite3.Connection, filelock.BaseFileLock | None]]:
    """The folder locked and the journal's file connected, for the writer to start on. Any
    failure inside the block closes the connection and releases the folder again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_folder(path)
    try:
        conn = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        unlock_folder(lock, path)
        raise JournalError(f"cannot open the journal {path}: {exc}") from exc
    try:
        yield conn, lock
    except BaseException:
        conn.close()
        unlock_folder(lock, path)
        raise


def unlock_folder(lock: filelock.BaseFileLock | None, path: Path) -> None:
    if lock is not None:
        # The pid goes first, while the lock is still ours: a run taking it next writes its own.
        _pid_file(path).unlink(missing_ok=True)
        lock.release()


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection to an existing journal, or a clear :class:`JournalError`."""
    if not path.is_file():
        raise JournalError(f"no journal at {path}: is this a batchgen output folder?")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot read the journal {path}: {exc}") from exc
    try:
        found = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise JournalError(f"{path} is not a batchgen journal ({exc})") from exc
    have = found[0] if found else "none"
    # A reader must not write, so an old journal is read as it is, with what it lacks made up
    # in the connection's temp schema (which shadows the main one for unqualified names); the
    # next `batchgen run` (or `reconcile`) on the folder migrates the file itself.
    if have == "1":  # no origin columns: views with them empty
        conn.execute("CREATE TEMP VIEW jobs AS SELECT *, NULL AS origin FROM main.jobs")
        conn.execute("CREATE TEMP VIEW uploads AS SELECT *, NULL AS origin FROM main.uploads")
    if have in ("1", "2"):  # no bills table: an empty one
        conn.execute(BILLS_TABLE.replace("TABLE IF NOT EXISTS", "TEMP TABLE"))
    elif have not in ("3", str(SCHEMA_VERSION)):  # 3 lacks only what no reader reads
        conn.close()
        raise JournalError(
            f"{path} has journal schema {have}; this batchgen reads schema {SCHEMA_VERSION}"
        )
    return conn


def _v1_to_v2(c: sqlite3.Connection) -> None:
    """Schema 2 records where each job's requests were made (``jobs.origin``). Rows written by
    schema 1 are given the origin of the folder's last run: folders rarely change target, and
    a wrong guess errs towards keeping paid work."""
    c.execute("ALTER TABLE jobs ADD COLUMN origin TEXT")
    c.execute("ALTER TABLE uploads ADD COLUMN origin TEXT")
    last = c.execute("SELECT settings FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    if last is None:
        return
    settings = json.loads(last[0])
    endpoint = settings.get("endpoint")
    where = of_target(str(settings.get("target")), endpoint if isinstance(endpoint, str) else None)
    c.execute(
        "UPDATE jobs SET origin = ? WHERE state != 'PENDING' OR billed > 0"
        " OR possible_duplicates > 0",
        (where,),
    )
    c.execute("UPDATE uploads SET origin = ?", (where,))


def _v2_to_v3(c: sqlite3.Connection) -> None:
    """Schema 3 keeps what fal billed (``bills``, filled by `batchgen reconcile`)."""
    c.execute(BILLS_TABLE)


def _v3_to_v4(c: sqlite3.Connection) -> None:
    """Schema 4 keeps each submit attempt's time and input until its answer comes (``schema``).
    A row schema 3 left SUBMITTING or UNKNOWN may have been sent, with no record of what:
    ``'?'`` says so, and the look-up sends it again, counted, as schema 3 would have."""
    c.execute("ALTER TABLE jobs ADD COLUMN attempt_at REAL")
    c.execute("ALTER TABLE jobs ADD COLUMN sent_key TEXT")
    c.execute("UPDATE jobs SET sent_key = '?' WHERE state IN ('SUBMITTING', 'UNKNOWN')")


# version -> the step that brings it to the next one ("skip what is recorded": each step runs
# once, in the same transaction as the version it writes).
MIGRATIONS = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4}


def migrate(conn: sqlite3.Connection, have: int) -> None:
    with transaction(conn) as c:
        for v in range(have, SCHEMA_VERSION):
            MIGRATIONS[v](c)
        c.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
        c.execute(
            "INSERT INTO events (ts, job_id, kind, detail) VALUES (?, NULL, 'migrate', ?)",
            (time.time(), f"journal schema {have} -> {SCHEMA_VERSION}"),
        )


def writer_pid(path: Path) -> int | None:
    """The pid of the process running in the journal's folder (-1 when it wrote none), or None
    when none is.

    Tries the writer lock without waiting (beyond ``PROBE_WAIT_S``, for another probe) and lets
    it go at once. That cannot disturb a run holding it: the lock belongs to the run's own open
    file, and the probe opens and closes a file of its own (in the run's process too; POSIX
    record locks, unlike flock, would be dropped by that close), never removing it; a run
    starting in the probe's microseconds waits ``LOCK_WAIT_S`` for it.
    """
    if not path.with_name(path.name + ".lock").exists():
        return None
    try:
        lock = _writer_lock(path)
    except JournalError:
        return None  # no batchgen can run here, so none is running
    try:
        lock.acquire(timeout=PROBE_WAIT_S, poll_interval=POLL_S)
    except filelock.Timeout:
        pid = _holder(path)
        return -1 if pid is None else pid
    except OSError:
        return None  # a lock file we may not open (another user's folder): nothing to tell
    lock.release()
    return None


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any error.

    IMMEDIATE takes the write lock up front, so a transaction never fails halfway on a lock
    upgrade, and a failed call leaves nothing behind.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:  # SQLite rolls back by itself after some errors (a full disk)
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
