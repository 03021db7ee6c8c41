"""A request id made durable without holding the event loop: one fsync of the WAL for many.

SQLite in WAL mode with ``synchronous=NORMAL`` writes a commit's frames to
``journal.sqlite-wal`` and returns without an fsync: the commit survives a ``kill -9`` (the
kernel has the bytes) but not a power cut. ``synchronous=FULL`` adds one fsync of that file
per commit, on the thread that commits. For ``set_submitted`` that thread is the event loop's,
which then waits 0.5 ms for the disk on an idle machine and several under load, for every job.

:class:`WalSync` does the same fsync on a descriptor of its own, from any thread: every
commit that returned before the call began is then on disk just as ``FULL`` leaves it (the
WAL's header, frames and checksums are what SQLite's recovery reads; before SQLite reuses the
WAL after a checkpoint it has fsynced the WAL and the database file itself). The first call
also fsyncs the folder, so that the WAL file's name survives with it. The scheduler runs one
call for all the request ids committed meanwhile (``journal/groupsync.py``): group commit.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


class WalSync:
    """``sync()``: every commit returned before the call is on disk. Thread-safe."""

    def __init__(self, db: Path) -> None:
        self._db = Path(db)
        self._wal = self._db.with_name(self._db.name + "-wal")
        self._fd: int | None = None
        self._folder_synced = False
        self._lock = threading.Lock()  # one fsync at a time; close() waits for it

    def sync(self) -> None:
        with self._lock:
            if self._fd is None:
                try:
                    self._fd = os.open(self._wal, os.O_RDONLY)
                except FileNotFoundError:  # no WAL now: the commits are in the main file
                    fsync_path(self._db)
                    return
            os.fsync(self._fd)
            if not self._folder_synced:
                fsync_path(self._db.parent)
                self._folder_synced = True

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def fsync_path(path: Path | str) -> None:
    """fsync the file (or folder) at ``path``: its data written so far is on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
