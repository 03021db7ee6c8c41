"""Whether the images the journal says are saved are still there, whole (docs/outputs.md,
Repair).

The journal records each downloaded image's name, size and sha256 (``mark_downloaded``;
``journal/saved.py`` reads them back). Two checks compare them with the disk:

* the cheap one, every run and ``batchgen status``: one ``stat`` per file, which finds a file
  deleted, replaced by something other than a regular file, or of another size (a truncated
  copy, junk written over it);
* ``--verify``: the file's sha256 as well, which also finds a change that kept the size.

A run repairs what either finds (``running/recovery.py``): the broken files and their index
rows go (:func:`drop_broken`), and the jobs are fetched again from their results.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchgen.journal.query import JournalReader
from batchgen.journal.saved import SavedFile
from batchgen.outputs.checks import sha256_file
from batchgen.outputs.index import METADATA, read_rows, rewrite_rows

# Files hashed at once by --verify (hashlib releases the GIL on large buffers).
VERIFY_THREADS = min(8, os.cpu_count() or 1)


@dataclass
class SavedCheck:
    """What a check found: files looked at, and the broken ones by kind."""

    checked: int = 0
    missing: int = 0  # no regular file at the name
    resized: int = 0  # another size than the one recorded
    changed: int = 0  # the size recorded, another sha256 (--verify only)
    broken: list[SavedFile] = field(default_factory=list)  # kept when asked (a run)

    @property
    def count(self) -> int:
        return self.missing + self.resized + self.changed

    def add(self, found: Iterable[tuple[SavedFile, str | None]], *, keep: bool) -> None:
        for f, problem in found:
            self.checked += 1
            if problem is None:
                continue
            setattr(self, problem, getattr(self, problem) + 1)
            if keep:
                self.broken.append(f)


def problem(root: str, f: SavedFile, verify: bool) -> str | None:
    """``missing``, ``resized`` or ``changed`` for a broken file, None for a whole one."""
    path = os.path.join(root, f.name)
    try:
        st = os.stat(path)
    except OSError:  # gone, or not reachable: either way not an image the folder holds
        return "missing"
    if not stat.S_ISREG(st.st_mode):
        return "missing"
    if f.bytes is not None and st.st_size != f.bytes:
        return "resized"
    if verify and f.sha256 is not None:
        try:
            if sha256_file(path)[1] != f.sha256:
                return "changed"
        except OSError:
            return "missing"
    return None


def _check(
    root: str, files: list[SavedFile], verify: bool, pool: ThreadPoolExecutor | None
) -> list[tuple[SavedFile, str | None]]:
    if pool is None:
        return [(f, problem(root, f, verify)) for f in files]
    return list(zip(files, pool.map(lambda f: problem(root, f, verify), files), strict=True))


def check_saved(reader: JournalReader, out_dir: Path) -> SavedCheck:
    """The cheap check of every saved file, counted (``batchgen status``: read-only)."""
    result, root = SavedCheck(), str(out_dir)
    for files in reader.saved_files():
        result.add(_check(root, files, False, None), keep=False)
    return result


async def find_broken(reader: JournalReader, out_dir: Path, *, verify: bool) -> SavedCheck:
    """Every saved file checked (``verify``: hashed too), the broken ones kept. The journal is
    read on the caller's thread, the disk in a worker thread, a chunk at a time, so a run's
    event loop (its Ctrl-C) stays live through a long ``--verify``."""
    result, root = SavedCheck(), str(out_dir)
    pool = ThreadPoolExecutor(VERIFY_THREADS) if verify else None
    try:
        for files in reader.saved_files():
            found = await asyncio.to_thread(_check, root, files, verify, pool)
            result.add(found, keep=True)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return result


def drop_broken(out_dir: Path, names: set[str]) -> int:
    """Remove the broken files ``names`` (each only inside the folder) and every index row
    naming one, the index rewritten atomically (``rewrite_rows``), so it keeps exactly one row
    per image once they are saved again. Returns the rows dropped."""
    out = Path(out_dir)
    root = out.resolve()
    for name in names:
        path = (out / name).resolve()
        if path.is_relative_to(root) and (path.is_file() or path.is_symlink()):
            path.unlink(missing_ok=True)
    dropped = 0

    def kept() -> Iterator[dict[str, Any]]:
        nonlocal dropped
        for row in read_rows(out / METADATA):
            if row.get("file_name") in names:
                dropped += 1
            else:
                yield row

    if (out / METADATA).exists():
        rewrite_rows(out / METADATA, kept())
    return dropped
