"""The scheduler's download stage: a pool of workers of its own, fed job ids.

Separate from the submission window on purpose: a slow CDN must never hold a submission slot,
so a request's slot is released the moment its result JSON is committed, and the images are
fetched here. Each job's result is read back from the journal (nothing big waits in memory),
every image goes through ``download.download_image`` (``.part`` file, checks in the run's
worker processes when it has them, atomic rename),
the index rows are appended, and only then is the job marked DOWNLOADED.

A paid image is fetched, never paid for again while fal still holds it. When a download
fails (truncated, refused, not the image asked for), the result is read again from the queue
(``refetch``: fresh URLs) and the images are tried again, as ``retry.REFETCH`` allows; a job
that still fails keeps its request id and result, so a later run downloads it again without
a new submit. When fal no longer has the result or its media (404, 410), the work is gone:
the report's ``lost`` resubmits the job, counted as lost, never failed for it. A full disk
fails nothing either: the report's ``disk_full`` stops the run's submitting, and the pool
saves nothing more, leaving every job it has not saved COMPLETED, its result in the journal.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import httpx

from batchgen.errors import BatchgenError, DownloadError, is_disk_full
from batchgen.journal.groupsync import GroupSync
from batchgen.journal.writer import JobRow, Journal
from batchgen.outputs.download import Sleep, download_image
from batchgen.outputs.index import (
    METADATA,
    answered_by_of,
    append_rows,
    index_row,
    read_rows,
    sync_index,
)
from batchgen.outputs.scan import mark_superseding
from batchgen.outputs.workers import CheckPool
from batchgen.planning.gptimage import DEFAULTS
from batchgen.planning.jobs import JobSpec, JobState
from batchgen.planning.paths import image_path, template_fields
from batchgen.planning.pricing import parse_usage, token_cost, usage_of
from batchgen.retry import MEDIA, REFETCH, Action, classify

FORMATS = ("png", "jpeg", "webp")

Refetch = Callable[[JobRow], Awaitable[dict[str, Any]]]


class DownloadReport(Protocol):
    """Where the pool reports each job's end (``running.recorder.Recorder`` in a run)."""

    def saved(self, job_id: str, images: int) -> None: ...
    def fail(self, row: JobRow, reason: str, message: str) -> None: ...
    def lost(self, row: JobRow, message: str) -> None: ...
    def disk_full(self, job_id: str, message: str) -> None: ...


class DownloadPool:
    """``workers`` download tasks fed job ids (``put``); ``changed`` is set each time one
    is done, so whoever waits on the backlog looks again."""

    def __init__(
        self,
        journal: Journal,
        media: httpx.AsyncClient,
        report: DownloadReport,
        *,
        out_dir: Path,
        manifest_sha256: str,
        max_image_bytes: int,
        workers: int,
        changed: asyncio.Event,
        refetch: Refetch | None = None,
        checks: CheckPool | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._journal = journal
        self._media = media
        self._report = report
        self._out = out_dir
        # image_path gives resolved paths inside the folder: their names need no more lookups
        # (resolving a path reads every component's link, twice per name before).
        self._root = out_dir.resolve()
        self._sha = manifest_sha256
        self._max_bytes = max_image_bytes
        self._n = workers
        self._changed = changed
        self._refetch = refetch
        self._sleep = sleep
        self._media_retry = MEDIA.jittered(rng)
        # With worker processes, each image's gallery thumbnail is made there as it lands,
        # and the end of the run only writes the page (gallery.py makes what is missing).
        self._checks = checks
        self._thumbs = out_dir if checks is not None else None
        # Index rows are written at once and fsynced by one fsync shared by the downloads
        # that finish together (a group commit, off the event loop).
        self._index_sync = GroupSync(functools.partial(sync_index, out_dir))
        self._queue: asyncio.Queue[tuple[str, float | None]] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self.backlog = 0  # queued or being downloaded
        # file name -> checksum of the images in place that the index already holds a row for
        self._known: dict[str, str] = {}
        self.full = False  # the disk filled: nothing more is saved by this run

    def start(self) -> None:
        self._workers = [asyncio.create_task(self._work()) for _ in range(self._n)]

    def resume(self, rows: Iterable[JobRow]) -> None:
        """Queue jobs an earlier run left COMPLETED. An image of theirs already in place (the
        run died after the rename, before the journal commit) is kept, without a request,
        when the index holds its checksum: its URL may have expired since, and it is paid for.
        Its row is not appended again: the index keeps exactly one row per image.
        """
        on_disk: set[str] = set()
        for row in rows:
            images = (row.result or {}).get("images")
            for n in range(len(images) if isinstance(images, list) else 0):
                dest = self._dest(row.spec, n)
                if dest.is_file():
                    on_disk.add(self._name(dest))
            self.put(row.job_id)
        if on_disk:  # rare: one pass over the index, keeping only these names
            for r in read_rows(self._out / METADATA):
                name, sha = r.get("file_name"), r.get("sha256")
                if name in on_disk and isinstance(sha, str):
                    self._known[name] = sha

    def put(self, job_id: str, inference_time: float | None = None) -> None:
        self.backlog += 1
        self._queue.put_nowait((job_id, inference_time))

    async def close(self) -> None:
        """Cancel the workers; a download cut short leaves no file in place (only a .part
        that ``download_image`` removes) and its job stays COMPLETED for the next run."""
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    async def _work(self) -> None:
        while True:
            job, inference_time = await self._queue.get()
            try:
                await self._download(job, inference_time)
            finally:
                self.backlog -= 1
                self._changed.set()

    async def _download(self, job: str, inference_time: float | None) -> None:
        if self.full:
            return  # COMPLETED, its result kept: the next run saves it
        try:
            await self._try_download(job, inference_time)
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            self.full = True
            self._report.disk_full(job, f"{type(exc).__name__}: {exc}")

    async def _try_download(self, job: str, inference_time: float | None) -> None:
        row = self._journal.get(job)
        if row is None or row.state is not JobState.COMPLETED or row.result is None:
            return
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._save(row, row.result or {}, inference_time)
                return
            except DownloadError as exc:
                if is_disk_full(exc):  # no room for it: not the image's fault
                    raise
                outcome = classify(exc, op="media")  # RESUBMIT: the media is gone
                failure = (f"download_{exc.reason}", str(exc))
            except (BatchgenError, OSError, ValueError) as exc:  # a bad template
                if is_disk_full(exc):
                    raise
                self._report.fail(row, "download_error", f"{type(exc).__name__}: {exc}")
                return
            if self._refetch is None or not REFETCH.again(attempt, outcome):
                break
            self._journal.event(job, "download", f"{failure[1]}; reading the result again")
            try:
                result = await self._refetch(row)
            except Exception as exc:
                read = classify(exc, op="result")
                if read.reason == "expired":  # the queue no longer has the result either
                    outcome, failure = read, ("download_expired", read.message)
                else:  # unreachable, or refused: keep the result, fail the job for now
                    self._journal.event(job, "download", f"result not read again: {read.message}")
                break
            self._journal.set_result(job, result)
            row = self._journal.get(job) or row
        if outcome.action is Action.RESUBMIT:
            self._report.lost(row, failure[1])
        else:
            self._report.fail(row, *failure)

    async def _save(
        self, row: JobRow, result: dict[str, Any], inference_time: float | None
    ) -> None:
        """Download, verify and index every image of ``row``, then mark it DOWNLOADED."""
        images = result.get("images")
        if not isinstance(images, list) or not images:
            raise DownloadError("the result lists no images", reason="no_images")
        usage = usage_of(result)
        # What fal's per-token prices make of the usage (BYOK), shared out like the estimate.
        actual = token_cost(usage) if usage is not None and parse_usage(usage) else None
        fmt = _output_format(row.spec)
        rows: list[dict[str, Any]] = []
        files: list[dict[str, Any]] = []
        for n, image in enumerate(images):
            url = image.get("url") if isinstance(image, dict) else None
            if not isinstance(url, str):
                raise DownloadError(f"image {n} has no url", reason="no_url")
            dest = self._dest(row.spec, n)
            name = self._name(dest)
            indexed = self._known.pop(name, None)
            if indexed is None and dest.exists():  # made again: its old row may be indexed
                mark_superseding(self._out)
            d = await download_image(
                self._media,
                url,
                dest,
                max_bytes=self._max_bytes,
                expected_format=fmt,
                sleep=self._sleep,
                retry=self._media_retry,
                expected_sha256=indexed,
                checks=self._checks,
                thumbs=self._thumbs,
            )
            files.append({"file_name": name, "sha256": d.sha256, "bytes": d.bytes})
            if d.sha256 == indexed:
                continue  # its row is in the index already (a crash before the commit below)
            rows.append(
                index_row(
                    row.spec,
                    n,
                    d,
                    out_dir=self._out,
                    file_name=name,
                    manifest_sha256=self._sha,
                    request_id=row.request_id,
                    submitted_at=row.submitted_at,
                    completed_at=row.updated_at,
                    inference_time=inference_time,
                    cost_estimate=row.cost / len(images),
                    usage=usage,
                    cost_actual=actual / len(images) if actual is not None else None,
                    origin=row.origin,
                    answered_by=answered_by_of(result),
                )
            )
        # Index rows first, on disk: the other order could lose them. A crash before the
        # journal commit leaves rows for a job the journal has as COMPLETED; the next run
        # finds them (``resume``) and keeps the images without appending them again. The
        # fsync is off the event loop, so a slow disk never stalls the watchers; the write
        # (a line of page cache) is not worth a thread's hand-off.
        if rows:
            append_rows(self._out, rows, sync=False)
            await self._index_sync.wait()
        self._journal.mark_downloaded(row.job_id, files)
        self._report.saved(row.job_id, len(files))

    def _name(self, dest: Path) -> str:
        """``dest`` (from :meth:`_dest`) relative to the output folder: its index name."""
        return dest.relative_to(self._root).as_posix()

    def _dest(self, spec: JobSpec, n: int) -> Path:
        fields = template_fields(spec, n, _output_format(spec))
        return image_path(self._out, spec.output_template, fields)


def _output_format(spec: JobSpec) -> str | None:
    """The requested format (or the endpoint's default): what the bytes must turn out to be."""
    fmt = spec.input.get("output_format", DEFAULTS.get(spec.endpoint, {}).get("output_format"))
    return fmt if isinstance(fmt, str) and fmt in FORMATS else None
