"""Stale jobs: those a re-plan found the manifest no longer names (``in_manifest = 0``).

An edited prompt is a new job (job ids are content-derived), and the old one stays in the
journal, flagged: never claimed again, its images kept in the folder. Those images are *stale*:
``batchgen run`` says how many there are, and exports and the gallery leave them out unless
asked to keep them (``--include-stale``). The index rows themselves do not change (a row is
written once, when its image lands); readers ask the journal, read-only, which jobs are stale.
A folder without its journal (a copied dataset) has none.

:class:`StaleJobs` holds 8 bytes per stale job past ``SET_MAX``: the first 64 bits of each job
id (a sha256) in a sorted array, read from the journal in order (a binary search a row, about
2 µs, beside an export's 40 µs a row: bench/outputs.py). Two job ids sharing 64 bits is a
chance of about one in 10^7 with a million stale jobs among a million images; it would leave
one image out.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from pathlib import Path

from batchgen.errors import JournalError
from batchgen.journal.opening import connect_readonly
from batchgen.planning.jobs import JobState

# Up to this many stale jobs (about 6 MB) are also held as a set, for speed.
SET_MAX = 100_000
# Every state, so that the query reads the (state, in_manifest) index instead of the table.
_STATES = tuple(s.value for s in JobState)


def _prefix(job_id: str) -> int | None:
    try:
        return int(job_id[:16], 16) if len(job_id) >= 16 else None
    except ValueError:
        return None


class StaleJobs:
    """The stale job ids of a folder; ``job_id in stale`` for any text (False when not one)."""

    def __init__(self, job_ids: Iterable[str] = (), *, ordered: bool = False) -> None:
        """``ordered``: ``job_ids`` come sorted (as the journal gives them), so they are read
        straight into the array, never held as Python objects."""
        keys = (k for k in map(_prefix, job_ids) if k is not None)
        self._keys = array("Q", keys if ordered else sorted(set(keys)))
        if ordered and any(a > b for a, b in zip(self._keys, self._keys[1:], strict=False)):
            self._keys = array("Q", sorted(set(self._keys)))  # not sorted after all
        # A few (the usual case): a set of them too, a hash look-up a row instead of a search.
        self._few = frozenset(self._keys) if len(self._keys) <= SET_MAX else None

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, job_id: object) -> bool:
        if not self._keys or not isinstance(job_id, str):
            return False
        key = _prefix(job_id)
        if key is None:
            return False
        if self._few is not None:
            return key in self._few
        i = bisect_left(self._keys, key)
        return i < len(self._keys) and self._keys[i] == key

    def fingerprint(self) -> str:
        """Which jobs are stale, in 16 hex digits: a gallery built for another set is rebuilt."""
        return hashlib.sha256(self._keys.tobytes()).hexdigest()[:16]


def stale_jobs(conn: sqlite3.Connection) -> StaleJobs:
    marks = ", ".join("?" * len(_STATES))
    sql = f"SELECT job_id FROM jobs WHERE state IN ({marks}) AND in_manifest = 0 ORDER BY job_id"
    return StaleJobs((row[0].lower() for row in conn.execute(sql, _STATES)), ordered=True)


def stale_images(conn: sqlite3.Connection) -> int:
    """The images of the stale jobs that were downloaded (what the folder keeps of them)."""
    n = 0
    for (files,) in conn.execute(
        "SELECT files FROM jobs WHERE state = 'DOWNLOADED' AND in_manifest = 0"
    ):
        found = json.loads(files) if isinstance(files, str) else None
        n += len(found) if isinstance(found, list) else 0
    return n


def folder_stale(journal: Path) -> StaleJobs:
    """The stale jobs of the journal at ``journal``, read-only (safe while a run writes it);
    none when there is no journal or it cannot be read."""
    if not journal.is_file():
        return StaleJobs()
    try:
        conn = connect_readonly(journal)
    except JournalError:
        return StaleJobs()
    try:
        return stale_jobs(conn)
    except sqlite3.Error:
        return StaleJobs()
    finally:
        conn.close()
