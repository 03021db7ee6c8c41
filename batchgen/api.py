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
import inspect
import os
from collections.abc import Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, ParamSpec

from batchgen.config import build_settings
from batchgen.errors import UsageError
from batchgen.manifest import Manifest
from batchgen.manifest import load_manifest as _load
from batchgen.manifest import plan as plan_jobs
from batchgen.options import RunOptions
from batchgen.outputs import index, scan
from batchgen.planning.summary import PlanSummary, summarize
from batchgen.running.runner import Approve, RunResult, execute
from batchgen.running.snapshot import OnEvent

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
    on_event: OnEvent | None = None,
    approve: Approve | None = None,
    progress_every: float | None = 5.0,
    handle_signals: bool = False,
    environ: Mapping[str, str] | None = None,
    **options: Any,
) -> RunResult:
    """Run ``manifest`` (a ``Manifest`` or a path) to the end, resuming its output folder.

    The options are ``batchgen run``'s flags as keywords, with the same names, defaults and
    rules (each listed below): ``out`` (default ``outputs/<manifest name>``), ``emulate`` (the
    built-in emulator, no key, no network) or ``endpoint`` (a fal-compatible server),
    ``concurrency`` (a number, or ``"auto"`` to find the account's limit), ``max_cost`` (stop
    submitting before this estimate in USD), and so on. An unknown keyword or a bad value is
    a ``UsageError`` naming it, before anything is written. The fal key comes from
    ``environ`` (default ``os.environ``): ``FAL_KEY``, or ``FAL_KEY_ID`` and
    ``FAL_KEY_SECRET``; it is never written anywhere.

    ``on_event`` receives every event as it happens (``Submitted``, ``Started``,
    ``Finished``, ``Saved``, ``Failed``, ``Retrying``, ...) and a ``Snapshot`` of the counts
    before the first submit, every ``progress_every`` seconds (None: never) and at the end.
    It is called on the event loop: keep it quick. Before its first submit the run sends a
    ``Ready`` event (jobs to submit, their images and estimated cost, where, the plan's
    notices) and, when ``approve`` is given, calls it with that ``Ready``: a False answer (or
    an awaitable of one) submits nothing new, and the run ends with ``stop`` ``declined``.

    Returns a ``RunResult``; its ``exit_code`` is what the CLI would exit with: 0 all done,
    1 some jobs failed for good (or were left unfinished), 2 stopped by a fatal error
    (``fatal`` says why: fal refused the key or the account, or an ``endpoint`` server turned
    out to be an emulator while the folder holds real work), 3 stopped at the budget, 4
    stopped at ``stop_at`` with jobs left, 130 interrupted or not approved. Raises
    ``ManifestError``, ``UsageError`` (bad option, no key) before anything is written.
    ``handle_signals=True`` makes the first Ctrl-C stop submitting and finish what is paid for,
    the second stop at once; without it, cancelling the task stops at once. Either way the same
    call resumes.
    """
    m = _manifest(manifest)
    env = os.environ if environ is None else environ
    settings = build_settings(RunOptions.parse(options), env, m)
    return await execute(
        m,
        settings,
        on_event=on_event,
        progress_every=progress_every,
        handle_signals=handle_signals,
        approve=approve,
    )


def _options_signature(fn: Callable[..., Any]) -> inspect.Signature:
    """``fn``'s signature with ``**options`` spelled out as one keyword per ``RunOptions``
    field (its default and type), so ``help()`` and editors show what ``run`` takes."""
    sig = inspect.signature(fn)
    params = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
    for name, info, _ in RunOptions.flags():
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=info.default,
                annotation=info.annotation,
            )
        )
    return sig.replace(parameters=params)


def _options_doc() -> str:
    lines = ["\n    Options (each also a flag of ``batchgen run``):\n"]
    for name, info, _ in RunOptions.flags():
        lines.append(f"    ``{name}`` (default ``{info.default!r}``): {info.description}")
    return "\n".join(lines) + "\n"


run.__signature__ = _options_signature(run)  # type: ignore[attr-defined]
run.__doc__ = (run.__doc__ or "") + _options_doc()


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
    """The rows of ``out/metadata.jsonl``, one dict per image (docs/outputs.md, The index:
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
