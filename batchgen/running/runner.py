"""Run a checked manifest with decided ``Settings``: the engine under ``batchgen.run`` and the CLI.

This layer builds the objects (journal, emulator when asked, HTTP clients, queue client,
window, scheduler), writes the output folder's ``run.log``, manifest copy and gallery, and hands
every event to one ``on_event`` callback, plus a ``Snapshot`` of the counts every
``progress_every`` seconds. It never prints and never touches the terminal: the CLI draws its
progress bar and summary from the same callback and the returned ``RunResult``.

Signals are installed only when asked (``handle_signals=True``, as the CLI does): a library
must not take Ctrl-C away from a notebook. Then the first SIGINT/SIGTERM stops submitting and
lets paid requests finish and download, and the second stops at once. Cancelling the awaiting
task stops at once too. Either way the journal is consistent and the same call resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from batchgen._version import __version__
from batchgen.config import Settings
from batchgen.errors import BatchgenError, DiskFull, is_disk_full
from batchgen.fal import Endpoints, QueueClient
from batchgen.journal.origin import describe
from batchgen.journal.writer import JOURNAL_NAME, Journal
from batchgen.manifest import Manifest, plan
from batchgen.outputs.download import sweep_parts
from batchgen.outputs.index import METADATA, cut_torn_tail, ensure_index
from batchgen.outputs.rebuild import rewrite_failures
from batchgen.outputs.reserve import free_bytes
from batchgen.outputs.scan import compact_index
from batchgen.outputs.sources import write_sources
from batchgen.outputs.status import run_command
from batchgen.outputs.thumbs import THUMBS
from batchgen.outputs.workers import CheckPool, machine_cores
from batchgen.planning.jobs import JobState
from batchgen.planning.paths import IMAGES_DIR
from batchgen.planning.pricing import estimate_cost, usd
from batchgen.planning.summary import Tally
from batchgen.running.controls import describe_controls
from batchgen.running.events import Planned, Ready, StopReason, TellFailed
from batchgen.running.notify import end_message, tell_the_end
from batchgen.running.overnight import as_run, disk_notice, no_room, stop_line
from batchgen.running.preflight import check_before_folder
from batchgen.running.replacing import replace_rejected, replacing_line
from batchgen.running.runlog import RunLog
from batchgen.running.scheduler import Scheduler
from batchgen.running.setup import clients, gallery_every, receiver, refresh_view, signals, target
from batchgen.running.snapshot import (
    Delivery,
    OnEvent,
    snapshot_of,
    tick,
)
from batchgen.running.summary import Summary, build_summary
from batchgen.running.window import make_window

S = JobState


# Asked, once the run knows what it will submit and before it does: False sends nothing new.
Approve = Callable[[Ready], bool | Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a run ended. ``done``/``failed``/``unfinished`` count jobs across every run into
    ``out_dir`` (the journal is the truth); ``images`` counts the images this run saved."""

    out_dir: Path
    exit_code: int  # what `batchgen run` exits with (summary.exit_code): 0, 1, 2, 3, 4, 130
    done: int
    failed: Mapping[str, int]  # jobs failed for good, by class (content_policy_violation, ...)
    unfinished: int  # pending or in flight when the run ended: run again to resume
    images: int
    # Estimated USD that fal may bill for the folder, across its runs (fal bills per token;
    # see `batchgen plan`); the same figure as `batchgen status`, the gallery and --max-cost.
    spent: float
    stop: StopReason | None  # why it stopped early: budget, stop_at, declined, interrupted, fatal
    fatal: str | None  # why the run stopped at once: fal refused the key or the account, or a
    # folder that holds real work was given to an emulator (exit 2)
    summary: Summary
    spent_run: float = 0.0  # the part of ``spent`` this run added
    rehearsal: float = 0.0  # what the folder's emulator requests would cost on fal (unbilled)

    @property
    def ok(self) -> bool:
        """Every job downloaded."""
        return self.exit_code == 0

    def lines(self) -> list[str]:
        """The end-of-run summary as `batchgen run` prints it (and run.log records it)."""
        return self.summary.lines()


async def execute(
    manifest: Manifest,
    settings: Settings,
    *,
    on_event: OnEvent | None = None,
    progress_every: float | None = None,
    handle_signals: bool = False,
    approve: Approve | None = None,
) -> RunResult:
    """Plan ``manifest`` into the journal in ``settings.out_dir``, run it, and report.

    Before its first submit the run announces itself (a ``Ready`` event: what it will submit
    and its estimated cost, where, the plan's notices) and asks ``approve`` when given: a
    False answer submits nothing new (paid requests are still fetched), stop ``declined``.

    Raises UsageError before the folder is made or touched when it cannot be one, or when an
    ``--endpoint`` run has no key and the server is not an emulator (``preflight``);
    JournalError when the folder belongs to another manifest or is in use, DiskFull
    when the disk filled before the run could stop by itself; a job's failure is a recorded
    row, never an exception. An exception raised by ``on_event`` is re-raised once the run
    has ended cleanly (events stop reaching it after the first).
    """
    await check_before_folder(settings)
    try:
        return await _in_folder(
            manifest, settings, on_event, progress_every, handle_signals, approve
        )
    except Exception as exc:
        if is_disk_full(exc) and not isinstance(exc, DiskFull):  # an OSError, SQLite's own
            raise no_room(settings.out_dir) from None
        raise


async def _in_folder(
    manifest: Manifest,
    settings: Settings,
    on_event: OnEvent | None,
    progress_every: float | None,
    handle_signals: bool,
    approve: Approve | None,
) -> RunResult:
    out = settings.out_dir
    out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out, redact=settings.redact)
    deliver = Delivery(on_event, log)
    try:
        journal = Journal.open(
            out / JOURNAL_NAME,
            manifest_sha256=manifest.sha256,
            version=__version__,
            settings=settings.public(),
            manifest_path=str(manifest.path),
            allow_manifest_change=settings.options.reuse_folder,
        )
    except BaseException:  # another manifest's folder, or in use: a notebook goes on, so close
        log.close()
        raise
    code = 1
    try:
        uncopied = write_sources(out, manifest)  # the manifest and every file it read, as run
        if uncopied:
            log.write(
                f"manifest: {len(uncopied)} reference images (over 1 GiB) kept in "
                ".manifest/files.json by sha256 only, not copied"
            )
        ensure_index(out)  # a folder where nothing succeeds yet is still a valid folder
        log.write(
            f"start: batchgen {__version__}, {settings.manifest_path} -> {out} "
            f"({settings.target}{', ' + settings.endpoint if settings.endpoint else ''})"
        )
        log.write(
            "controls: "
            + describe_controls(
                settings.controls, settings.stop_at, settings.notify, settings.options.on_exit
            )
        )
        # The identity covers every file the manifest read (manifest/identity.py): a prompts
        # file or a reference edited since the last run re-plans, as an edited manifest does.
        notices = manifest.notices
        if journal.needs_plan:
            tally, specs = Tally(), plan(manifest)  # the plan's notices, from the same pass
            report = journal.add_jobs(
                tally.feed(specs), cost_of=lambda s: estimate_cost(s, manifest.pricing)
            )
            notices = tally.summary(manifest, specs).notices
            deliver(Planned(report.new, report.kept, report.not_in_manifest))
        replacing = ""
        if settings.options.replace_rejected:  # one new take a rejected image (marks.sqlite)
            found = replace_rejected(journal, out, lambda s: estimate_cost(s, manifest.pricing))
            replacing = replacing_line(found)
        # and thumbnails a killed worker process was writing (their .part names)
        removed = sum(sweep_parts(out / d) for d in (IMAGES_DIR, THUMBS) if (out / d).is_dir())
        if cut_torn_tail(out / METADATA):
            log.write("resume: cut off an index line a crash left half-written")
        if removed:
            log.write(f"resume: removed {removed} partial downloads left by a crash")
        try:
            result = await _execute(
                journal,
                manifest,
                settings,
                deliver,
                progress_every,
                handle_signals,
                approve,
                notices,
                replacing,
            )
        except BatchgenError as exc:  # refused before submitting (recovery): say so in runs
            code = exc.exit_code
            raise
        # The jobs failed now, exactly, whatever a crash between a failure and its row did.
        # (Not on a full disk: the next run does it, the rows appended so far stand.)
        if result.stop is not StopReason.DISK_FULL:
            rewrite_failures(journal, out)
            if compact_index(out):  # an image made again left its old row: one row each
                log.write("index: rows of images made again were compacted")
        if result.fatal is not None:
            log.write(f"fatal: {result.fatal}")
        for line in result.lines():
            log.write(line)
        refresh_view(out, log.write)
        code = result.exit_code
        if settings.notify is not None or settings.options.on_exit:  # logged, never raised
            message = end_message(
                result.summary, name=settings.manifest_name, images=result.images, exit_code=code
            )
            await tell_the_end(
                message,
                notify=settings.notify,
                on_exit=settings.options.on_exit,
                log=log.write,
                warn=lambda line: deliver(TellFailed(settings.redact(line))),
            )
    finally:
        journal.close(code)
        log.write(f"exit {code}")
        log.close()
    deliver.raise_if_failed()
    return result


async def _execute(
    journal: Journal,
    manifest: Manifest,
    settings: Settings,
    deliver: Delivery,
    progress_every: float | None,
    handle_signals: bool,
    approve: Approve | None,
    notices: tuple[str, ...],
    replacing: str = "",
) -> RunResult:
    start = time.monotonic()
    sched: Scheduler | None = None
    async with (
        target(settings) as base,
        clients(settings) as (http, media),
        # Worker processes for hashing, checks and thumbnails: the other cores (workers.py)
        CheckPool(min(machine_cores(), settings.options.download_concurrency)) as checks,
        contextlib.AsyncExitStack() as stack,
    ):
        client = QueueClient(
            http,
            endpoints=Endpoints.single(base) if base else Endpoints(),
            key=settings.key,
            redact=settings.redact,
            on_retry=lambda ev: sched.on_client_retry(ev) if sched is not None else None,
        )
        webhook = await stack.enter_async_context(receiver(settings, client, journal, deliver))
        sched = Scheduler(
            journal,
            client,
            media,
            settings=settings,
            window=make_window(settings.options.concurrency),
            manifest_sha256=manifest.sha256,
            on_event=deliver,
            checks=checks,
            webhook=webhook,
        )
        # An overnight run can be looked at from a browser: the gallery catches up now and then.
        await stack.enter_async_context(gallery_every(settings.out_dir, log=journal.event))
        await sched.prepare()  # the folder in order: what follows is what will happen
        ready = _ready(journal, sched, settings, notices, replacing)
        deliver(ready)
        if approve is not None and ready.to_submit:
            try:
                approved = await _asked(approve, ready)
            except BaseException:  # refused (a UsageError) or interrupted: nothing was sent
                sched.reserve.discard()
                raise
            if not approved:
                sched.stop(reason=StopReason.DECLINED)
        total = sum(journal.counts().values())
        s = sched

        def snapshot() -> None:
            if deliver.wanted:
                deliver(snapshot_of(journal, s, total))

        snapshot()
        ticker = asyncio.create_task(tick(snapshot, progress_every))
        try:
            with signals(sched, enabled=handle_signals):
                await sched.run()
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        snapshot()
    fatal = sched.fatal
    t = journal.tallies()
    failures = [(g.error_class, g.count, g.example) for g in journal.failures_by_class()]
    spent0, rehearsal0 = sched.spent_at_start
    summary = build_summary(
        journal.counts(),
        failures=failures,
        journal_retries=t.retries,
        possible_duplicates=t.possible_duplicates,
        lost=t.lost,
        spent=t.spent,
        spent_run=t.spent - spent0,
        rehearsal=t.rehearsal,
        rehearsal_run=t.rehearsal - rehearsal0,
        stats=sched.stats,
        wall_seconds=time.monotonic() - start,
        stop=sched.stop_reason,
        resume_hint=run_command(settings.out_dir, str(manifest.path), settings.public()),
        usages=journal.usages(),
        out_dir=str(settings.out_dir),
        webhooks=sched.webhook.inbox.counts() if sched.webhook is not None else None,
        stop_line=stop_line(
            sched.stop_reason,
            out_dir=settings.out_dir,
            free=free_bytes(settings.out_dir),
            counts=journal.counts(),
            cause=sched.ctx.stop.causes.get(StopReason.LOCKED, ""),
        ),
    )
    return RunResult(
        out_dir=settings.out_dir,
        exit_code=summary.exit_code,
        done=summary.done,
        failed=dict(summary.failed),
        unfinished=summary.unfinished,
        images=sched.stats.images,
        spent=summary.spent,
        spent_run=summary.spent_run,
        rehearsal=summary.rehearsal,
        stop=summary.stop,
        fatal=str(fatal) if fatal is not None else None,
        summary=summary,
    )


def _ready(
    journal: Journal,
    sched: Scheduler,
    settings: Settings,
    notices: tuple[str, ...],
    replacing: str = "",
) -> Ready:
    jobs, images, cost = journal.to_submit()
    c = journal.counts()
    return Ready(
        to_submit=jobs,
        images=images,
        cost=usd(cost),
        done=c[S.DOWNLOADED],
        failed=c[S.FAILED],
        following=c[S.QUEUED] + c[S.RUNNING] + c[S.COMPLETED],
        target=describe(sched.origin),
        out_dir=str(settings.out_dir),
        rehearsal=sched.rehearsal,
        stale=journal.stale_images(),
        replacing=replacing,
        notices=(
            *as_run(notices, inline=settings.options.inline_uploads, origin=sched.origin),
            *_disk(journal, images, sched.rehearsal, settings.out_dir),
        ),
    )


def _disk(journal: Journal, images: int, emulated: bool, out: Path) -> tuple[str, ...]:
    """A notice when the images to make are not expected to fit on the folder's disk."""
    sample = (r.spec for r in itertools.islice(journal.iter_jobs(S.PENDING, chunk=100), 100))
    notice = disk_notice(sample, images, emulated=emulated, free=free_bytes(out), out_dir=out)
    return (notice,) if notice else ()


async def _asked(approve: Approve, ready: Ready) -> bool:
    answer = approve(ready)
    return bool(await answer if inspect.isawaitable(answer) else answer)
