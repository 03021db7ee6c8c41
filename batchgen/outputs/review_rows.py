"""The review page's view of ``metadata.jsonl``: a compact array over the index file, read
incrementally, and windows of rows parsed only when asked for.

The server never holds the rows as Python dicts. Per row it keeps 17 bytes in flat arrays: the
line's byte offset, a 64-bit hash of its file name (to tell marked rows from the others), and
a flag byte (``blank``); a row with a ``phash`` adds 16 bytes (its number and hash). That is
about 17 MB at a million rows. A window of rows (what the page shows next) is read back from
the file by its offsets and parsed then. While reading, only rows that name ``blank`` or
``phash`` are parsed whole (~7 us each); the others give their file name from the line's start.

:meth:`RowIndex.update` reads only what was appended since the last call, up to the last
complete line (:mod:`gallery_scan`), so the page follows a run writing the folder; the server
calls it in a worker thread, a block at a time, and answers requests between blocks. A row
written twice for the same file (a crash re-download) shows twice: marks are by file name, so
both show the same mark.
"""

from __future__ import annotations

import os
import re
import threading
from array import array
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from batchgen.outputs import gallery_scan as scan
from batchgen.outputs.index import METADATA
from batchgen.outputs.marks import Mark
from batchgen.outputs.neardup import MAX_DISTANCE
from batchgen.outputs.scan import _key, parse_row

BLANK = 1
HAS_BLANK = 2
HAS_PHASH = 4
BLOCK_ROWS = 20_000
NEAR_DISTANCE = MAX_DISTANCE  # one distance for the gallery, the page and mark (neardup.py)
FILTERS = ("all", "unmarked", "picked", "rejected", "blank", "near")

_PHASH = re.compile("[0-9a-fA-F]{16}")

Groups = Callable[[Sequence[Any], int], list[list[int]]]


def near_duplicates() -> Groups | None:
    """``neardup.near_duplicate_groups``, or None where this batchgen has no such module (the
    page then hides the filter)."""
    try:
        from batchgen.outputs.neardup import near_duplicate_groups  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    found: Groups = near_duplicate_groups
    return found


def _quality(raw: bytes) -> tuple[int, int | None]:
    """The flags and the perceptual hash of a row, from its own ``blank`` and ``phash`` (a
    row that names neither is not parsed: most of a folder before the quality flags)."""
    if b'"blank"' not in raw and b'"phash"' not in raw:
        return 0, None
    row = parse_row(raw) or {}
    blank = row.get("blank")
    flag = (HAS_BLANK | (BLANK if blank is True else 0)) if isinstance(blank, bool) else 0
    phash = row.get("phash")
    # a blank image is no one's near duplicate (they all hash alike): as in the gallery
    if isinstance(phash, str) and _PHASH.fullmatch(phash) and row.get("blank") is not True:
        return flag | HAS_PHASH, int(phash, 16)
    return flag, None


class RowIndex:
    """The rows of one folder's index, in file order (row ``i`` is the ``i``-th line read)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = out / METADATA
        self.lock = threading.Lock()  # the arrays, between the reader and the requests
        self._reading = threading.Lock()
        self._reset(None)

    def _reset(self, ident: tuple[int, int] | None) -> None:
        self.offsets: array[int] = array("Q")
        self.names: array[int] = array("Q")
        self.flags = bytearray()
        self.phash_rows: array[int] = array("Q")  # rows with a phash, and their hashes
        self.phashes: array[int] = array("Q")
        self.end = 0  # bytes read
        self.ident = ident
        self.seen = 0  # every flag some row carries (HAS_BLANK, HAS_PHASH)
        self._cache: dict[tuple[Any, ...], array[int]] = {}

    def __len__(self) -> int:
        return len(self.offsets)

    # ---- reading the file -------------------------------------------------------------

    def update(self, max_rows: int = BLOCK_ROWS) -> bool:
        """Read up to ``max_rows`` rows appended since the last call; True when there may be
        more to read now. An index replaced (``batchgen index``) or shrunk is read again.
        One reader at a time (two would read the same bytes twice)."""
        with self._reading:
            return self._update(max_rows)

    def _update(self, max_rows: int) -> bool:
        try:
            f = self.path.open("rb")
        except FileNotFoundError:
            return False
        with f:
            st = os.fstat(f.fileno())
            ident = (st.st_dev, st.st_ino)
            if ident != self.ident or st.st_size < self.end:
                with self.lock:
                    self._reset(ident)
            end = scan.complete_end(f)
            offsets: list[int] = []
            names: list[int] = []
            flags = bytearray()
            near: list[tuple[int, int]] = []
            pos = self.end
            seen = 0
            for off, raw in scan.lines(f, self.end, end):
                pos = off + len(raw)
                name = _key(raw)
                if name is None:
                    continue
                flag, phash = _quality(raw)
                if phash is not None:
                    near.append((len(self.offsets) + len(offsets), phash))
                offsets.append(off)
                names.append(scan.hash64(name.decode("utf-8", "surrogatepass")))
                flags.append(flag)
                seen |= flag
                if len(offsets) >= max_rows:
                    break
        with self.lock:
            self.offsets.extend(offsets)
            self.names.extend(names)
            self.flags.extend(flags)
            for row, h in near:
                self.phash_rows.append(row)
                self.phashes.append(h)
            self.end = pos
            self.seen |= seen
            if offsets:
                self._cache.clear()
        return pos < end

    def rows(self, positions: Sequence[int]) -> list[dict[str, Any]]:
        """The parsed rows at ``positions`` (row numbers), each with its number as ``i``."""
        found: list[dict[str, Any]] = []
        with self.path.open("rb") as f:
            for i in positions:
                if i >= len(self.offsets):
                    continue  # the index was replaced meanwhile: read again next time
                f.seek(self.offsets[i])
                row = parse_row(f.readline())
                if row is not None:
                    found.append({**row, "i": i})
        return found

    # ---- filters ----------------------------------------------------------------------

    def select(
        self, which: str, marks: Mapping[str, Mark], groups: Groups | None = None
    ) -> array[int] | None:
        """The row numbers a filter shows, in order; None for ``all`` (every row)."""
        if which == "all":
            return None
        with self.lock:
            n = len(self.offsets)
            key = (which, n, hash(frozenset(marks.items())) if which != "blank" else 0)
            found = self._cache.get(key)
            if found is None:
                found = self._cache[key] = self._select(which, marks, groups)
            return found

    def _select(self, which: str, marks: Mapping[str, Mark], groups: Groups | None) -> array[int]:
        if which == "blank":
            return array("Q", (i for i, b in enumerate(self.flags) if b & BLANK))
        if which == "near":
            return self._near(groups)
        want = {scan.hash64(name): str(m) for name, m in marks.items()}
        if which == "unmarked":
            return array("Q", (i for i, h in enumerate(self.names) if h not in want))
        return array("Q", (i for i, h in enumerate(self.names) if want.get(h) == which))

    def _near(self, groups: Groups | None) -> array[int]:
        """Rows in groups of near duplicates, a group after another."""
        if groups is None or not self.phashes:
            return array("Q")
        hashes = list(self.phashes)
        try:
            found = groups([f"{h:016x}" for h in hashes], NEAR_DISTANCE)
        except TypeError:  # a module that takes the hashes as numbers
            found = groups(hashes, NEAR_DISTANCE)
        return array("Q", (self.phash_rows[j] for g in found if len(g) > 1 for j in sorted(g)))
