"""Reading ``metadata.jsonl`` in constant memory: :func:`iter_index`.

``read_index`` gives each file's last row by keeping every row in a dict: at a million images
that is gigabytes. :func:`iter_index` gives the same rows in the same order (a file's last row,
at the place of its first) while holding only what it must:

1. A first pass reads only each row's file name (the start of the line, where batchgen writes
   it; any other line is parsed whole) into a Bloom filter. A name the filter says it has seen
   is a *candidate*, kept exactly with the byte offset of its last valid row. A name written
   twice is always a candidate (its second row hits the filter); a false positive is a name
   seen once, which costs one dict entry and nothing else.
2. The second pass parses every row; a candidate's first row is replaced by the row at its last
   offset, and its later rows are skipped.

Rows are written twice only when an image is made again where one already lay (a rehearsal's
request sent again after a crash), and a run's end compacts them away (:func:`compact_index`),
so the candidates are few, and memory is the filter (at most ``MAX_FILTER_BYTES``) plus them.
Both passes stop where the first one ended, so rows a run appends meanwhile are not
half-counted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from batchgen.outputs.index import METADATA, rewrite_rows

# 16 filter bits per row (5 probes: under 0.1% false positives) for rows of at least 300
# bytes (a real row is 700 or more), up to 16 MiB: 8 million rows before false positives
# climb, and then only the candidate dict grows.
BITS_PER_ROW = 16
MIN_ROW_BYTES = 300
PROBES = 5
MAX_FILTER_BYTES = 16 << 20
_NAME = re.compile(rb'\{"file_name":"((?:[^"\\]|\\.)*)"')


class _Bloom:
    def __init__(self, expected: int) -> None:
        nbytes = min(MAX_FILTER_BYTES, max(1024, expected * BITS_PER_ROW // 8))
        self.bits = bytearray(nbytes)
        self.size = nbytes * 8

    def add(self, key: bytes) -> bool:
        """Add ``key``; True when it was (probably) there already."""
        digest = hashlib.blake2b(key, digest_size=16).digest()
        h1 = int.from_bytes(digest[:8], "little")
        h2 = int.from_bytes(digest[8:], "little") | 1
        seen = True
        bits, size = self.bits, self.size
        for i in range(PROBES):
            at = (h1 + i * h2) % size
            byte, mask = at >> 3, 1 << (at & 7)
            if not bits[byte] & mask:
                seen = False
                bits[byte] |= mask
        return seen


def parse_row(raw: bytes, key: str = "file_name") -> dict[str, Any] | None:
    """A line as a row (an object with a text ``key``), else None (a blank or torn line, or
    one that is not a row). With the default key, what ``read_index`` keeps."""
    if not raw.strip():
        return None
    try:
        row = json.loads(raw)
    except ValueError:
        return None
    return row if isinstance(row, dict) and isinstance(row.get(key), str) else None


def _key(raw: bytes) -> bytes | None:
    """The file name of a line as UTF-8, read from the line's start when it is written the way
    batchgen writes rows (no JSON parse), else from the parsed row. None: not a row."""
    m = _NAME.match(raw)
    if m is not None and b"\\" not in m.group(1):
        return m.group(1)
    row = parse_row(raw)
    return None if row is None else str(row["file_name"]).encode("utf-8", "surrogatepass")


def _lines(f: IO[bytes], end: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line) up to byte ``end``."""
    at = 0
    for raw in f:
        if at >= end:
            return
        yield at, raw
        at += len(raw)


def _candidates(f: IO[bytes], size: int) -> tuple[dict[bytes, int], int]:
    """Pass 1: the names that may occur more than once, each with its last valid row's offset,
    and where the pass ended."""
    bloom = _Bloom(size // MIN_ROW_BYTES + 1)
    last: dict[bytes, int] = {}
    end = 0
    for raw in f:
        at, end = end, end + len(raw)
        key = _key(raw)
        if key is None:
            continue
        if key in last or bloom.add(key):
            # A line that names the file but is torn must not stand in for its row.
            row = parse_row(raw)
            if row is not None and str(row["file_name"]).encode("utf-8", "surrogatepass") == key:
                last[key] = at
    return last, end


def iter_index(out_dir: Path) -> Iterator[dict[str, Any]]:
    """The index rows of ``out_dir`` as :func:`~batchgen.outputs.index.read_index` lists them
    (a file written twice: its last row, at its first row's place), in constant memory."""
    path = Path(out_dir) / METADATA
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return
    with f, path.open("rb") as lookup:
        candidates, end = _candidates(f, os.fstat(f.fileno()).st_size)
        f.seek(0)
        done: set[bytes] = set()
        for _, raw in _lines(f, end):
            row = parse_row(raw)
            if row is None:
                continue
            key = str(row["file_name"]).encode("utf-8", "surrogatepass")
            at = candidates.get(key)
            if at is not None:
                if key in done:
                    continue
                done.add(key)
                lookup.seek(at)
                row = parse_row(lookup.readline()) or row
            yield row


# Left in the folder before a row that may supersede an older one is appended (an image made
# again where one already lay), removed once the index holds one row per image again.
SUPERSEDING = ".metadata-superseding"


def mark_superseding(out_dir: Path) -> None:
    """Say that rows about to be appended may repeat a file name: :func:`compact_index` then
    leaves one row per image, even after a crash in between."""
    os.close(os.open(Path(out_dir) / SUPERSEDING, os.O_WRONLY | os.O_CREAT, 0o644))


def compact_index(out_dir: Path) -> bool:
    """When :func:`mark_superseding` was called: rewrite ``metadata.jsonl`` with each image's
    last row only (as readers take it), atomically, so ImageFolder loads one example per
    image. Run with no appends under way (a run's end). True when it rewrote the index."""
    mark = Path(out_dir) / SUPERSEDING
    if not mark.exists():
        return False
    rewrite_rows(Path(out_dir) / METADATA, iter_index(out_dir))
    mark.unlink(missing_ok=True)
    return True
