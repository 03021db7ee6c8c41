"""What the journal does when the disk is full: ask for room once, then try again.

SQLite answers SQLITE_FULL and rolls the transaction back (``opening.transaction``), so a
call that failed for room changed nothing and can simply be made again. The journal's owner
(the scheduler) is told through ``on_full``: it gives back the space the run set aside
(``outputs/reserve.py``) and stops submitting. The same call then goes through, so the
results of requests already paid for are still recorded. When there is still no room, the
call raises ``DiskFull``: a user's problem with a clear remedy, never a traceback.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from batchgen.errors import DiskFull, is_disk_full


class HasRoom(Protocol):
    @property
    def path(self) -> Path: ...

    # Called when a write found the disk full; True when it made room (try once more).
    on_full: Callable[[], bool] | None


P = ParamSpec("P")
T = TypeVar("T")
J = TypeVar("J", bound=HasRoom)


def needs_room(
    method: Callable[Concatenate[J, P], T],
) -> Callable[Concatenate[J, P], T]:
    """Mark a journal method that writes: a full disk asks ``on_full`` for room and tries
    once more, then raises ``DiskFull``."""

    @functools.wraps(method)
    def wrapper(self: J, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.OperationalError as exc:
            if not is_disk_full(exc):
                raise
            if self.on_full is None or not self.on_full():
                raise full(self.path) from None
        try:
            return method(self, *args, **kwargs)
        except sqlite3.OperationalError as exc:
            if is_disk_full(exc):
                raise full(self.path) from None
            raise

    return wrapper


def full(journal: Path) -> DiskFull:
    return DiskFull(f"the disk of {journal.parent} is full: the journal cannot record more")
