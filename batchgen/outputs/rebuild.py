"""``batchgen index --rebuild``: ``metadata.jsonl`` and ``failures.jsonl`` anew from the journal.

The journal is the source of truth; the index is a view of it that a crash, a hand edit or a
deleted file can spoil. This reads the journal (read-only, streamed: a million jobs never sit
in memory at once), turns each downloaded job into a :class:`CompletedJob` with the checksums
the downloader recorded, and hands them to :func:`index.rebuild_from_rows`, which hashes every
file and reports the missing, changed and invalid ones.

Jobs that completed on fal's side but are not downloaded yet are left out: they are not on
disk, and the next ``batchgen run`` fetches them and appends their rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from batchgen.errors import UsageError
from batchgen.journal.query import JournalReader
from batchgen.journal.schema import JobRow
from batchgen.journal.writer import JOURNAL_NAME, Journal, writer_pid
from batchgen.outputs.index import CompletedJob, RebuildReport, failure_row, rebuild_from_rows
from batchgen.planning.jobs import JobState
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
            sha256={n: str(f["sha256"]) for n, f in enumerate(files) if isinstance(f, dict)},
        )


def _failed(reader: JournalReader) -> Iterator[dict[str, object]]:
    for row in reader.iter_jobs(JobState.FAILED):
        yield failure_row(
            row.spec,
            error_class=row.error_class or "unknown",
            message=row.error or "",
            attempts=row.attempts + 1,  # as the scheduler counts the attempt that failed
            request_id=row.request_id,
            failed_at=row.updated_at,
        )
