"""Local reference files, resolved at submit time into what the server can fetch.

A planned job names its local files by path, relative to the manifest (``JobSpec.files`` holds
the sha256 each had when planned). Just before the POST, ``Uploads.resolve`` replaces each by:

- a hosted URL on fal storage, uploaded once per content: the journal's ``uploads`` table maps
  sha256 -> URL, so a resumed or repeated run uploads nothing it uploaded before, and a changed
  file (a new sha256, hence a new job) is uploaded anew. Two jobs that need the same file at
  the same moment wait for one upload (a lock per sha256, then the journal is asked again).
- or, with ``--inline-uploads``, a ``data:`` URI (nothing is stored anywhere).

A file that changed (or vanished) since the job was planned fails that job: what would be sent
is no longer what the job id promises. A failed upload raises ``UploadError`` carrying the
``retry.Outcome`` the scheduler acts on, classified as an upload (never as a submit: nothing
was POSTed, so nothing can have been billed).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from batchgen.errors import BatchgenError
from batchgen.fal.client import QueueClient
from batchgen.fal.storage import data_uri
from batchgen.journal.writer import Journal
from batchgen.manifest.files import MAX_REFERENCE_BYTES, read_reference
from batchgen.manifest.local import is_local_path
from batchgen.planning.jobs import FILE_FIELDS, JobSpec
from batchgen.retry import Action, Outcome, classify

# fal keeps CDN files at least 7 days (docs/fal.md, Storage and uploads): an older upload is
# done again rather than handing the model a URL that may have gone.
UPLOAD_MAX_AGE = 6 * 24 * 3600.0


class UploadError(BatchgenError):
    """A local file could not be resolved; ``outcome`` says what to do about the job."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


def local_references(request: Mapping[str, Any]) -> list[str]:
    """The local paths a request names in image_urls / mask_url, in order."""
    out: list[str] = []
    for key in sorted(FILE_FIELDS & request.keys()):
        value = request[key]
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and is_local_path(item):
                out.append(item)
    return out


class Uploads:
    """Resolves the local files of one run's jobs (a manifest folder, one journal)."""

    def __init__(
        self,
        journal: Journal,
        client: QueueClient,
        *,
        folder: Path,
        inline: bool = False,
        reuse: bool = True,
        max_bytes: int = MAX_REFERENCE_BYTES,
        wall: Callable[[], float] = time.time,
        origin: str | None = None,
    ) -> None:
        self._journal = journal
        self._client = client
        self._folder = folder
        self._inline = inline
        self._reuse = reuse  # trust URLs the journal kept from earlier runs
        self._max_bytes = max_bytes
        self._wall = wall
        self._locks: dict[str, asyncio.Lock] = {}
        self._made: dict[str, str] = {}  # sha256 -> URL uploaded by this process
        self.origin = origin  # where the URLs are for (journal.origin): kept beside each one
        self.uploaded = 0  # uploads this run made (the rest came from the journal)

    async def resolve(self, spec: JobSpec) -> Mapping[str, Any]:
        """The body to POST for ``spec``: its input with every local file resolved."""
        local = local_references(spec.input)
        if not local:
            return spec.input  # nothing to do: the common text-to-image case costs nothing
        resolved = {rel: await self._resolve_one(spec, rel) for rel in dict.fromkeys(local)}
        body = dict(spec.input)
        for key in FILE_FIELDS & body.keys():
            value = body[key]
            if isinstance(value, list):
                body[key] = [resolved.get(v, v) if isinstance(v, str) else v for v in value]
            elif isinstance(value, str):
                body[key] = resolved.get(value, value)
        return body

    async def _resolve_one(self, spec: JobSpec, rel: str) -> str:
        planned = spec.files.get(rel)
        if self._inline:
            data, content_type, _ = await asyncio.to_thread(self._read, rel, planned)
            return data_uri(data, content_type)
        if planned is None:  # planned by a batchgen without content ids: the bytes decide
            planned = (await asyncio.to_thread(self._read, rel, None))[2]
        # One lock per content, taken before reading: jobs waiting for the same file hold no
        # copy of it, and the one that waited finds the other's upload.
        async with self._locks.setdefault(planned, asyncio.Lock()):
            url = self._fresh_url(planned)
            if url is not None:  # uploaded before: the file itself need not even exist now
                return url
            data, content_type, digest = await asyncio.to_thread(self._read, rel, planned)
            try:
                url = await self._client.upload(data, content_type, file_name=Path(rel).name)
            except Exception as exc:
                o = classify(exc, op="upload")
                why = f"uploading {rel}: {o.message}"
                raise UploadError(
                    Outcome(o.action, f"upload_{o.reason}", why, o.retry_after)
                ) from exc
            self._made[digest] = url
            self._journal.upload_put(digest, url, content_type, len(data), self.origin)
            self._journal.event(spec.job_id, "upload", f"{rel} sha256 {digest[:16]} -> {url}")
            self.uploaded += 1
            return url

    def _fresh_url(self, sha256: str) -> str | None:
        if sha256 in self._made:
            return self._made[sha256]
        known = self._journal.upload_get(sha256) if self._reuse else None
        # A URL is good only on the server it was uploaded to (a rehearsal's emulator is not
        # where a real run's requests go), and only for so long.
        if known is None or known.origin != self.origin:
            return None
        if self._wall() - known.uploaded_at > UPLOAD_MAX_AGE:
            return None
        return known.url

    def _read(self, rel: str, planned: str | None) -> tuple[bytes, str, str]:
        """(bytes, content type, sha256) of the file, as planned; else UploadError (final)."""
        path = self._folder / rel
        try:
            data, content_type = read_reference(path, self._max_bytes)
        except FileNotFoundError:
            raise _final("reference_missing", f"{rel} no longer exists in {self._folder}") from None
        except (OSError, ValueError) as exc:
            msg = getattr(exc, "strerror", None) or str(exc)
            raise _final("reference_unreadable", f"{rel}: {msg}") from None
        digest = hashlib.sha256(data).hexdigest()
        if planned is not None and digest != planned:
            raise _final(
                "reference_changed",
                f"{rel} changed since this job was planned (sha256 {planned[:12]}, now "
                f"{digest[:12]}); run the manifest again to plan the new content as a new job",
            )
        return data, content_type, digest


def _final(reason: str, message: str) -> UploadError:
    return UploadError(Outcome(Action.FINAL, reason, message))
