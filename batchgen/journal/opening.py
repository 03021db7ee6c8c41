"""Opening a journal file: schema checks, the manifest check, the run record, the writer lock.

Separate from ``writer`` (the state changes) because none of this runs after ``open``.

The manifest rule (what a user sees):

* The same manifest file, edited since the last run (same absolute path, new sha256): allowed.
  That is the everyday "add a few prompts and re-run" case. The caller re-plans
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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from batchgen.errors import JournalError
from batchgen.journal.origin import of_target
from batchgen.journal.schema import DDL, SCHEMA_VERSION, dumps, redact_settings

try:  # POSIX; elsewhere the single-writer guard is skipped.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


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


def lock_folder(path: Path) -> IO[bytes] | None:
    """Take the folder's writer lock, or explain who holds it. Released by the OS on kill -9."""
    if fcntl is None:  # pragma: no cover
        return None
    f = open(path.with_name(path.name + ".lock"), "a+b")  # noqa: SIM115 (held until close)
    for delay in (0.01, 0.05, 0.2, None):  # a `status` probe holds it for microseconds
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            if delay is not None:
                time.sleep(delay)
    else:
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


def unlock_folder(lock: IO[bytes] | None) -> None:
    if lock is not None:
        lock.close()  # closing the file drops the flock


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
    if have == "1":
        # A reader must not write, so an old journal is read through a view with the newer
        # columns empty (a temp view shadows the table for unqualified names); the next
        # `batchgen run` on the folder migrates the file itself.
        conn.execute("CREATE TEMP VIEW jobs AS SELECT *, NULL AS origin FROM main.jobs")
        conn.execute("CREATE TEMP VIEW uploads AS SELECT *, NULL AS origin FROM main.uploads")
    elif have != str(SCHEMA_VERSION):
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


# version -> the step that brings it to the next one ("skip what is recorded": each step runs
# once, in the same transaction as the version it writes).
MIGRATIONS = {1: _v1_to_v2}


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
    """The pid of the process running in the journal's folder, or None when none is.

    Probes the writer lock with a shared lock held for microseconds; ``lock_folder`` retries
    briefly so this probe never makes a starting run fail.
    """
    lock_path = path.with_name(path.name + ".lock")
    if fcntl is None or not lock_path.exists():
        return None
    with open(lock_path, "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = f.read().decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(f, fcntl.LOCK_UN)
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
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
