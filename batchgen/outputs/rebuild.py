"""``batchgen index --rebuild``: ``metadata.jsonl`` and ``failures.jsonl`` anew from the journal.

The journal is the source of truth; the index is a view of it that a crash, a hand edit or a
deleted file can spoil. This reads the journal (read-only, streamed: a million jobs never sit
in memory at once), turns each downloaded job into a :class:`CompletedJob` with the checksums
the downloader recorded, and hands them to :func:`rebuild_from_rows`, which hashes every
file, reports the missing, changed and invalid ones, and writes the new index as it goes.

What only the old index knows (fal's inference time, the download time) is looked up by file
name in a temporary SQLite table beside it (:class:`_OldIndex`): flat memory, where a dict of a
million old rows took gigabytes.

Jobs that completed on fal's side but are not downloaded yet are left out: they are not on
disk, and the next ``batchgen run`` fetches them and appends their rows.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchgen._version import __version__
from batchgen.errors import DownloadError, UsageError
from batchgen.journal.query import JournalReader
from batchgen.journal.schema import JobRow
from batchgen.journal.writer import JOURNAL_NAME, Journal, writer_pid
from batchgen.outputs.checks import inspect_quality, mime_of, sha256_file
from batchgen.outputs.download import Downloaded
from batchgen.outputs.index import (
    FAILURES,
    METADATA,
    Timestamp,
    answered_by_of,
    failure_row,
    index_row,
    input_value,
    read_rows,
    rewrite_rows,
)
from batchgen.planning.jobs import JobSpec, JobState
from batchgen.planning.paths import image_path, template_fields
from batchgen.planning.pricing import usage_of


def rebuild_index(out_dir: Path) -> RebuildReport:
    """Rewrite the index files of ``out_dir`` from its journal, verifying every image.

    Raises JournalError when there is no journal, and UsageError while a run is writing to
    the folder (its downloader appends to the index: a rewrite now could drop its rows).
    """
    path = Path(out_dir) / JOURNAL_NAME
    with Journal.open_readonly(path) as reader:
        pid = writer_pid(path)
        if pid is not None:
            raise UsageError(
                f"a batchgen run (pid {pid}) is writing to {out_dir}; rebuild the index after "
                "it ends"
            )
        with reader.snapshot():
            runs = reader.runs()
            sha = runs[-1].manifest_sha256 if runs else ""
            return rebuild_from_rows(
                Path(out_dir), _completed(reader), _failed(reader), manifest_sha256=sha
            )


def _completed(reader: JournalReader, chunk: int = 500) -> Iterator[CompletedJob]:
    batch: list[JobRow] = []
    for row in reader.iter_jobs(JobState.DOWNLOADED):
        batch.append(row)
        if len(batch) == chunk:
            yield from _with_times(reader, batch)
            batch = []
    yield from _with_times(reader, batch)


def _with_times(reader: JournalReader, rows: list[JobRow]) -> Iterator[CompletedJob]:
    # The jobs table keeps one timestamp per row; the audit trail has when each state began.
    ids = [r.job_id for r in rows]
    completed = reader.entered_at(ids, JobState.COMPLETED)
    for row in rows:
        files = row.files if isinstance(row.files, list) else []
        yield CompletedJob(
            spec=row.spec,
            num_images=len(files),
            request_id=row.request_id,
            submitted_at=row.submitted_at,
            completed_at=completed.get(row.job_id),
            cost_estimate=row.cost / len(files) if files else None,
            usage=usage_of(row.result),
            origin=row.origin,
            answered_by=answered_by_of(row.result),
            sha256={n: str(f["sha256"]) for n, f in enumerate(files) if isinstance(f, dict)},
        )


def rewrite_failures(reader: JournalReader, out_dir: Path) -> None:
    """``failures.jsonl`` anew from the journal: exactly the manifest's jobs failed now (a run
    appends as jobs fail; this drops those a retry has since put back)."""
    rewrite_rows(Path(out_dir) / FAILURES, _failed(reader))


def prune_index(reader: JournalReader, out_dir: Path, chunk: int = 500) -> int:
    """Drop the index rows (and remove the files) of jobs the journal no longer counts as
    downloaded, such as a rehearsal's placeholders about to be made for real. Streamed: the
    rows are checked against the journal a chunk at a time. Returns the rows dropped."""
    out = Path(out_dir)
    dropped = 0

    def kept() -> Iterator[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        for row in read_rows(out / METADATA):
            batch.append(row)
            if len(batch) == chunk:
                yield from sieve(batch)
                batch = []
        yield from sieve(batch)

    def sieve(rows: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        nonlocal dropped
        states = reader.states([str(r.get("job_id")) for r in rows])
        for row in rows:
            if states.get(str(row.get("job_id"))) is JobState.DOWNLOADED:
                yield row
                continue
            dropped += 1
            _remove(out, row.get("file_name"))

    rewrite_rows(out / METADATA, kept())
    return dropped


def _remove(out: Path, name: object) -> None:
    """Remove an image the index names, only if the name stays inside the folder."""
    if not isinstance(name, str):
        return
    path = (out / name).resolve()
    if path.is_relative_to(out.resolve()) and path.is_file():
        path.unlink()


def _failed(reader: JournalReader) -> Iterator[dict[str, object]]:
    for row in reader.iter_jobs(JobState.FAILED):
        if not row.in_manifest:  # as `counts` and `status`: the manifest's jobs only
            continue
        yield failure_row(
            row.spec,
            error_class=row.error_class or "unknown",
            message=row.error or "",
            attempts=row.attempts + 1,  # as the scheduler counts the attempt that failed
            request_id=row.request_id,
            failed_at=row.updated_at,
        )


@dataclass(frozen=True, slots=True)
class CompletedJob:
    """What the journal knows about one completed job, as plain data for a rebuild."""

    spec: JobSpec
    num_images: int
    request_id: str | None = None
    submitted_at: Timestamp = None
    completed_at: Timestamp = None
    inference_time: float | None = None
    cost_estimate: float | None = None
    usage: Mapping[str, Any] | None = None
    sha256: Mapping[int, str] = field(default_factory=dict)  # image index -> known checksum
    origin: str | None = None  # where it was made (journal.origin)
    answered_by: str | None = None  # the endpoint fal said answered instead (a fallback)


# File names a report keeps per kind of problem; the rest are counted (a folder whose images
# were all deleted must not need a million names in memory to say so).
MAX_LISTED = 1000


@dataclass
class RebuildReport:
    rows: int = 0
    failures: int = 0
    missing: list[str] = field(default_factory=list)  # file names expected and not on disk
    changed: list[str] = field(default_factory=list)  # on disk with another checksum
    invalid: list[str] = field(default_factory=list)  # on disk and not a valid image
    # How many of each there are: the lists keep the first MAX_LISTED names.
    counts: dict[str, int] = field(
        default_factory=lambda: {"missing": 0, "changed": 0, "invalid": 0}
    )

    @property
    def ok(self) -> bool:
        return not (self.missing or self.changed or self.invalid)

    def note(self, problem: str, name: str) -> None:
        """Count ``name`` as ``missing``, ``changed`` or ``invalid`` (listed if room is left)."""
        self.counts[problem] += 1
        names: list[str] = getattr(self, problem)
        if len(names) < MAX_LISTED:
            names.append(name)


class _OldIndex:
    """The old index's rows, by file name, reduced to the fields a rebuild keeps from them.

    A scratch SQLite table in the output folder (hidden: ImageFolder skips it; the folder has
    room for its index, so for this too), removed by :meth:`close`, or by the next rebuild when
    this one was killed (one name: two rebuilds of a folder at once would clash on the index's
    ``.part`` anyway). Rows go in in file order with INSERT OR REPLACE, so a file written twice
    keeps its last row, as ``read_index``.
    """

    FIELDS = ("sha256", "completed_at", "inference_time", "downloaded_at")
    NAME = ".index-rebuild.sqlite"

    def __init__(self, out_dir: Path) -> None:
        self._path = out_dir / self.NAME
        self._path.unlink(missing_ok=True)
        self._db = sqlite3.connect(self._path, isolation_level=None)
        try:
            # Scratch data: no journal, no fsync. A bounded page cache (16 MB) keeps memory
            # flat; SQLite spills the rest to the file.
            self._db.executescript(
                "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -16384;"
                "CREATE TABLE old (name TEXT PRIMARY KEY, kept TEXT NOT NULL) WITHOUT ROWID;"
            )
            rows = (
                (r["file_name"], json.dumps([r.get(f) for f in self.FIELDS]))
                for r in read_rows(out_dir / METADATA)
                if isinstance(r.get("file_name"), str)
            )
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO old VALUES (?, ?)", rows)
            self._db.execute("COMMIT")
        except BaseException:
            self.close()
            raise

    def get(self, name: str) -> dict[str, Any]:
        found = self._db.execute("SELECT kept FROM old WHERE name = ?", (name,)).fetchone()
        return dict(zip(self.FIELDS, json.loads(found[0]), strict=True)) if found else {}

    def close(self) -> None:
        self._db.close()
        self._path.unlink(missing_ok=True)


def rebuild_from_rows(
    out_dir: Path,
    completed_jobs: Iterable[CompletedJob],
    failed_jobs: Iterable[Mapping[str, Any]] = (),
    *,
    manifest_sha256: str,
    version: str = __version__,
) -> RebuildReport:
    """Rewrite ``metadata.jsonl`` and ``failures.jsonl`` from the journal's data.

    Every image file is hashed and checked: one missing, not an image, or with a checksum other
    than the journal's (or, failing that, the old index's) is reported, and only files that
    are present and valid get a row. ``failed_jobs`` are :func:`failure_row` dicts. Both are
    streamed: each file is written to a ``.part`` as the rows come and renamed into place.
    """
    report = RebuildReport()
    old = _OldIndex(out_dir)
    try:
        rows = _rows(out_dir, completed_jobs, old, report, manifest_sha256, version)
        rewrite_rows(out_dir / METADATA, rows)
    finally:
        old.close()

    def failures() -> Iterator[dict[str, Any]]:
        for f in failed_jobs:
            report.failures += 1
            yield dict(f)

    rewrite_rows(out_dir / FAILURES, failures())
    return report


def _rows(
    out_dir: Path,
    completed_jobs: Iterable[CompletedJob],
    old: _OldIndex,
    report: RebuildReport,
    manifest_sha256: str,
    version: str,
) -> Iterator[dict[str, Any]]:
    """The index rows of the files on disk, counted in ``report`` with the problems found."""
    # image_path gives a resolved path inside the folder: its name needs no more lookups.
    root = out_dir.resolve()
    for job in completed_jobs:
        fmt = input_value(job.spec, "output_format")
        for n in range(job.num_images):
            dest = image_path(out_dir, job.spec.output_template, template_fields(job.spec, n))
            name = dest.relative_to(root).as_posix()
            if not dest.is_file():
                report.note("missing", name)
                continue
            size, digest = sha256_file(dest)
            try:
                width, height, pil_fmt, blank, phash = inspect_quality(dest, fmt)
            except DownloadError:
                report.note("invalid", name)
                continue
            # The journal keeps no completion time or fal's inference time per job: the old
            # row's values survive a rebuild when there is one.
            prev = old.get(name)
            expected = job.sha256.get(n) or prev.get("sha256")
            if expected and expected != digest:
                report.note("changed", name)
            d = Downloaded(dest, digest, size, width, height, mime_of(pil_fmt), blank, phash)
            report.rows += 1
            yield index_row(
                job.spec,
                n,
                d,
                out_dir=out_dir,
                manifest_sha256=manifest_sha256,
                request_id=job.request_id,
                submitted_at=job.submitted_at,
                completed_at=job.completed_at or prev.get("completed_at"),
                inference_time=job.inference_time or prev.get("inference_time"),
                cost_estimate=job.cost_estimate,
                usage=job.usage,
                origin=job.origin,
                answered_by=job.answered_by,
                version=version,
                downloaded_at=prev.get("downloaded_at") or os.path.getmtime(dest),
                file_name=name,
            )
