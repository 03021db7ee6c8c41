"""The static gallery of an output folder: ``index.html``, ``.gallery/`` and ``.thumbs/``.

It opens from ``file://`` with no server and no network, and its first screen costs the same
at a million images as at a dozen: ``index.html`` is small (header, filters, the script tag),
and the rows live in script chunks under ``.gallery/`` (see :mod:`gallery_data`) that the page
loads as it needs them. The build streams ``metadata.jsonl`` chunk by chunk, so its memory
does not grow with the rows beyond 24 bytes a row (:mod:`gallery_scan`).

:func:`refresh_gallery` is the cheap version for a folder a run is still writing: it reads
only the bytes appended since the last build (resuming at the last chunk boundary, whose
totals ``.gallery/state.json`` keeps), rewrites that chunk, appends new ones and rewrites the
small files. Neither takes the run's folder lock: they read the index like any reader (a line
still being written is left for next time) and replace each file they write atomically.

Thumbnails are small JPEGs named by the image's sha256 (``.thumbs/ab/ab12….jpg``): an
unchanged image keeps its thumbnail across rebuilds, and a replaced one gets a new name, so a
browser never shows a stale cached thumbnail. Both folders are hidden so ImageFolder skips them.
A run makes each thumbnail as its image lands (:mod:`thumbs`, in a worker process), so the
build makes only those still missing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from batchgen._version import __version__
from batchgen.errors import JournalError
from batchgen.journal.stale import StaleJobs, folder_stale
from batchgen.journal.writer import JOURNAL_NAME, Journal
from batchgen.outputs import gallery_scan as scan
from batchgen.outputs.gallery_data import (
    CHUNK_ROWS,
    DATA_DIR,
    Totals,
    chunk_name,
    record,
    summary,
    write_script,
    write_text_atomic,
)
from batchgen.outputs.gallery_dups import HASHES, Hashes, write_dups
from batchgen.outputs.gallery_page import PageFacts, Spend, render_page, write_failures
from batchgen.outputs.index import METADATA
from batchgen.outputs.marks import Mark, read_marks
from batchgen.outputs.scan import parse_row
from batchgen.outputs.thumbs import THUMBS as THUMBS  # re-exported: where the page looks
from batchgen.outputs.thumbs import make_thumbnail, thumb_name

GALLERY = "index.html"
SCRIPT = f"{DATA_DIR}/gallery.js"
STATE = f"{DATA_DIR}/state.json"
KEYS = f"{DATA_DIR}/keys.bin"
STATE_FORMAT = 2  # 2: records carry replaces, summaries a take key
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class GalleryReport:
    path: Path
    images: int
    thumbnails_made: int
    missing: int  # index rows whose file is not on disk
    failures: int
    rows_read: int = 0  # index rows read by this call (a refresh reads only the new ones)
    refreshed: bool = False  # False: a full build (asked for, or a refresh had to)
    stale: int = 0  # images of prompts no longer in the manifest, left out


def journal_spend(out_dir: Path) -> Spend | None:
    """(spent, rehearsal, billed) as the journal counts them: the one estimate the run
    summary, ``batchgen status`` and ``--max-cost`` use, and fal's bill as `batchgen
    reconcile` last recorded it (as status shows it). None for a folder without its journal."""
    path = out_dir / JOURNAL_NAME
    if not path.is_file():
        return None
    try:
        with Journal.open_readonly(path) as reader, reader.snapshot():
            t = reader.tallies()
            billed = reader.billed()
    except JournalError:
        return None
    return Spend(t.spent, t.rehearsal, billed)


# ---- one chunk of rows ---------------------------------------------------------------------


def _chunk(
    out_dir: Path,
    k: int,
    rows: Sequence[Mapping[str, Any]],
    totals: Totals,
    pool: ThreadPoolExecutor,
    marks: Mapping[str, Mark],
) -> int:
    """Thumbnails, totals and both script files of chunk ``k``; returns thumbnails made. A
    marked image's record ends with its mark (the card's badge; read-only here)."""
    todo: dict[str, Path] = {}
    present: list[bool] = []
    thumbs: list[str | None] = []
    # os.path on strings, not Path: pathlib interns every name it parses, and CPython's table
    # of interned strings grows with a million distinct file names and never shrinks.
    base = str(out_dir)
    for r in rows:
        sha, src = str(r.get("sha256") or ""), os.path.join(base, str(r["file_name"]))
        here = os.path.isfile(src)
        present.append(here)
        ok = here and len(sha) == 64 and _HEX.issuperset(sha)
        thumbs.append(sha if ok else None)
        if ok and sha not in todo and not os.path.isfile(os.path.join(base, thumb_name(sha))):
            todo[sha] = Path(src)
    # In threads: Pillow decodes without the GIL.
    made = pool.map(
        lambda kv: (kv[0], make_thumbnail(kv[1], out_dir / thumb_name(kv[0]))), todo.items()
    )
    failed = {sha for sha, ok in made if not ok}
    records = [record(r, None if t in failed else t) for r, t in zip(rows, thumbs, strict=True)]
    for rec in records:
        if rec[0] in marks:
            rec.append(str(marks[rec[0]]))
    for r, rec, here in zip(rows, records, present, strict=True):
        totals.add(r, rec, missing=not here)
    write_script(out_dir, chunk_name("r", k), "batchgenGallery.records", k, records)
    summary_ = summary(rows, records)
    write_script(out_dir, chunk_name("s", k), "batchgenGallery.summary", k, summary_)
    return len(todo) - len(failed)


@dataclass
class _Resume:
    """Where a pass starts: a byte offset at a chunk boundary and the totals before it."""

    offset: int
    totals: Totals
    keys: scan.Keys
    hashes: Hashes  # each row's perceptual hash (gallery_dups), like keys
    grouped: int = 0  # rows the dups.js on disk grouped (a refresh's, from phash.bin)


@dataclass
class _Pass:
    end: int  # bytes of the index read
    totals: Totals
    keys: scan.Keys
    hashes: Hashes
    resume: _Resume  # the start of the last chunk, where the next refresh begins (its keys
    # are the first ones of ``keys``: a refresh reads them back from keys.bin)
    made: int
    rows_read: int
    metadata_id: list[int]


def _read(
    out_dir: Path,
    start: _Resume,
    skip: set[int],
    pool: ThreadPoolExecutor,
    chunk_rows: int,
    stale: StaleJobs,
    marks: Mapping[str, Mark],
) -> tuple[_Pass, set[int]]:
    """Stream the index from ``start``, writing chunks; also the offsets a later row for the
    same file supersedes (when not empty, the caller reads again, skipping them). Rows of
    ``stale`` jobs are counted and left out, keys included (a stale image is not a card)."""
    totals = Totals.from_json(start.totals.to_json())
    keys = scan.Keys(start.keys.data[:])
    hashes = start.hashes.copy()
    resume = start
    made = read = 0
    batch: list[dict[str, Any]] = []
    try:
        f = (out_dir / METADATA).open("rb")
    except FileNotFoundError:
        return _Pass(0, totals, keys, hashes, resume, 0, 0, []), set()
    with f:
        st = os.fstat(f.fileno())
        end = scan.complete_end(f)
        for off, raw in scan.lines(f, start.offset, end):
            row = None if off in skip else parse_row(raw, "file_name")
            if row is None:
                continue
            if stale and row.get("job_id") in stale:
                totals.stale += 1
                continue
            batch.append(row)
            keys.add(row["file_name"], str(row.get("job_id")), off)
            hashes.add(row)
            if len(batch) == chunk_rows:
                made += _chunk(out_dir, totals.rows // chunk_rows, batch, totals, pool, marks)
                read += len(batch)
                batch = []
                resume = _Resume(off + len(raw), Totals.from_json(totals.to_json()), keys, hashes)
        if batch:
            made += _chunk(out_dir, totals.rows // chunk_rows, batch, totals, pool, marks)
            read += len(batch)
        again = keys.superseded(f, "file_name")
    return _Pass(end, totals, keys, hashes, resume, made, read, [st.st_dev, st.st_ino]), again


# ---- the state a refresh resumes from -------------------------------------------------------


def _save_state(out_dir: Path, p: _Pass, chunk_rows: int, stale: str) -> None:
    (out_dir / DATA_DIR).mkdir(parents=True, exist_ok=True)
    state = {
        "format": STATE_FORMAT,
        "batchgen_version": __version__,
        "chunk_rows": chunk_rows,
        "stale": stale,
        "metadata": p.metadata_id,
        "end": p.end,
        "resume": {"offset": p.resume.offset, "totals": p.resume.totals.to_json()},
    }
    p.keys.write(out_dir / KEYS)
    p.hashes.write(out_dir / HASHES)
    write_text_atomic(out_dir / STATE, json.dumps(state))  # last: it names the files above


def _load_resume(out_dir: Path, chunk_rows: int, stale: str) -> _Resume | None:
    """The last build's resume point, or None when a full build is needed: no state, another
    format or chunk size, another set of stale jobs (a run re-planned), or an index that was
    replaced (``batchgen index``) or shrank."""
    try:
        state = json.loads((out_dir / STATE).read_text(encoding="utf-8"))
        keys = scan.Keys.from_bytes((out_dir / KEYS).read_bytes())
        hashes = Hashes.from_bytes((out_dir / HASHES).read_bytes())
        st = (out_dir / METADATA).stat()
        same = (
            state["format"] == STATE_FORMAT
            and state["batchgen_version"] == __version__
            and state["chunk_rows"] == chunk_rows
            and state["stale"] == stale
            and state["metadata"] == [st.st_dev, st.st_ino]
            and st.st_size >= state["end"]
        )
        totals = Totals.from_json(state["resume"]["totals"])
        offset = int(state["resume"]["offset"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not same or len(keys) < totals.rows or len(hashes) < totals.rows:
        return None
    grouped = len(hashes)  # written with the dups.js of that build, just before state.json
    return _Resume(offset, totals, keys.head(totals.rows), hashes.head(totals.rows), grouped)


# ---- building ----------------------------------------------------------------------------


def build_gallery(
    out_dir: Path,
    *,
    title: str | None = None,
    workers: int | None = None,
    chunk_rows: int = CHUNK_ROWS,
    include_stale: bool = False,
) -> GalleryReport:
    """(Re)write the whole gallery from the index, making any missing thumbnails. Stale
    images (``journal/stale.py``) are left out unless ``include_stale``."""
    stale, mark = _stale(out_dir, include_stale)
    return _build(out_dir, None, title, workers, chunk_rows, stale, mark)


def refresh_gallery(
    out_dir: Path,
    *,
    title: str | None = None,
    workers: int | None = None,
    chunk_rows: int = CHUNK_ROWS,
    include_stale: bool = False,
) -> GalleryReport:
    """Bring the gallery up to date with rows appended since the last build, reading only
    those (and the last, partial chunk's); a full build when there is nothing to resume
    from or a new row replaces an older one's file. Safe while a run writes the folder."""
    stale, mark = _stale(out_dir, include_stale)
    resume = _load_resume(out_dir, chunk_rows, mark)
    return _build(out_dir, resume, title, workers, chunk_rows, stale, mark)


def _stale(out_dir: Path, include: bool) -> tuple[StaleJobs, str]:
    """The jobs to leave out, and what the state file says of them (a refresh resumes only a
    build that left out the same ones)."""
    if include:
        return StaleJobs(), "included"
    stale = folder_stale(out_dir / JOURNAL_NAME)
    return stale, stale.fingerprint()


def _build(
    out_dir: Path,
    resume: _Resume | None,
    title: str | None,
    workers: int | None,
    chunk_rows: int,
    stale: StaleJobs,
    mark: str,
) -> GalleryReport:
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, not {chunk_rows}")
    fresh = _Resume(0, Totals(), scan.Keys(), Hashes())
    marks = read_marks(out_dir)  # as they are now: a refresh leaves earlier chunks' badges
    with ThreadPoolExecutor(max_workers=max(1, workers or os.cpu_count() or 2)) as pool:
        p, skip = _read(out_dir, resume or fresh, set(), pool, chunk_rows, stale, marks)
        if skip:  # a file written twice keeps its last row: read again, leaving out the rest
            again, _ = _read(out_dir, fresh, skip, pool, chunk_rows, stale, marks)
            again.made += p.made
            p, resume = again, None
    failures, failure_chunks = write_failures(out_dir, chunk_rows)
    groups, grouped = write_dups(out_dir, p.hashes, resume.grouped if resume else 0)
    _save_state(out_dir, p, chunk_rows, mark)
    script = resources.files("batchgen.outputs.gallery_assets").joinpath("gallery.js")
    write_text_atomic(out_dir / SCRIPT, script.read_text("utf-8"))
    facts = PageFacts(
        title=title or out_dir.resolve().name,
        totals=p.totals,
        jobs=p.keys.distinct_jobs(),
        failures=failures,
        failure_chunks=failure_chunks,
        spend=journal_spend(out_dir),
        chunk_rows=chunk_rows,
        script=SCRIPT,
        groups=groups,
        grouped=grouped,
    )
    dest = out_dir / GALLERY
    write_text_atomic(dest, render_page(facts))  # last: the page names the files above
    _remove_stale(out_dir, -(-p.totals.rows // chunk_rows), failure_chunks)
    return GalleryReport(
        dest,
        p.totals.rows,
        p.made,
        p.totals.missing,
        failures,
        p.rows_read,
        resume is not None,
        p.totals.stale,
    )


def _remove_stale(out_dir: Path, chunks: int, failure_chunks: int) -> None:
    """Chunks past the end, left by a larger earlier build (the page never asks for them)."""
    limit = {"r": chunks, "s": chunks, "f": failure_chunks}
    try:
        names = os.listdir(out_dir / DATA_DIR)
    except FileNotFoundError:
        return
    for name in names:
        kind, _, rest = name.partition("-")
        stale = rest.endswith(".js") and rest[:-3].isdigit() and int(rest[:-3]) >= limit[kind]
        if kind in limit and stale:
            (out_dir / DATA_DIR / name).unlink(missing_ok=True)
