"""The metadata index of an output folder: ``metadata.jsonl`` and ``failures.jsonl``.

``metadata.jsonl`` sits at the top of the output folder with one row per image whose
``file_name`` is relative to that folder (``images/<prompt_id>/<job>_0.png``): that is the
layout Hugging Face's ImageFolder reads, so ``load_dataset("imagefolder", data_dir=OUT)`` gives
one example per image with every index column. (ImageFolder skips hidden folders such as
``.thumbs/``, and ``*.part`` files are not images to it.)

Appends are line-atomic: each row is one ``os.write`` on an ``O_APPEND`` descriptor, so rows
from one process never interleave, and a crash can only tear the last line. Readers skip a torn
line, and the next append starts on a fresh line; a run's start cuts such a line off
(:func:`cut_torn_tail`), and an append the disk has no room for is cut off at once. So the
lines of a folder no run is writing are whole rows, which ImageFolder's loader needs. Each
``append_*`` call ends with one fsync (batch rows into one call when appending many). A rebuild
writes a whole new file and renames it into place.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batchgen._version import __version__
from batchgen.journal.walsync import fsync_path
from batchgen.outputs.download import Downloaded
from batchgen.planning.gptimage import DEFAULTS
from batchgen.planning.jobs import JobSpec, tags_json
from batchgen.planning.paths import relative_name, size_label
from batchgen.planning.pricing import parse_usage, token_cost

METADATA = "metadata.jsonl"
FAILURES = "failures.jsonl"

# Where a stored result keeps the endpoint that fal said answered it instead of the one asked
# (a fallback; fal.headers). Not a field any model returns: the colon keeps it apart.
ANSWERED_BY_KEY = "batchgen:answered_by"


def answered_by_of(result: Mapping[str, Any] | None) -> str | None:
    value = result.get(ANSWERED_BY_KEY) if isinstance(result, Mapping) else None
    return value if isinstance(value, str) else None


# Every column of an index row, in order (docs/outputs.md describes each). Rows always carry
# all of them (null when unknown) so that parquet, CSV and ImageFolder see one schema.
INDEX_FIELDS = (
    "file_name",
    "job_id",
    "image_index",
    "variant",
    "replaces",
    "prompt_id",
    "prompt",
    "vars",
    "tags",
    "endpoint",
    "answered_by",
    "origin",
    "requested_size",
    "width",
    "height",
    "quality",
    "output_format",
    "content_type",
    "bytes",
    "sha256",
    "request_id",
    "submitted_at",
    "completed_at",
    "downloaded_at",
    "inference_time",
    "cost_estimate",
    "cost_actual",
    "usage",
    "references",
    "mask",
    "manifest_sha256",
    "batchgen_version",
    "blank",
    "phash",
)

Timestamp = float | str | None


def iso(ts: Timestamp) -> str | None:
    """A timestamp (epoch seconds or already ISO text) as ISO 8601 UTC, or None."""
    if ts is None or isinstance(ts, str):
        return ts
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def input_value(spec: JobSpec, key: str) -> Any:
    """A request field as sent, else the endpoint's documented default (fal applies it)."""
    if key in spec.input:
        return spec.input[key]
    return DEFAULTS.get(spec.endpoint, {}).get(key)


def reference_info(spec: JobSpec, value: Any) -> dict[str, str | None]:
    """One edit input as the index records it: ``{path, url, sha256}``, the unused ones null.
    A local file gives its path and the sha256 it was planned with, a data URI its content's
    sha256 (the bytes themselves stay out of the index), a URL itself."""
    text = str(value)
    if text in spec.files:
        return {"path": text, "url": None, "sha256": spec.files[text]}
    if text[:5].lower() == "data:":
        head, _, payload = text.partition(",")
        try:
            digest = hashlib.sha256(base64.b64decode(payload)).hexdigest()
        except ValueError:
            digest = None
        return {"path": None, "url": head[:100], "sha256": digest}
    return {"path": None, "url": text, "sha256": None}


def edit_inputs(spec: JobSpec) -> tuple[list[dict[str, str | None]] | None, Any]:
    """(references, mask) of an edit job's index rows; (None, None) for other jobs."""
    urls = spec.input.get("image_urls")
    refs = [reference_info(spec, u) for u in urls] if isinstance(urls, list) else None
    mask = spec.input.get("mask_url")
    return refs, reference_info(spec, mask) if isinstance(mask, str) else None


def index_row(
    spec: JobSpec,
    n: int,
    d: Downloaded,
    *,
    out_dir: Path,
    manifest_sha256: str,
    request_id: str | None = None,
    submitted_at: Timestamp = None,
    completed_at: Timestamp = None,
    downloaded_at: Timestamp = None,
    inference_time: float | None = None,
    cost_estimate: float | None = None,
    usage: Mapping[str, Any] | None = None,
    cost_actual: float | None = None,
    origin: str | None = None,
    version: str = __version__,
    answered_by: str | None = None,
    file_name: str | None = None,
) -> dict[str, Any]:
    """The index row of image ``n`` of ``spec``, downloaded as ``d`` below ``out_dir``.

    ``downloaded_at`` defaults to now. ``cost_estimate`` is this image's share of the job's
    estimate (the job's divided by its number of images), so summing rows gives the total.
    ``usage`` is the token count a BYOK response carries; ``cost_actual`` is this image's share
    of what those tokens cost at fal's per-token prices (computed from ``usage`` over the
    job's ``num_images`` when not given), None without usage. An edit's ``references`` and
    ``mask`` say which inputs it used (local files by path and sha256). ``origin`` says where
    the image was made (``journal.origin``: ``fal``, ``emulator``, ``endpoint:<URL>``).
    ``answered_by`` is the endpoint fal said made it instead of ``spec.endpoint`` (a
    fallback), None when fal said nothing.
    ``file_name`` is ``d.path`` relative to ``out_dir`` when the caller knows it already (a
    rebuild of a million images would otherwise resolve every path once more).
    """
    if cost_actual is None and usage is not None and parse_usage(usage) is not None:
        cost_actual = token_cost(usage) / spec.num_images
    fmt = input_value(spec, "output_format")
    references, mask = edit_inputs(spec)
    return {
        "file_name": file_name if file_name is not None else relative_name(out_dir, d.path),
        "job_id": spec.job_id,
        "image_index": n,
        "variant": spec.variant,
        "replaces": spec.replaces.get("file_name") or None,  # run --replace-rejected's takes
        "prompt_id": spec.prompt_id,
        "prompt": spec.prompt or str(spec.input.get("prompt", "")),
        "vars": dict(spec.vars),
        "tags": tags_json(spec.tags),
        "endpoint": spec.endpoint,
        "answered_by": answered_by,
        "origin": origin,
        "requested_size": size_label(input_value(spec, "image_size")) or None,
        "width": d.width,
        "height": d.height,
        "quality": input_value(spec, "quality"),
        "output_format": fmt,
        "content_type": d.content_type,
        "bytes": d.bytes,
        "sha256": d.sha256,
        "request_id": request_id,
        "submitted_at": iso(submitted_at),
        "completed_at": iso(completed_at),
        "downloaded_at": iso(time.time() if downloaded_at is None else downloaded_at),
        "inference_time": inference_time,
        "cost_estimate": cost_estimate,
        "cost_actual": round(cost_actual, 8) if cost_actual is not None else None,
        "usage": dict(usage) if usage is not None else None,
        "references": references,
        "mask": mask,
        "manifest_sha256": manifest_sha256,
        "batchgen_version": version,
        "blank": d.blank,
        "phash": d.phash,
    }


def failure_row(
    spec: JobSpec,
    *,
    error_class: str,
    message: str,
    attempts: int,
    request_id: str | None = None,
    failed_at: Timestamp = None,
) -> dict[str, Any]:
    """The ``failures.jsonl`` row of a job that failed for good. ``failed_at`` defaults to now."""
    return {
        "job_id": spec.job_id,
        "prompt_id": spec.prompt_id,
        "prompt": spec.prompt or str(spec.input.get("prompt", "")),
        "class": error_class,
        "message": message,
        "attempts": attempts,
        "request_id": request_id,
        "endpoint": spec.endpoint,
        "failed_at": iso(time.time() if failed_at is None else failed_at),
    }


def _line(row: Mapping[str, Any]) -> bytes:
    # ensure_ascii=False keeps prompts readable; json escapes \n, so one row is one line.
    return (json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


# One writer per index file: the run's folder lock keeps other processes out, and this lock
# keeps a library caller's threads from racing each other (a run appends on its event loop).
# Under it, where our last append left each file (inode, size) is exact, so the torn-line check
# below fires only when the file changed behind our back (a crash's torn last line), never on a
# neighbour's row.
_lock = threading.Lock()
_left_at: dict[Path, tuple[int, int]] = {}


def _append(path: Path, rows: Iterable[Mapping[str, Any]], *, sync: bool = True) -> None:
    # Serialise first: a bad row must not leave half a batch. One write for the batch.
    data = b"".join(_line(r) for r in rows)
    if not data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            st = os.fstat(fd)
            changed = st.st_size and _left_at.get(path) != (st.st_ino, st.st_size)
            if changed and os.pread(fd, 1, st.st_size - 1) != b"\n":
                data = b"\n" + data  # a crash tore the last line: ours starts a fresh one
            written = 0
            try:
                while written < len(data):  # short only on a full disk or a signal: finish it
                    written += os.write(fd, data[written:])
            except OSError:
                _cut_short_write(fd, written)  # a full disk: no half row left behind
                raise
            if sync:
                os.fsync(fd)
            st = os.fstat(fd)
            _left_at[path] = (st.st_ino, st.st_size)
        finally:
            os.close(fd)


def _cut_short_write(fd: int, written: int) -> None:
    """Remove the ``written`` bytes of an append that could not finish, when nothing was
    appended after them."""
    end = os.lseek(fd, 0, os.SEEK_CUR)  # O_APPEND: just past what this descriptor wrote
    if written and os.fstat(fd).st_size == end:
        os.ftruncate(fd, end - written)


def cut_torn_tail(path: Path) -> bool:
    """Cut a last line a crash tore (no newline at its end) off an index file; True if it
    did. Call with no writer at work (a run's start, under the folder's lock). Its rows were
    never committed anywhere (the journal commits a download only after its rows are on
    disk), and left in place it would be a line no JSON reader accepts: ImageFolder's loader
    stops at it."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        end = size = os.fstat(fd).st_size
        while end > 0:
            start = max(0, end - 65536)
            chunk = os.pread(fd, end - start, start)
            if end == size and chunk.endswith(b"\n"):
                return False
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                os.ftruncate(fd, start + cut + 1)
                return True
            end = start
        os.ftruncate(fd, 0)
        return size > 0
    finally:
        os.close(fd)


def ensure_index(out_dir: Path) -> None:
    """An output folder always has its index, empty when no image was saved yet: every tool
    (and ImageFolder) can then read a folder where nothing succeeded."""
    path = out_dir / METADATA
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))


def append_rows(out_dir: Path, rows: Iterable[Mapping[str, Any]], *, sync: bool = True) -> None:
    """Append index rows to ``out_dir/metadata.jsonl`` (one write for all, one fsync).

    ``sync=False`` leaves the fsync to the caller: :func:`sync_index` later covers every
    append made before it, so concurrent downloads can share one (group commit)."""
    _append(out_dir / METADATA, rows, sync=sync)


def sync_index(out_dir: Path) -> None:
    """fsync ``metadata.jsonl``: every append that returned before this call is on disk."""
    fsync_path(out_dir / METADATA)


def append_failure(out_dir: Path, row: Mapping[str, Any]) -> None:
    """Append one row to ``out_dir/failures.jsonl``."""
    _append(out_dir / FAILURES, [row])


def read_rows(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a JSONL file, skipping blank and torn lines; nothing when it is absent."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return
    with f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except ValueError:
                continue  # a line torn by a crash
            if isinstance(row, dict):
                yield row


def read_index(out_dir: Path) -> list[dict[str, Any]]:
    """The index rows of an output folder; a file written twice keeps its last row."""
    rows: dict[str, dict[str, Any]] = {}
    for row in read_rows(out_dir / METADATA):
        if isinstance(row.get("file_name"), str):
            rows[row["file_name"]] = row
    return list(rows.values())


def read_failures(out_dir: Path) -> list[dict[str, Any]]:
    """Failure rows, one per job (the last one written wins)."""
    rows: dict[str, dict[str, Any]] = {}
    for row in read_rows(out_dir / FAILURES):
        rows[str(row.get("job_id"))] = row
    return list(rows.values())


def write_manifest_copy(out_dir: Path, manifest: Path) -> Path:
    """Copy the manifest as run to ``out_dir/manifest<suffix>`` (atomically)."""
    dest = out_dir / f"manifest{manifest.suffix.lower() or '.yaml'}"
    tmp = dest.with_name(dest.name + ".part")
    shutil.copyfile(manifest, tmp)
    os.replace(tmp, dest)
    return dest


def rewrite_rows(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Replace an index file atomically: written beside it as ``rows`` come (a generator is
    never held whole), fsynced, then renamed over it."""
    tmp = path.with_name(path.name + ".part")
    with _lock:
        try:  # rows may be a stream that fails half-way: then the old file stays, whole
            with tmp.open("wb") as f:
                f.writelines(_line(r) for r in rows)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
