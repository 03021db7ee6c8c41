"""The scheduler's download stage: a pool of workers of its own, fed job ids.

Separate from the submission window on purpose: a slow CDN must never hold a submission slot,
so a request's slot is released the moment its result JSON is committed, and the images are
fetched here. Each job's result is read back from the journal (nothing big waits in memory),
every image goes through ``download.download_image`` (``.part`` file, checks, atomic rename),
the index rows are appended, and only then is the job marked DOWNLOADED.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx

from batchgen.errors import BatchgenError, DownloadError
from batchgen.journal.writer import JobRow, Journal
from batchgen.outputs.download import Sleep, download_image
from batchgen.outputs.index import METADATA, append_rows, index_row, read_rows
from batchgen.planning.gptimage import DEFAULTS
from batchgen.planning.jobs import JobSpec, JobState
from batchgen.planning.paths import image_path, relative_name, template_fields
from batchgen.planning.pricing import parse_usage, token_cost, usage_of

FORMATS = ("png", "jpeg", "webp")


class DownloadPool:
    def __init__(
        self,
        journal: Journal,
        media: httpx.AsyncClient,
        *,
        out_dir: Path,
        manifest_sha256: str,
        max_image_bytes: int,
        workers: int,
        on_saved: Callable[[str, int], None],
        on_failed: Callable[[JobRow, str, str], None],
        on_idle: Callable[[], None],
        sleep: Sleep = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._journal = journal
        self._media = media
        self._out = out_dir
        self._sha = manifest_sha256
        self._max_bytes = max_image_bytes
        self._n = workers
        self._on_saved, self._on_failed, self._on_idle = on_saved, on_failed, on_idle
        self._sleep, self._rng = sleep, rng
        self._queue: asyncio.Queue[tuple[str, float | None]] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self.backlog = 0  # queued or being downloaded
        self._known: dict[str, str] = {}  # file name -> checksum of images already in place

    def start(self) -> None:
        self._workers = [asyncio.create_task(self._work()) for _ in range(self._n)]

    def resume(self, rows: Iterable[JobRow]) -> None:
        """Queue jobs an earlier run left COMPLETED. An image of theirs already in place (the
        run died after the rename, before the journal commit) is kept, without a request,
        when the index holds its checksum: its URL may have expired since, and it is paid for.
        """
        on_disk: set[str] = set()
        for row in rows:
            images = (row.result or {}).get("images")
            for n in range(len(images) if isinstance(images, list) else 0):
                dest = self._dest(row.spec, n)
                if dest.is_file():
                    on_disk.add(relative_name(self._out, dest))
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
                self._on_idle()

    async def _download(self, job: str, inference_time: float | None) -> None:
        row = self._journal.get(job)
        if row is None or row.state is not JobState.COMPLETED or row.result is None:
            return
        result = row.result
        images = result.get("images")
        if not isinstance(images, list) or not images:
            self._on_failed(row, "no_images", "the result lists no images")
            return
        usage = usage_of(result)
        # What fal's per-token prices make of the usage (BYOK), shared out like the estimate.
        actual = token_cost(usage) if usage is not None and parse_usage(usage) else None
        fmt = _output_format(row.spec)
        rows: list[dict[str, Any]] = []
        files: list[dict[str, Any]] = []
        try:
            for n, image in enumerate(images):
                url = image.get("url") if isinstance(image, dict) else None
                if not isinstance(url, str):
                    raise DownloadError(f"image {n} has no url", reason="no_url")
                dest = self._dest(row.spec, n)
                d = await download_image(
                    self._media, url, dest, max_bytes=self._max_bytes, expected_format=fmt,
                    sleep=self._sleep, rng=self._rng,
                    expected_sha256=self._known.pop(relative_name(self._out, dest), None),
                )  # fmt: skip
                rows.append(index_row(
                    row.spec, n, d, out_dir=self._out, manifest_sha256=self._sha,
                    request_id=row.request_id, submitted_at=row.submitted_at,
                    completed_at=row.updated_at, inference_time=inference_time,
                    cost_estimate=row.cost / len(images), usage=usage,
                    cost_actual=actual / len(images) if actual is not None else None,
                ))  # fmt: skip
                files.append({"file_name": relative_name(self._out, d.path),
                              "sha256": d.sha256, "bytes": d.bytes})  # fmt: skip
        except DownloadError as exc:
            self._on_failed(row, f"download_{exc.reason}", str(exc))
            return
        except (BatchgenError, OSError, ValueError) as exc:  # a bad template, a full disk
            self._on_failed(row, "download_error", f"{type(exc).__name__}: {exc}")
            return
        # Index rows first: a crash before the journal commit downloads again and appends the
        # same rows, which readers de-duplicate by file name; the other order could lose them.
        # append_rows fsyncs: off the event loop, so a slow disk never stalls the watchers.
        await asyncio.to_thread(append_rows, self._out, rows)
        self._journal.mark_downloaded(job, files)
        self._on_saved(job, len(files))


    def _dest(self, spec: JobSpec, n: int) -> Path:
        fields = template_fields(spec, n, _output_format(spec))
        return image_path(self._out, spec.output_template, fields)


def _output_format(spec: JobSpec) -> str | None:
    """The requested format (or the endpoint's default): what the bytes must turn out to be."""
    fmt = spec.input.get("output_format", DEFAULTS.get(spec.endpoint, {}).get("output_format"))
    return fmt if isinstance(fmt, str) and fmt in FORMATS else None
