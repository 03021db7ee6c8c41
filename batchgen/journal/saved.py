"""What the journal says is saved: the files of every DOWNLOADED job of the manifest, as
``mark_downloaded`` recorded them (name, size, sha256), streamed a chunk at a time.

``outputs/saved.py`` checks them against the disk (a run's repair, ``batchgen status``). Only
the three columns it needs are read: parsing each job's spec would cost more than the
``stat`` each file gets (bench/outputs.py measures both).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class SavedFile:
    job_id: str
    name: str  # relative to the output folder, as the index's file_name
    bytes: int | None
    sha256: str | None


def saved_files(conn: sqlite3.Connection, chunk: int = 5000) -> Iterator[list[SavedFile]]:
    """The saved files, in FIFO order of their jobs, ``chunk`` jobs per list."""
    last = 0
    sql = (
        "SELECT seq, job_id, files FROM jobs WHERE state = 'DOWNLOADED' AND in_manifest = 1"
        " AND seq > ? ORDER BY seq LIMIT ?"
    )
    while True:
        rows = conn.execute(sql, (last, chunk)).fetchall()
        out: list[SavedFile] = []
        for (_, job_id, _), files in zip(rows, _parse([r[2] for r in rows]), strict=True):
            out.extend(_files(job_id, files))
        if out:
            yield out
        if len(rows) < chunk:
            return
        last = rows[-1][0]


def _parse(texts: list[str | None]) -> list[Any]:
    """Each row's files as parsed JSON: one parse for the chunk (a third of the time of one a
    row), one a row when a row is not JSON."""
    try:
        parsed: list[Any] = json.loads("[" + ",".join(t or "null" for t in texts) + "]")
        if len(parsed) == len(texts):
            return parsed
    except ValueError:
        pass
    return [_loads(t) for t in texts]


def _loads(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _files(job_id: str, files: Any) -> Iterator[SavedFile]:
    for f in files if isinstance(files, list) else []:
        name = f.get("file_name") if isinstance(f, dict) else None
        if not isinstance(name, str):
            continue
        size, sha = f.get("bytes"), f.get("sha256")
        yield SavedFile(
            job_id,
            name,
            size if isinstance(size, int) else None,
            sha if isinstance(sha, str) else None,
        )
