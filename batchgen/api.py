"""The Python API: what ``import batchgen`` offers notebooks and pipelines.

    import batchgen

    summary = batchgen.plan("manifests/demo.yaml")          # nothing is sent anywhere
    print(summary.jobs, summary.images, summary.cost_usd)
    result = await batchgen.run("manifests/demo.yaml", emulate=True, on_event=print)
    rows = batchgen.read_index(result.out_dir)               # one dict per image

``batchgen run`` is a thin layer over ``execute`` (argument parsing, the progress bar, the
summary on stderr, the exit code), so the API and the CLI do exactly the same work: the same
journal, the same resume, the same output folder. Every error is a ``BatchgenError`` (bad
manifest: ``ManifestError`` with every problem; bad option or no key: ``UsageError``; folder
of another manifest: ``JournalError``); a job that fails is a recorded row, never an exception.
Nothing here installs signal handlers unless asked (``handle_signals=True``).
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, ParamSpec

from batchgen.config import DOWNLOAD_CONCURRENCY, build_settings
from batchgen.errors import UsageError
from batchgen.fal.byok import manifest_wants_key
from batchgen.manifest import Manifest
from batchgen.manifest import load_manifest as _load
from batchgen.manifest import plan as plan_jobs
from batchgen.outputs import index, scan
from batchgen.planning.summary import PlanSummary, summarize
from batchgen.running.runner import Approve, OnEvent, RunResult, execute

P = ParamSpec("P")

__all__ = [
    "ManifestLike",
    "execute",
    "iter_index",
    "load_manifest",
    "plan",
    "read_failures",
    "read_index",
    "run",
    "run_sync",
]

ManifestLike = Manifest | str | os.PathLike[str]
PathLike = str | os.PathLike[str]


def load_manifest(path: PathLike) -> Manifest:
    """Read and check a YAML, CSV or JSONL manifest.

    Raises ``ManifestError`` listing every problem (``.problems``: file, line, field, message).
    """
    return _load(Path(path))


def plan(manifest: ManifestLike) -> PlanSummary:
    """What ``manifest`` (a ``Manifest`` or a path) will do, without sending anything.

    The jobs are expanded lazily in one pass (memory stays flat for a million jobs) into
    counts (``jobs``, ``images``, ``duplicates`` collapsed), an estimated ``cost_usd``, the
    breakdowns ``by_endpoint``, ``by_size``, ``by_quality``, a few ``samples`` with their
    output paths, and ``notices``. ``to_json()`` is what ``batchgen plan --json`` prints.
    """
    m = _manifest(manifest)
    return summarize(m, plan_jobs(m))


async def run(
    manifest: ManifestLike,
    *,
    out: PathLike | None = None,
    emulate: bool = False,
    endpoint: str | None = None,
    concurrency: int | Literal["auto"] = "auto",
    max_cost: float | None = None,
    max_attempts: int = 3,
    deadline: float = 1200.0,
    watch: Literal["stream", "poll"] = "stream",
    download_concurrency: int = DOWNLOAD_CONCURRENCY,
    max_image_bytes: int = 50_000_000,
    retry_failed: bool = False,
    reuse_folder: bool = False,
    inline_uploads: bool = False,
    faults: str | None = None,
    time_scale: float | None = None,
    on_event: OnEvent | None = None,
    approve: Approve | None = None,
    progress_every: float | None = 5.0,
    handle_signals: bool = False,
    environ: Mapping[str, str] | None = None,
    priority: Literal["low", "normal"] | None = None,
    start_timeout: float | None = None,
    media_expiry: int | None = None,
    allow_fallbacks: bool = False,
    no_store_io: bool = False,
    stop_at: str | None = None,
    notify: str | None = None,
    on_exit: str | None = None,
) -> RunResult:
    """Run ``manifest`` (a ``Manifest`` or a path) to the end, resuming its output folder.

    The options are ``batchgen run``'s flags, with the same defaults: ``out`` (default
    ``outputs/<manifest name>``), ``emulate`` (the built-in emulator, no key, no network) or
    ``endpoint`` (a fal-compatible server), ``concurrency`` (a number, or ``"auto"`` to find
    the account's limit), ``max_cost`` (stop submitting before this estimate in USD), and so
    on. The fal key comes from ``environ`` (default ``os.environ``): ``FAL_KEY``, or
    ``FAL_KEY_ID`` and ``FAL_KEY_SECRET``; it is never written anywhere.

    ``on_event`` receives every event as it happens (``Submitted``, ``Started``,
    ``Finished``, ``Saved``, ``Failed``, ``Retrying``, ...) and a ``Snapshot`` of the counts
    before the first submit, every ``progress_every`` seconds (None: never) and at the end.
    It is called on the event loop: keep it quick. Before its first submit the run sends a
    ``Ready`` event (jobs to submit, their images and estimated cost, where, the plan's
    notices) and, when ``approve`` is given, calls it with that ``Ready``: a False answer (or
    an awaitable of one) submits nothing new, and the run ends with ``stop`` ``declined``.

    Returns a ``RunResult`` (``exit_code`` is what the CLI would exit with: 0 all done, 1 some
    jobs failed, 2 the key was refused, 3 stopped at the budget, 130 interrupted). Raises
    ``ManifestError``, ``UsageError`` (bad option, no key) before anything is written.
    ``handle_signals=True`` makes the first Ctrl-C stop submitting and finish what is paid
    for, the second stop at once; without it, cancelling the task stops at once. Either
    way the same call resumes.

    fal's own controls (see ``batchgen run --help``): ``priority`` (``"low"`` yields to the
    account's interactive traffic), ``start_timeout`` (seconds before fal gives up on a
    request no runner started; not billed, sent again), ``media_expiry`` (seconds fal's CDN
    keeps the images, at least 600), ``allow_fallbacks`` (let fal answer from an
    "equivalent" endpoint), ``no_store_io`` (fal keeps no payloads), ``stop_at`` ("HH:MM",
    local: stop submitting then), ``notify`` (a URL that gets the JSON summary at the end,
    kept secret) and ``on_exit`` (a command line run with that summary on stdin).
    """
    m = _manifest(manifest)
    flags: dict[str, Any] = {
        "manifest": m.path,
        "out": os.fspath(out) if out is not None else None,
        "emulate": emulate,
        "endpoint": endpoint,
        "concurrency": concurrency,
        "max_cost": max_cost,
        "max_attempts": max_attempts,
        "deadline": deadline,
        "watch": watch,
        "download_concurrency": download_concurrency,
        "max_image_bytes": max_image_bytes,
        "retry_failed": retry_failed,
        "reuse_folder": reuse_folder,
        "inline_uploads": inline_uploads,
        "faults": faults,
        "time_scale": time_scale,
        "quiet": True,
        "priority": priority,
        "start_timeout": start_timeout,
        "media_expiry": media_expiry,
        "allow_fallbacks": allow_fallbacks,
        "no_store_io": no_store_io,
        "stop_at": stop_at,
        "notify": notify,
        "on_exit": on_exit,
    }
    env = os.environ if environ is None else environ
    settings = build_settings(
        flags, env, manifest_name=m.name, byok=manifest_wants_key(m), manifest=m
    )
    return await execute(
        m,
        settings,
        on_event=on_event,
        progress_every=progress_every,
        handle_signals=handle_signals,
        approve=approve,
    )


def _blocking(
    fn: Callable[P, Coroutine[Any, Any, RunResult]],
) -> Callable[P, RunResult]:
    """``fn`` for code without an event loop: the same parameters (one signature to keep)."""

    @functools.wraps(fn)
    def run_sync(*args: P.args, **kwargs: P.kwargs) -> RunResult:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # no loop: the expected case
        else:
            raise UsageError(
                "batchgen.run_sync() cannot run inside a running event loop (a Jupyter cell "
                "has one): use `await batchgen.run(...)` there instead"
            )
        return asyncio.run(fn(*args, **kwargs))

    run_sync.__name__ = run_sync.__qualname__ = "run_sync"  # wraps() copied fn's names
    run_sync.__doc__ = """``run`` for code without an event loop (a script, a pipeline step): blocks
    until done, with the same options.

    Inside a running event loop (a Jupyter cell has one) it raises ``UsageError``: use
    ``await batchgen.run(...)`` there instead.
    """
    return run_sync


run_sync = _blocking(run)


def read_index(out: PathLike) -> list[dict[str, Any]]:
    """The rows of ``out/metadata.jsonl``, one dict per image (DESIGN.md's index row:
    ``file_name`` relative to ``out``, ``job_id``, ``prompt``, ``width``, ``height``,
    ``sha256``, ...). An image written twice keeps its last row; a line torn by a crash is
    skipped. Raises ``UsageError`` when ``out`` is not a folder."""
    return index.read_index(_folder(out))


def iter_index(out: PathLike) -> Iterator[dict[str, Any]]:
    """The rows ``read_index`` gives, in its order, one at a time: memory stays flat at a
    million images (two passes over the file; see docs/outputs.md). Raises ``UsageError``
    when ``out`` is not a folder."""
    return scan.iter_index(_folder(out))


def read_failures(out: PathLike) -> list[dict[str, Any]]:
    """The rows of ``out/failures.jsonl``, one dict per job that failed for good (``job_id``,
    ``prompt``, ``class``, ``message``, ``attempts``, ...)."""
    return index.read_failures(_folder(out))


def _manifest(manifest: ManifestLike) -> Manifest:
    return manifest if isinstance(manifest, Manifest) else load_manifest(manifest)


def _folder(out: PathLike) -> Path:
    path = Path(out)
    if not path.is_dir():
        raise UsageError(f"{path} is not an output folder (no such directory)")
    return path
