"""The asyncio pipeline behind ``batchgen run``: submit within a window, watch, fetch, download.

One submit loop claims jobs from the journal while the window has room (no task per job:
memory stays flat in the number of jobs); one task per request in flight submits it, watches
it (``watcher``), fetches the result the moment it completes and commits it; a separate
``DownloadPool`` fetches the images, so a slow CDN never holds a submission slot. Every state
change is committed before the action it enables: SUBMITTING before the POST, the request id
the moment the POST answers, the result JSON before any download. ``retry.classify`` decides
what a failure means (DESIGN.md's Errors table), ``recorder`` writes it down; the pacing
rules are pure, in ``window``. Everything is reported through ``on_event``.

``stop()`` ends submitting and lets paid requests finish and download; ``stop(now=True)``
cancels at once. Both leave the journal consistent: a POST cut short is UNKNOWN (resubmitted
and counted), a watched request keeps its id (re-attached), a half download leaves no file.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx

from batchgen.config import Settings
from batchgen.errors import AuthError
from batchgen.fal import Handle, InProgress, QueueClient, Queued, Status
from batchgen.fal.retry import Action, Outcome, RetryEvent, Sleep, backoff, classify
from batchgen.fal.uploads import Uploads
from batchgen.journal.origin import emulator_at, is_rehearsal
from batchgen.journal.writer import JobRow, Journal
from batchgen.outputs.downloader import DownloadPool
from batchgen.outputs.index import sync_index
from batchgen.outputs.workers import CheckPool
from batchgen.planning.jobs import JobState
from batchgen.running import clock as stop_clock
from batchgen.running import events as ev
from batchgen.running.durable import GroupSync
from batchgen.running.logs import keep_logs
from batchgen.running.reach import Watch
from batchgen.running.recorder import Recorder
from batchgen.running.recovery import Recovery, recover
from batchgen.running.submitter import Submitter
from batchgen.running.watcher import DeadlineExceeded, cancel, watch
from batchgen.running.window import Observation, RunTimes, Window, budget_allows

if TYPE_CHECKING:  # the webhook stack is imported by webhook runs only (running/setup.py)
    from batchgen.running.webhooks import Inbox

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
    ) -> None:
        self._journal = journal
        self._client = client
        self._media = media
        self._s = settings
        self.window = window
        o = settings.options
        self._emit_to = on_event
        self._clock, self._wall, self._sleep, self._rng = clock, wall, sleep, rng
        self._wake = asyncio.Event()
        self.stats = ev.RunStats()
        self.runtimes = RunTimes()
        self.stop_reason: ev.StopReason | None = None
        self._fatal: AuthError | None = None
        self._stopping = self._stop_now = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._record = Recorder(
            journal, out_dir=settings.out_dir, max_attempts=settings.options.max_attempts,
            emit=self._emit, fatal=self._fatal_stop,
        )  # fmt: skip
        self._pool = DownloadPool(
            journal, media, out_dir=settings.out_dir, manifest_sha256=manifest_sha256,
            max_image_bytes=o.max_image_bytes, workers=o.download_concurrency,
            on_saved=lambda job, n: self._emit(ev.Saved(job, n)), on_failed=self._record.fail,
            on_idle=self._wake.set, sleep=sleep, rng=rng,
            refetch=lambda row: client.result(Handle.from_json(row.handle or {})),
            on_lost=lambda row, msg: self._record.resubmit(row, "expired", msg, lost=True),
            checks=checks, index_sync=GroupSync(lambda: sync_index(settings.out_dir)).wait,
        )  # fmt: skip
        # Whether the server answers, from what every request sees; submits wait for it.
        self.reach = Watch(clock, self._emit, back=self._wake.set)
        self._recovery: Recovery | None = None  # what prepare() did to the folder
        self.inbox: Inbox | None = None  # --watch webhook: where fal's deliveries land
        self._unstarted: set[str] = set()  # claimed, but their task has not run yet
        self._seq = 0  # submit order of this run's requests...
        self._live: set[int] = set()  # ...and which of them are still in flight
        self._reattached = 0  # re-attached requests still in flight
        self.origin = settings.origin  # where this run's requests are made (journal.origin)
        self.rehearsal = is_rehearsal(self.origin)
        # (billable, rehearsal) when this run began: what it adds is its own spend
        self.spent_at_start = journal.spent_estimate(), journal.rehearsal_estimate()
        # Local files -> URLs. The in-process emulator forgets its storage when the run ends:
        # URLs from an earlier run are reused only on fal and --endpoint servers.
        self._uploads = Uploads(journal, client, folder=settings.manifest_path.parent,
                                inline=settings.options.inline_uploads, reuse=not self.rehearsal,
                                origin=self.origin)  # fmt: skip
        self.durable = GroupSync(journal.sync_wal)  # request ids fsynced off the loop
        self._submitter = Submitter(
            journal, client, self._uploads, settings=settings, record=self._record, emit=self._emit,
            abandon=lambda: self._stopping and self.stop_reason is not ev.StopReason.BUDGET,
            fatal=self._fatal_stop, failed=self.reach.failed, answered=self.reach.answered,
            sleep=sleep, rng=rng, durable=self.durable.wait,
        )  # fmt: skip

    # -- public ---------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def webhook_url(self) -> str | None:
        return self._submitter.webhook

    @webhook_url.setter
    def webhook_url(self, url: str | None) -> None:
        self._submitter.webhook = url  # submits ask fal to POST their result there

    def stop(self, *, now: bool = False, reason: ev.StopReason = ev.StopReason.INTERRUPTED) -> None:
        """First call: submit nothing more, finish what is paid for. ``now``: cancel all."""
        # What the exit code reports: a refused key over Ctrl-C over the budget.
        rank = [None, ev.StopReason.BUDGET, ev.StopReason.STOP_AT, ev.StopReason.DECLINED,
                ev.StopReason.INTERRUPTED, ev.StopReason.FATAL]  # fmt: skip
        if rank.index(reason) > rank.index(self.stop_reason):
            self.stop_reason = reason
        first = not self._stopping
        self._stopping = True
        if now and not self._stop_now:
            self._stop_now = True
            self._emit(ev.Stopping(now=True, reason=str(reason)))
            for task in list(self._tasks):
                task.cancel()
        elif first:
            self._emit(ev.Stopping(now=False, reason=str(reason)))
        if self.stop_reason is not ev.StopReason.BUDGET:  # (a budget stop sends what it let by)
            self._submitter.stop()  # a submit in its backoff gives its job back now
        self._wake.set()

    def on_client_retry(self, retry: RetryEvent) -> None:
        """Hook for ``QueueClient(on_retry=...)``: its retried GETs are logged like ours."""
        self.reach.failed(retry.outcome)
        self._record.retrying(None, retry.op, retry.outcome, retry.delay, retry.attempt)

    async def prepare(self) -> None:
        """Before anything is submitted: what the server is, and the folder put in order
        (``recovery``). Sends nothing but one question to an ``--endpoint`` server. ``run``
        calls it unless the caller did (the runner announces the run in between)."""
        if self._recovery is not None:
            return
        if self._s.endpoint and await self._client.is_emulator():
            # A rehearsal against `batchgen emulator`: its work counts as the emulator's.
            self.origin, self.rehearsal = emulator_at(self._s.endpoint), True
            self._uploads.origin = self.origin
        self._journal.interrupted_submits()
        self._recovery = rec = recover(
            self._journal, self._s.out_dir, origin=self.origin, endpoint=self._s.endpoint,
            retry_failed=self._s.options.retry_failed,
        )  # fmt: skip
        self._submitter.no_emulator = rec.real_work
        self.spent_at_start = self._journal.spent_estimate(), self._journal.rehearsal_estimate()

    async def run(self) -> None:
        """Resume, submit, drain. Raises AuthError when fal refused the key (after cleanup)."""
        await self.prepare()
        self._pool.start()
        timer = stop_clock.start_timer(self._s.stop_at, self._wall, self._sleep, self.stop)
        try:
            self._resume()
            await self._submit_loop()
            while not self._stop_now and (self._tasks or self._pool.backlog):
                await self._changed()
        finally:
            stop_clock.cancel(timer)
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._pool.close()
            for job in self._unstarted:  # cancelled before their first step: nothing sent
                self._journal.transition(job, S.PENDING)
            self._unstarted.clear()
        if self._fatal is not None:
            raise self._fatal

    # -- resume and submit ------------------------------------------------------------------

    def _resume(self) -> None:
        rec = self._recovery or Recovery()
        unknown = self._submitter.unknown
        unknown |= {r.job_id for r in self._journal.iter_jobs(S.UNKNOWN)}
        completed: list[JobRow] = []
        for row in self._journal.attached():
            if row.state is S.COMPLETED:
                completed.append(row)
            else:
                self._reattached += 1
                self._spawn(self._reattach(row))
        self._pool.resume(completed)
        resumed = ev.Resumed(self._reattached, len(completed), len(unknown), rec.retried,
                             rec.redownload, rec.dropped, rec.replaced)  # fmt: skip
        self._emit(resumed)
        if resumed != ev.Resumed(0, 0, 0, 0):
            self._journal.event(None, "resume", repr(resumed))

    async def _submit_loop(self) -> None:
        cap = self._s.options.max_cost
        while not self._stopping:
            if stop_clock.due(self._s.stop_at, self._wall):  # nothing is sent after --stop-at
                self.stop(reason=ev.StopReason.STOP_AT)
                return
            free = self.window.size - len(self._tasks)
            if self.reach.down and self._submitter.busy:
                free = 0  # one submit probes the unreachable server; the rest wait in line
            if free <= 0:
                await self._changed()
                continue
            n = 1 if cap is not None else min(free, CLAIM_BATCH)
            rows = self._journal.claim(n, origin=self.origin)
            if not rows:
                if not (self._tasks or self._pool.backlog):
                    return  # nothing pending, nothing in flight or downloading to requeue
                await self._changed()
                continue
            for i, row in enumerate(rows):
                # What fal may bill; in a rehearsal, what it would (so the stop rehearses too).
                j, emulated = self._journal, self.rehearsal or self._submitter.saw_emulator
                spent = j.rehearsal_estimate() if emulated else j.spent_estimate()
                # claim() already counts this job as in flight
                others = self._journal.in_flight_estimate() - row.cost
                if not budget_allows(spent=spent, in_flight=others, job=row.cost, cap=cap):
                    assert cap is not None
                    for r in rows[i:]:  # nothing was sent for these: back in line
                        self._journal.transition(r.job_id, S.PENDING)
                    self._emit(ev.BudgetReached(spent, others, row.cost, cap))
                    self.stop(reason=ev.StopReason.BUDGET)
                    return
                self._unstarted.add(row.job_id)
                self._spawn(self._fresh(row, len(self._tasks) + 1))

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            self._wake.set()

        task.add_done_callback(done)

    async def _fresh(self, row: JobRow, in_flight: int) -> None:
        seq = self._seq = self._seq + 1
        self._live.add(seq)
        try:
            self._unstarted.discard(row.job_id)
            handle = await self._submitter.submit(row)
            if handle is not None:
                await self._follow(row, handle, self._clock(), observe_at=(in_flight, seq))
        finally:
            self._live.discard(seq)

    async def _reattach(self, row: JobRow) -> None:
        assert row.handle is not None
        # The deadline counts from the original submit, possibly in an earlier process.
        age = max(0.0, self._wall() - (row.submitted_at or self._wall()))
        try:
            await self._follow(row, Handle.from_json(row.handle), self._clock() - age, None)
        finally:
            self._reattached -= 1

    # -- watch and fetch ----------------------------------------------------------------------

    async def _follow(
        self,
        row: JobRow,
        handle: Handle,
        submitted_at: float,
        observe_at: tuple[int, int] | None,
    ) -> None:
        """Watch until completed, fetch and commit the result; on failure requeue or fail."""
        job = row.job_id
        deadline_at = submitted_at + self._s.options.deadline
        started = row.state is S.RUNNING
        first = True

        def note(st: Status, prompt: bool) -> None:
            nonlocal started, first
            self.reach.answered()
            if first and observe_at is not None:
                pos = st.position if isinstance(st, Queued) else None
                n, seq = observe_at
                # Ours submitted earlier and still in flight: those running, waiting ahead,
                # or finished a moment ago. Re-attached requests (older still) count too.
                ahead = sum(1 for q in self._live if q < seq) + self._reattached
                self._observe(Observation(pos, n, prompt, ahead))
            first = False
            if isinstance(st, InProgress) and not started:
                started = True
                self._journal.transition(job, S.RUNNING)
                self._emit(ev.Started(job))

        op = "status"
        attempt = 0
        # an auto window learns from each new request's first status
        prompt = observe_at is not None and self.window.wants_prompt_check()
        inference: float | None = None
        while True:
            try:
                op = "status"
                if self.inbox is not None:  # --watch webhook: fal POSTs the result
                    if prompt:
                        note(await self._client.status(handle), True)
                    op = "result"
                    result = await self.inbox.wait(
                        self._client, handle, submitted_at=submitted_at,
                        deadline_at=deadline_at, clock=self._clock, sleep=self._sleep,
                        expected=self.runtimes.expected(),
                    )  # fmt: skip
                    break
                done = await watch(
                    self._client, handle, mode=self._s.options.watch,
                    expected=self.runtimes.expected(),
                    prompt=prompt, submitted_at=submitted_at, deadline_at=deadline_at, note=note,
                    on_stream_broken=lambda msg: self._record.retrying(
                        job, "status", Outcome(Action.RETRY, "stream_broken", msg), 0.0, 1
                    ),
                    clock=self._clock, sleep=self._sleep,
                )  # fmt: skip
                op = "result"
                result = await self._client.result(handle)
                self.reach.answered()
                inference = done.inference_time
                break
            except (DeadlineExceeded, TimeoutError):
                self._journal.event(job, "cancel", await cancel(self._client, handle))
                msg = f"no result within --deadline {self._s.options.deadline:g} s; cancelled"
                self._record.resubmit(row, "deadline", msg, lost=False)
                return
            except Exception as exc:
                o = classify(exc, op=op)
                self.reach.failed(o)
                attempt += 1
                if o.action is Action.RETRY and self._clock() < deadline_at:
                    # The GET retries inside the client ran out; the request still exists and
                    # resubmitting would pay twice, so keep asking, more slowly.
                    delay = backoff(attempt, retry_after=o.retry_after, base=2.0, rng=self._rng)
                    self._record.retrying(job, op, o, delay, attempt)
                    await self._sleep(delay)
                    continue
                self._record.after_failure(row, o)  # decided and recorded before any await
                await keep_logs(self._client, self._journal, job, handle, o, self._s.redact)
                return
        took = self._clock() - submitted_at
        # fal's own run time when it says so: ours includes our own lag under load, which
        # would talk the watch choice out of the quick check exactly when it pays most.
        self.runtimes.add(took if inference is None else inference)
        self._journal.set_result(job, result)  # committed before any download
        self._emit(ev.Finished(job, took))
        self._pool.put(job, inference)  # the slot is free from here on

    # -- shared -------------------------------------------------------------------------------

    def _fatal_stop(self, exc: BaseException) -> None:
        if self._fatal is None:
            self._fatal = exc if isinstance(exc, AuthError) else AuthError(str(exc))
        self.stop(now=True, reason=ev.StopReason.FATAL)

    def _observe(self, obs: Observation) -> None:
        before = self.window.size
        if self.window.observe(obs) != before:
            self._emit(ev.WindowChanged(self.window.size))
            self._wake.set()

    async def _changed(self) -> None:
        self._wake.clear()
        await self._wake.wait()

    def _emit(self, event: ev.Event) -> None:
        self.stats.add(event)
        if self._emit_to is not None:
            self._emit_to(event)
