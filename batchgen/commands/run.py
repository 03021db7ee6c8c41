"""`batchgen run MANIFEST`: plan into the journal, run the scheduler, report, exit 0/1/2/3/130.

This layer builds the objects (settings, journal, HTTP clients, queue client, window,
scheduler), owns the terminal (progress, the summary) and the signals: the first Ctrl-C or
SIGTERM stops submitting and lets paid requests finish and download (exit 130), the second
stops at once. Either way the journal is consistent and the same command resumes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO

import httpx

from batchgen import __version__
from batchgen.commands.progress import Progress, Snapshot
from batchgen.config import Settings, Target, build_settings
from batchgen.download import sweep_parts
from batchgen.errors import AuthError
from batchgen.falqueue import Endpoints, QueueClient
from batchgen.index import write_manifest_copy
from batchgen.jobs import JobState
from batchgen.journal import JOURNAL_NAME, Journal
from batchgen.manifest import Manifest, estimate_cost, load_manifest, plan
from batchgen.paths import IMAGES_DIR
from batchgen.runlog import RunLog
from batchgen.scheduler import Scheduler
from batchgen.summary import Event, Planned, StopReason, Summary, build_summary
from batchgen.window import make_window

S = JobState
KEEPALIVE = 20  # idle connections kept per client (httpx's default)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", help="a YAML, CSV or JSONL manifest")
    p.add_argument("--out", help="output folder (default: outputs/<manifest name>)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--emulate", action="store_true", help="run against the built-in emulator")
    where.add_argument("--endpoint", help="base URL of a fal-compatible server (BATCHGEN_ENDPOINT)")
    p.add_argument("--concurrency", default="auto", help="N, or auto (default) to find the limit")
    p.add_argument("--max-cost", type=float, help="stop submitting before this estimate in USD")
    p.add_argument("--max-attempts", type=int, default=3, help="attempts per job (default 3)")
    p.add_argument(
        "--deadline", type=float, default=1200.0, help="seconds per request (default 1200)"
    )
    p.add_argument("--watch", choices=["stream", "poll"], default="stream")
    p.add_argument("--download-concurrency", type=int, default=8)
    p.add_argument("--max-image-bytes", type=int, default=50_000_000)
    p.add_argument("--retry-failed", action="store_true", help="put failed jobs back in the queue")
    p.add_argument("--inline-uploads", action="store_true", help="send local files as data URIs")
    p.add_argument("--faults", help="emulator fault spec or profile (with --emulate)")
    p.add_argument("--time-scale", type=float, help="emulator time scale (with --emulate)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    manifest = load_manifest(Path(args.manifest))
    # Settings (and the key check) come before anything touches the output folder.
    settings = build_settings(vars(args), os.environ, manifest_name=manifest.name)
    return asyncio.run(run_manifest(manifest, settings, stderr=sys.stderr))


async def run_manifest(
    manifest: Manifest, settings: Settings, *, stderr: IO[str], signals: bool = True
) -> int:
    out = settings.out_dir
    out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out, redact=settings.key.redact)
    journal = Journal.open(
        out / JOURNAL_NAME,
        manifest_sha256=manifest.sha256,
        version=__version__,
        settings=settings.public(),
        manifest_path=str(manifest.path),
    )
    code = 1
    try:
        write_manifest_copy(out, manifest.path)
        log.write(
            f"start: batchgen {__version__}, {settings.manifest_path} -> {out} "
            f"({settings.target}{', ' + settings.endpoint if settings.endpoint else ''})"
        )
        # Local files can change while the manifest does not: re-plan (cheap, incremental).
        if journal.needs_plan or manifest.files:
            report = journal.add_jobs(
                plan(manifest), cost_of=lambda s: estimate_cost(s, manifest.pricing)
            )
            log.on_event(Planned(report.new, report.kept, report.not_in_manifest))
        removed = sweep_parts(out / IMAGES_DIR) if (out / IMAGES_DIR).is_dir() else 0
        if removed:
            log.write(f"resume: removed {removed} partial downloads left by a crash")
        summary = await _execute(journal, manifest, settings, log, stderr, signals)
        for line in summary.lines():
            log.write(line)
            print(f"batchgen: {line}", file=stderr)
        _gallery(out, log)
        code = summary.exit_code
        return code
    finally:
        journal.close(code)
        log.write(f"exit {code}")
        log.close()


async def _execute(
    journal: Journal,
    manifest: Manifest,
    settings: Settings,
    log: RunLog,
    stderr: IO[str],
    signals: bool,
) -> Summary:
    start = time.monotonic()
    progress: Progress | None = None
    sched: Scheduler | None = None

    def on_event(event: Event) -> None:
        log.on_event(event)
        if progress is not None:
            progress.on_event(event)

    async with _target(settings) as base, _clients(settings) as (http, media):
        client = QueueClient(
            http,
            endpoints=Endpoints.single(base) if base else Endpoints(),
            key=settings.key,
            on_retry=lambda ev: sched.on_client_retry(ev) if sched is not None else None,
        )
        sched = Scheduler(
            journal,
            client,
            media,
            settings=settings,
            window=make_window(settings.concurrency, hi=settings.max_window),
            manifest_sha256=manifest.sha256,
            on_event=on_event,
        )
        progress = Progress(
            lambda: _snapshot(journal, sched),
            total=sum(journal.counts().values()),
            stream=stderr,
            bar=not settings.quiet and stderr.isatty(),
        )
        ticker = asyncio.create_task(progress.tick())
        fatal: AuthError | None = None
        try:
            with _signals(sched, enabled=signals, stderr=stderr):
                await sched.run()
        except AuthError as exc:
            fatal = exc
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            progress.refresh()
            progress.close()
    if fatal is not None:
        log.write(f"fatal: {fatal}")
        print(f"batchgen: {fatal}", file=stderr)
    t = journal.tallies()
    failures = [(g.error_class, g.count, g.example) for g in journal.failures_by_class()]
    return build_summary(
        journal.counts(),
        failures=failures,
        journal_retries=t.retries,
        possible_duplicates=t.possible_duplicates,
        lost=t.lost,
        spent=journal.spent_estimate(),
        stats=sched.stats,
        wall_seconds=time.monotonic() - start,
        stop=StopReason.FATAL if fatal is not None else sched.stop_reason,
        resume_hint=f"batchgen status {settings.out_dir}",
    )


def _snapshot(journal: Journal, sched: Scheduler) -> Snapshot:
    c = journal.counts()
    return Snapshot(
        pending=c[S.PENDING] + c[S.UNKNOWN],
        queued=c[S.QUEUED],
        running=c[S.RUNNING],
        in_flight=sched.in_flight,
        done=c[S.DOWNLOADED],
        failed=c[S.FAILED],
        spent=journal.spent_estimate(),
        window=sched.window.size,
    )


@contextlib.asynccontextmanager
async def _target(settings: Settings) -> AsyncIterator[str | None]:
    """The base URL of the server to talk to (None: real fal), starting the emulator if asked."""
    if settings.target is not Target.EMULATE:
        yield settings.endpoint
        return
    from batchgen.emulator import EmulatorConfig, serve

    config = EmulatorConfig(
        time_scale=settings.time_scale if settings.time_scale is not None else 1.0,
        faults=settings.faults or "none",
        seed=settings.seed,
    )
    async with serve(config, host="127.0.0.1", port=0) as url:
        yield url


@contextlib.asynccontextmanager
async def _clients(
    settings: Settings,
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    # One open stream per request in flight, plus polls and results: the pool must hold the
    # whole window or watchers would queue behind each other for a connection.
    n = max(settings.concurrency or settings.max_window, 1) * 2 + 16
    # Few idle connections kept: httpcore scans every pooled connection on every request,
    # and a pool of a hundred idle sockets costs more CPU than reconnecting on loopback.
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=KEEPALIVE)
    timeout = httpx.Timeout(60.0, connect=15.0)
    media_limits = httpx.Limits(max_connections=settings.download_concurrency * 2 + 4)
    async with (
        httpx.AsyncClient(limits=limits, timeout=timeout) as http,
        httpx.AsyncClient(limits=media_limits, timeout=timeout) as media,
    ):
        yield http, media


@contextlib.contextmanager
def _signals(sched: Scheduler, *, enabled: bool, stderr: IO[str]) -> Iterator[None]:
    """First SIGINT/SIGTERM: stop submitting, finish what is paid for. Second: stop now."""
    if not enabled:
        yield
        return
    loop = asyncio.get_running_loop()
    hits = 0

    def handler() -> None:
        nonlocal hits
        hits += 1
        if hits == 1:
            print(
                "\nbatchgen: stopping: no new submits; waiting for paid requests to finish"
                " and download (press Ctrl-C again to stop at once)",
                file=stderr,
            )
        sched.stop(now=hits > 1)

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, handler)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no unix signals
            pass
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _gallery(out: Path, log: RunLog) -> None:
    """Regenerate index.html when the gallery module offers it; a failure is only logged."""
    try:
        from batchgen.gallery import build_gallery
    except ImportError:
        return
    try:
        build_gallery(out)
    except Exception as exc:  # the images and the index are the product; the page is a view
        log.write(f"gallery: not rebuilt ({type(exc).__name__}: {exc})")
