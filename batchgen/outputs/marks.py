"""Marks on a folder's images: picked, rejected, or none (``batchgen mark``, the review page,
``run --replace-rejected``, exports' ``--exclude rejected`` / ``--only picked``).

A mark belongs to one image, named as the index names it (``file_name``, relative to the
folder), with the job that made it. Marks live in ``OUT/marks.sqlite``, apart from the journal:

- they never touch the images, the index or the journal, so every later run, ``index
  --rebuild`` and a resume leave them as they are, and deleting the file unmarks everything;
- several processes may write them at once (the review page while ``batchgen mark`` runs, a
  run reading them): SQLite's own locking, in WAL mode with a busy timeout, orders them, and
  each change is one committed transaction, so a closed tab or a kill loses nothing said;
- an image with no row is unmarked: a folder of a million images with a dozen marks holds a
  dozen rows.

Every change is also kept in ``changes`` (when, what, from which tool), so a mistaken bulk
mark can be looked up and undone by hand.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Self

MARKS_FILE = "marks.sqlite"
BUSY_TIMEOUT_MS = 10_000  # another writer's transaction is milliseconds; a stuck one is a bug

_DDL = """
CREATE TABLE IF NOT EXISTS marks (
    file_name TEXT PRIMARY KEY,
    job_id TEXT,
    mark TEXT NOT NULL CHECK (mark IN ('picked', 'rejected')),
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS marks_job ON marks (job_id);
CREATE TABLE IF NOT EXISTS changes (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    file_name TEXT NOT NULL,
    mark TEXT,
    source TEXT NOT NULL
);
"""


class Mark(StrEnum):
    PICKED = "picked"
    REJECTED = "rejected"


def review_of(mark: Mark | None) -> str:
    """The ``review`` column of exports: ``picked``, ``rejected``, or empty."""
    return "" if mark is None else str(mark)


@dataclass(frozen=True, slots=True)
class Marked:
    file_name: str
    job_id: str | None
    mark: Mark
    at: float


class MarkError(ValueError):
    """A name that cannot be an image of the folder (absolute, or climbing out of it)."""


def check_name(file_name: str) -> str:
    """``file_name`` as the index writes it, or MarkError: marks name images inside the folder
    only, whatever a caller (or a request to the review page) says."""
    p = PurePosixPath(file_name)
    if not file_name or p.is_absolute() or ".." in p.parts or "\\" in file_name:
        raise MarkError(f"not an image of the folder: {file_name!r}")
    return str(p)


class Marks:
    """The marks of one folder, on one connection. Open with :meth:`open`; use as a context
    manager. Every method that changes something commits before it returns."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    def open(cls, out: Path, *, create: bool = True) -> Marks:
        """The folder's marks; with ``create=False`` a folder without them raises
        FileNotFoundError (a reader that must not make files: ``status``, exports)."""
        path = Path(out) / MARKS_FILE
        if not create and not path.is_file():
            raise FileNotFoundError(path)
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            _set_up(conn)
        except sqlite3.Error:
            conn.close()
            raise
        return cls(conn, path)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------

    def all(self) -> dict[str, Mark]:
        """file name -> its mark, for every marked image."""
        return {f: Mark(m) for f, m in self._conn.execute("SELECT file_name, mark FROM marks")}

    def rows(self) -> list[Marked]:
        sql = "SELECT file_name, job_id, mark, at FROM marks ORDER BY at, file_name"
        return [Marked(f, j, Mark(m), at) for f, j, m, at in self._conn.execute(sql)]

    def counts(self) -> Counter[Mark]:
        sql = "SELECT mark, count(*) FROM marks GROUP BY mark"
        return Counter({Mark(m): n for m, n in self._conn.execute(sql)})

    def of(self, file_name: str) -> Mark | None:
        found = self._conn.execute(
            "SELECT mark FROM marks WHERE file_name = ?", (file_name,)
        ).fetchone()
        return None if found is None else Mark(found[0])

    # -- changing -----------------------------------------------------------------------------

    def set(
        self,
        images: Iterable[tuple[str, str | None]],
        mark: Mark | None,
        *,
        source: str,
        now: float | None = None,
    ) -> int:
        """Mark each ``(file_name, job_id)`` (``None`` clears it), in one transaction; the
        number of images whose mark changed. ``source`` says which tool did it (``mark``,
        ``review``)."""
        at = time.time() if now is None else now
        changed = 0
        with self._transaction() as c:
            for file_name, job_id in images:
                name = check_name(file_name)
                before = c.execute("SELECT mark FROM marks WHERE file_name = ?", (name,))
                row = before.fetchone()
                if (row[0] if row else None) == (None if mark is None else str(mark)):
                    continue
                if mark is None:
                    c.execute("DELETE FROM marks WHERE file_name = ?", (name,))
                else:
                    c.execute(
                        "INSERT INTO marks (file_name, job_id, mark, at) VALUES (?, ?, ?, ?)"
                        " ON CONFLICT (file_name) DO UPDATE SET mark = excluded.mark,"
                        " at = excluded.at, job_id = coalesce(excluded.job_id, job_id)",
                        (name, job_id, str(mark), at),
                    )
                c.execute(
                    "INSERT INTO changes (at, file_name, mark, source) VALUES (?, ?, ?, ?)",
                    (at, name, None if mark is None else str(mark), source),
                )
                changed += 1
        return changed

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE: the write lock is taken at the start, so two writers queue (busy
        # timeout) instead of one failing halfway through.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")


def _set_up(conn: sqlite3.Connection) -> None:
    """WAL mode and the tables, however many processes open the file at once. The tables are
    made in an IMMEDIATE transaction, which waits out another writer (the busy timeout);
    switching to WAL does not always wait (SQLite answers "locked" at once while another
    connection is setting the file up), so it is tried again, briefly, until the timeout."""
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in filter(str.strip, _DDL.split(";")):
                    conn.execute(statement)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def read_marks(out: Path) -> dict[str, Mark]:
    """The folder's marks, or none when it has no marks file (nothing is created)."""
    try:
        with Marks.open(out, create=False) as marks:
            return marks.all()
    except FileNotFoundError:
        return {}


def keeps(mark: Mark | None, *, exclude_rejected: bool, only_picked: bool) -> bool:
    """Whether an image with ``mark`` passes exports' ``--exclude rejected`` and
    ``--only picked``."""
    if only_picked:
        return mark is Mark.PICKED
    return not (exclude_rejected and mark is Mark.REJECTED)


def marks_of(rows: Iterable[Mapping[str, object]], marks: Mapping[str, Mark]) -> Iterator[str]:
    """The ``review`` value of each index row, in order."""
    for row in rows:
        name = row.get("file_name")
        yield review_of(marks.get(name) if isinstance(name, str) else None)
