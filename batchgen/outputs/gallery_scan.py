"""Reading a JSONL index for the gallery in one streaming pass, from any byte offset.

The gallery never holds an index in memory: it reads complete lines from a byte offset (so a
refresh reads only what was appended since), and keeps 24 bytes per row (:class:`Keys`: a
64-bit hash of the row's file name, one of its job id, and the line's offset). That is enough
to find the rows a later row for the same file supersedes (a crash between the index append
and the journal commit downloads again and appends the same rows) and to count distinct jobs,
at 24 MB for a million rows instead of a dict of every file name.

A line still being appended (a run is writing the folder) or torn by a crash has no newline
yet: it is left for the next read. A torn line that was followed by more rows is not JSON and
is skipped, as :func:`batchgen.outputs.index.read_rows` does.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Self

from batchgen.outputs.scan import parse_row

_BLOCK = 1 << 16


def hash64(text: str) -> int:
    """A stable 64-bit hash (Python's ``hash`` of a str changes from one process to the next)."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def complete_end(f: BinaryIO) -> int:
    """The size of the open file up to and including its last newline."""
    pos = os.fstat(f.fileno()).st_size
    while pos > 0:
        step = min(_BLOCK, pos)
        f.seek(pos - step)
        found = f.read(step).rfind(b"\n")
        if found >= 0:
            return pos - step + found + 1
        pos -= step
    return 0


def lines(f: BinaryIO, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line) for every line in ``[start, end)``; ``end`` must follow a newline, so
    no line read here runs past it even while the file grows."""
    f.seek(start)
    pos = start
    while pos < end:
        raw = f.readline()
        if not raw:
            return  # the file was truncated under us: what is gone is gone
        yield pos, raw
        pos += len(raw)


class Rows:
    """Fixed-width rows of 64-bit numbers in one ``array('Q')``, ``WIDTH`` a row, written and
    read back as raw bytes (what the gallery keeps beside its chunks for a refresh)."""

    WIDTH = 1

    def __init__(self, data: array[int] | None = None) -> None:
        self.data: array[int] = data if data is not None else array("Q")

    def __len__(self) -> int:
        return len(self.data) // self.WIDTH

    def head(self, rows: int) -> Self:
        return type(self)(self.data[: rows * self.WIDTH])

    def write(self, path: Path) -> None:
        """Write atomically, without a copy in memory."""
        tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
        with tmp.open("wb") as f:
            self.data.tofile(f)
        os.replace(tmp, path)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """The whole rows of ``data`` (a row cut short by a kill is left out)."""
        a = array("Q")
        a.frombytes(data[: len(data) - len(data) % (a.itemsize * cls.WIDTH)])
        return cls(a)


class Keys(Rows):
    """Per row, in order: hash(key), hash(job id), line offset."""

    WIDTH = 3

    def add(self, key: str, job: str, offset: int) -> None:
        self.data.extend((hash64(key), hash64(job), offset))

    def _sorted(self, column: int) -> list[int]:
        # ~56 bytes a row (a list slot and a 64-bit int object) while it lives: 56 MB for a
        # million rows, once at the end of a build. A set of them would take more.
        return sorted(itertools.islice(self.data, column, None, self.WIDTH))

    def distinct_jobs(self) -> int:
        jobs = self._sorted(1)
        return sum(1 for a, b in itertools.pairwise(jobs) if a != b) + bool(jobs)

    def repeated(self) -> set[int]:
        """Hashes of keys that occur more than once (almost always none)."""
        return {a for a, b in itertools.pairwise(self._sorted(0)) if a == b}

    def superseded(self, f: BinaryIO, key: str) -> set[int]:
        """Offsets of rows whose key a later row repeats: the later row is the truth.

        Hashes only nominate candidates; their lines are read again and compared by the key
        itself, so a hash collision never drops a row."""
        twice = self.repeated()
        if not twice:
            return set()
        w = self.WIDTH
        offsets = [self.data[i + 2] for i in range(0, len(self.data), w) if self.data[i] in twice]
        last: dict[str, int] = {}
        seen: list[tuple[str, int]] = []
        for off in sorted(offsets):
            f.seek(off)
            row = parse_row(f.readline(), key)
            if row is not None:
                last[row[key]] = off
                seen.append((row[key], off))
        return {off for name, off in seen if last[name] != off}
