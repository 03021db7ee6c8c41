"""The asyncio pipeline behind ``batchgen run``: submit within a window, watch, fetch, download.

The story of a run, as ``Scheduler.run`` tells it:

1. ``prepare``: what the server is, and the folder put in order (``recovery``).
2. ``_resume``: requests an earlier run left on the server are followed again, results it
   left are downloaded first.
3. ``_submit_loop``: claim jobs from the journal while the window has room, within the budget
   and before ``--stop-at`` (no task per job: memory stays flat in the number of jobs); each
   claim gets one task that submits it (``Submitter``) and follows its request to a committed
   result (``Follower``).
4. Drain: wait until nothing is in flight and the ``DownloadPool`` has saved every image, or
   until a stop says otherwise.

Every state change is committed before the action it enables: SUBMITTING before the POST,
the request id the moment the POST answers, the result JSON before any download. The parts
share one ``RunContext``; how a failure is read is ``retry.classify``'s, how it is written
down ``Recorder``'s, and why the run stops ``Stop``'s. Everything is reported through
``on_event``.

``stop()`` ends submitting and lets paid requests finish and download; ``stop(now=True)``
cancels at once. Both leave the journal consistent: a POST cut short is UNKNOWN (resubmitted
and counted), a watched request keeps its id (re-attached), a half download leaves no file.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

import httpx

from batchgen.config import Settings
from batchgen.errors import DiskFull, is_disk_full
from batchgen.fal import Handle, QueueClient
from batchgen.fal.platform import PlatformClient
from batchgen.fal.uploads import Uploads
from batchgen.journal.groupsync import GroupSync
from batchgen.journal.origin import emulator_at, is_rehearsal
from batchgen.journal.writer import JobRow, Journal
from batchgen.outputs.downloader import DownloadPool
from batchgen.outputs.reserve import Reserve
from batchgen.outputs.saved import find_broken
from batchgen.outputs.workers import CheckPool
from batchgen.planning.jobs import JobState
from batchgen.retry import RetryEvent, Sleep
from batchgen.running import clock as stop_clock
from batchgen.running import events as ev
from batchgen.running.context import Emitter, RunContext
from batchgen.running.follow import Follower
from batchgen.running.lookup import KeptResults, Lookup
from batchgen.running.pacing import Pacing
from batchgen.running.reach import Watch
from batchgen.running.recorder import Recorder
from batchgen.running.recovery import Recovery, recover
from batchgen.running.stats import RunStats
from batchgen.running.stop import Stop
from batchgen.running.submitter import Submitter
from batchgen.running.watching import QueueWatch, Watching, WebhookWatch
from batchgen.running.webhooks import Webhook
from batchgen.running.window import RunTimes, Window, budget_allows

S = JobState
CLAIM_BATCH = 16  # jobs claimed per journal transaction when there is no budget to check


class Scheduler:
    def __init__(
        self,
        journal: Journal,
        client: QueueClient,
        media: httpx.AsyncClient,
        *,
        settings: Settings,
        window: Window,
        manifest_sha256: str,
        on_event: Callable[[ev.Event], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        checks: CheckPool | None = None,
        webhook: Webhook | None = None,
        history: PlatformClient | None = None,
    ) -> None:
        o = settings.options
        emit, changed = Emitter(on_event), asyncio.Event()
        stop = Stop(emit, changed)
        # Room for the journal's last transactions when the disk fills (outputs/reserve.py).
        self.reserve = Reserve(settings.out_dir)
        journal.on_full = self._disk_full
        record = Recorder(
            journal,
            out_dir=settings.out_dir,
            max_attempts=o.max_attempts,
            emit=emit,
            stop=stop,
            on_disk_full=self._disk_full,
        )
        # Whether the server answers, from what every request sees; submits wait for it.
        reach = Watch(clock, emit, back=changed.set)
        self.ctx = ctx = RunContext(
            journal=journal,
            client=client,
            settings=settings,
            emit=emit,
            record=record,
            reach=reach,
            stop=stop,
            changed=changed,
            clock=clock,
            wall=wall,
            sleep=sleep,
            rng=rng,
        )
        self.pacing = Pacing(window, emit, changed)
        self.pool = DownloadPool(
            journal,
            media,
            record,
            out_dir=settings.out_dir,
            manifest_sha256=manifest_sha256,
            max_image_bytes=o.max_image_bytes,
            workers=o.download_concurrency,
            changed=changed,
            refetch=lambda row: self._results.read_again(row),
            checks=checks,
            sleep=sleep,
            rng=rng,
        )
        self.webhook = webhook
        watching: Watching = (
            WebhookWatch(webhook.inbox, client, self.pacing.runtimes, clock=clock, sleep=sleep)
            if webhook is not None
            else QueueWatch(client, o.watch, self.pacing.runtimes, record, clock=clock, sleep=sleep)
        )
        self._follower = Follower(ctx, watching, self.pacing, self.pool)
        self.origin = settings.origin  # where this run's requests are made (journal.origin)
        self.rehearsal = is_rehearsal(self.origin)
        # Local files -> URLs. The in-process emulator forgets its storage when the run ends:
        # URLs from an earlier run are reused only on fal and --endpoint servers.
        self._uploads = Uploads(
            journal,
            client,
            folder=settings.manifest_path.parent,
            inline=o.inline_uploads,
            reuse=not self.rehearsal,
            origin=self.origin,
        )
        self.durable = GroupSync(journal.sync_wal)  # request ids fsynced off the loop
        url = webhook.url if webhook is not None else None
        self._submitter = Submitter(ctx, self._uploads, self.durable, webhook=url)
        # fal's record of its requests: lost submits looked for before they are sent again,
        # expired results read from it (lookup.py). The same account and hosts as ``client``.
        self.history = history or client.platform()
        times, guard = self.pacing.runtimes, self._no_room_stops
        self._lookup = Lookup(ctx, self.history, self._found, slowest=times.slowest, guard=guard)
        self._submitter.on_lost = self._lookup.start
        self._results = KeptResults(ctx, self.history)
        self._follower.kept = self._results.from_history
        self._tasks: set[asyncio.Task[None]] = set()
        self._unstarted: set[str] = set()  # claimed, but their task has not run yet
        self._recovery: Recovery | None = None  # what prepare() did to the folder
        # (billable, rehearsal) when this run began: what it adds is its own spend
        self.spent_at_start = journal.spent_estimate(), journal.rehearsal_estimate()

    # -- what the runner and the tests read -------------------------------------------------

    @property
    def stats(self) -> RunStats:
        return self.ctx.emit.stats

    @property
    def stop_reason(self) -> ev.StopReason | None:
        return self.ctx.stop.reason

    @property
    def fatal(self) -> Exception | None:
        """Why the run stopped at once for an answer (a refused key, a folder of real work)."""
        return self.ctx.stop.error

    @property
    def window(self) -> Window:
        return self.pacing.window

    @property
    def runtimes(self) -> RunTimes:
        return self.pacing.runtimes

    @property
    def reach(self) -> Watch:
        return self.ctx.reach

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    # -- control ----------------------------------------------------------------------------

    def stop(self, *, now: bool = False, reason: ev.StopReason = ev.StopReason.INTERRUPTED) -> None:
        """First call: submit nothing more, finish what is paid for. ``now``: cancel all."""
        self.ctx.stop.request(reason, now=now)
        if now:
            for task in list(self._tasks):
                task.cancel()

    def _disk_full(self) -> bool:
        """The disk is full: give back the reserve, so the results of requests in flight can
        still be recorded, and submit nothing more. True when that made room."""
        freed = self.reserve.release() > 0
        self.ctx.stop.request(ev.StopReason.DISK_FULL)
        return freed

    def on_client_retry(self, retry: RetryEvent) -> None:
        """Hook for ``QueueClient(on_retry=...)``: its retried GETs are logged like ours."""
        self.ctx.reach.failed(retry.outcome)
        self.ctx.record.retrying(None, retry.op, retry.outcome, retry.delay, retry.attempt)

    # -- the run ----------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Before anything is submitted: what the server is, and the folder put in order
        (``recovery``). Sends nothing but one question to an ``--endpoint`` server. ``run``
        calls it unless the caller did (the runner announces the run in between)."""
        if self._recovery is not None:
            return
        s, journal = self.ctx.settings, self.ctx.journal
        if s.endpoint and await self.ctx.client.is_emulator():
            # A rehearsal against `batchgen emulator`: its work counts as the emulator's.
            self.origin, self.rehearsal = emulator_at(s.endpoint), True
            self._uploads.origin = self.origin
        journal.interrupted_submits()
        # Saved images checked against the journal (outputs/saved.py), repaired by recover.
        broken = await find_broken(journal, s.out_dir, verify=s.options.verify)
        self._recovery = recover(
            journal,
            s.out_dir,
            origin=self.origin,
            endpoint=s.endpoint,
            retry_failed=s.options.retry_failed,
            broken=broken,
        )
        self._submitter.no_emulator = self._recovery.real_work
        self.spent_at_start = journal.spent_estimate(), journal.rehearsal_estimate()
        self.reserve.keep()

    async def run(self) -> None:
        """Resume, submit, drain. A fatal stop is left in ``fatal`` for the caller."""
        await self.prepare()
        self.pool.start()
        stop_at = self.ctx.settings.stop_at
        timer = stop_clock.start_timer(stop_at, self.ctx.wall, self.ctx.sleep, self.stop)
        try:
            self._resume()
            await self._submit_loop()
            while not self.ctx.stop.now and self._busy:
                await self._changed()
        finally:
            stop_clock.cancel(timer)
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, self._lookup.cancel(), return_exceptions=True)
            await self.pool.close()
            for job in self._unstarted:  # cancelled before their first step: nothing sent
                self.ctx.journal.transition(job, S.PENDING)
            self._unstarted.clear()
            self.reserve.discard()  # kept for this run's last transactions only

    def _resume(self) -> None:
        journal, rec = self.ctx.journal, self._recovery or Recovery()
        unknown = journal.counts()[S.UNKNOWN]
        completed: list[JobRow] = []
        for row in journal.attached():
            if row.state is S.COMPLETED:
                completed.append(row)
            else:
                self.pacing.reattached += 1
                self._spawn(self._reattach(row))
        self.pool.resume(completed)
        resumed = ev.Resumed(self.pacing.reattached, len(completed), unknown, *rec.resumed())
        self.ctx.emit(resumed)
        if resumed != ev.Resumed(0, 0, 0, 0):
            journal.event(None, "resume", repr(resumed))
        if unknown:
            self._lookup.start()

    # -- lost submits and expired results: fal's history (lookup.py) -------------------------

    def _found(self, job_id: str, handle: Handle, at: float) -> None:
        """Follow a request fal's history says a lost submit made (already QUEUED)."""
        row = self.ctx.journal.get(job_id)
        if row is None:
            return
        age = max(0.0, self.ctx.wall() - at)
        self._spawn(self._follower.follow(row, handle, self.ctx.clock() - age, None))

    @property
    def _busy(self) -> bool:
        """Work in flight: requests followed, images to save, lost submits to settle."""
        return bool(self._tasks or self.pool.backlog or self._lookup.busy)

    async def _submit_loop(self) -> None:
        ctx = self.ctx
        cap = ctx.settings.options.max_cost
        while not ctx.stop.requested:
            if stop_clock.due(ctx.settings.stop_at, ctx.wall):  # nothing is sent after it
                self.stop(reason=ev.StopReason.STOP_AT)
                return
            free = self.pacing.window.size - len(self._tasks)
            if ctx.reach.down and self._submitter.busy:
                free = 0  # one submit probes the unreachable server; the rest wait in line
            if free <= 0:
                await self._changed()
                continue
            n = 1 if cap is not None else min(free, CLAIM_BATCH)
            rows = ctx.journal.claim(n, origin=self.origin)
            if not rows:
                if not self._busy:
                    return  # nothing pending, in flight, downloading or lost to requeue
                await self._changed()
                continue
            for i, row in enumerate(rows):
                if not self._budget_allows(row):
                    for r in rows[i:]:  # nothing was sent for these: back in line
                        ctx.journal.transition(r.job_id, S.PENDING)
                    self.stop(reason=ev.StopReason.BUDGET)
                    return
                self._unstarted.add(row.job_id)
                self._spawn(self._fresh(row, len(self._tasks) + 1))

    def _budget_allows(self, row: JobRow) -> bool:
        """Whether ``row`` fits under ``--max-cost`` beside what is spent and in flight (in a
        rehearsal, what fal would bill: the stop rehearses too); announces when it does not."""
        cap, journal = self.ctx.settings.options.max_cost, self.ctx.journal
        if cap is None:
            return True
        emulated = self.rehearsal or self._submitter.saw_emulator
        spent = journal.rehearsal_estimate() if emulated else journal.spent_estimate()
        others = journal.in_flight_estimate() - row.cost  # claim() counts this job in flight
        if budget_allows(spent=spent, in_flight=others, job=row.cost, cap=cap):
            return True
        self.ctx.emit(ev.BudgetReached(spent, others, row.cost, cap))
        return False

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(self._no_room_stops(coro))
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            self.ctx.changed.set()

        task.add_done_callback(done)

    async def _no_room_stops(self, coro: Coroutine[Any, Any, None]) -> None:
        """A job's task that found no room even after the reserve went stops the run at once:
        the journal cannot record more. What it did record is consistent (a transaction that
        failed for room changed nothing); a submit cut short is resent and counted."""
        try:
            await coro
        except DiskFull:
            self.stop(now=True, reason=ev.StopReason.DISK_FULL)
        except OSError as exc:  # a view of the journal (failures.jsonl) found no room
            if not is_disk_full(exc):
                raise
            self._disk_full()

    async def _fresh(self, row: JobRow, in_flight: int) -> None:
        seq = self.pacing.begin()
        try:
            self._unstarted.discard(row.job_id)
            handle = await self._submitter.submit(row)
            if handle is not None:
                first = (in_flight, seq)
                await self._follower.follow(row, handle, self.ctx.clock(), first)
        finally:
            self.pacing.end(seq)

    async def _reattach(self, row: JobRow) -> None:
        assert row.handle is not None
        wall = self.ctx.wall
        # The deadline counts from the original submit, possibly in an earlier process.
        age = max(0.0, wall() - (row.submitted_at or wall()))
        try:
            handle = Handle.from_json(row.handle)
            await self._follower.follow(row, handle, self.ctx.clock() - age, None)
        finally:
            self.pacing.reattached -= 1

    async def _changed(self) -> None:
        """Wait until a part says something changed (a task ended, a download finished, the
        window moved, the server answers again, a stop)."""
        self.ctx.changed.clear()
        await self.ctx.changed.wait()
