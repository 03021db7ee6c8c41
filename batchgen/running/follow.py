"""One request from its submit to its committed result: ``Follower``.

The way of watching (``watching``: the stream, polling, or a webhook) waits for the result.
Around it, this decides what happens when something goes wrong, with ``retry.classify``:

- a status or result that cannot be read although the request exists (the client's own
  tries ran out) is asked again, more slowly (``retry.FOLLOW``), until the deadline:
  sending it again would pay twice;
- past the deadline (``--deadline``, from the submit, possibly in an earlier process), fal is
  asked where the request stands before anything is cancelled (``_past_deadline``): one that
  completed is fetched like any other, never sent again; only one still queued or running is
  cancelled and its job sent again, bounded by ``--max-attempts``, and counted as a possible
  duplicate charge when it may be billed (it ran, or its cancel was not accepted). When fal
  cannot be asked, it is asked again for ``ASK_PAST_DEADLINE_S``, then left attached for the
  next run: never sent again blind;
- any other failure is recorded as ``classify`` says (``Recorder.after_failure``), and fal's
  logs of the request are kept.

The deadline is on the context's clock, monotonic (``time.monotonic``): a change of the
system's clock moves no deadline. It runs on while the process is stopped (SIGSTOP) but, on
Linux, not while the machine is suspended, so a deadline can pass early or late against fal's
own time, which never stops. Either way passing it costs one status request, not a second
payment: fal's answer, not our clock, decides whether a request is sent again.

The first status of a request submitted by this run is what an auto window learns from
(``Pacing.first_status``); the first IN_PROGRESS moves the job to RUNNING. The result is
committed to the journal before anything else, and the job handed to the download pool: the
request's slot in the window is free from that moment.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from batchgen.fal import Completed, Handle, InProgress, Status
from batchgen.journal.writer import JobRow
from batchgen.outputs.downloader import DownloadPool
from batchgen.planning.jobs import JobState
from batchgen.retry import FOLLOW, Outcome, classify
from batchgen.running import events as ev
from batchgen.running.context import RunContext
from batchgen.running.logs import keep_logs
from batchgen.running.pacing import Pacing
from batchgen.running.watching import DeadlineExceeded, Done, Note, Watching, cancel

S = JobState
T = TypeVar("T")

# How long a request past its deadline is asked about while fal cannot be asked (no
# connection, a 5xx): long enough for a laptop's network to come back after it wakes, short
# enough not to hold a run's end for long. After it the request is left attached (the journal
# keeps its id) and the next run asks again.
ASK_PAST_DEADLINE_S = 120.0
CANCELLED = "CANCELLATION_REQUESTED"  # fal's answer to a cancel it accepted
ALREADY_COMPLETED = "ALREADY_COMPLETED"  # ...and to one that came after the result


class Follower:
    def __init__(
        self, ctx: RunContext, watching: Watching, pacing: Pacing, pool: DownloadPool
    ) -> None:
        self._ctx = ctx
        self._watching = watching
        self._pacing = pacing
        self._pool = pool
        self._retry = FOLLOW.jittered(ctx.rng)
        self._deadline = ctx.settings.options.deadline
        # A result the queue no longer has, read from fal's history (lookup.KeptResults).
        self.kept: Callable[[JobRow], Awaitable[dict[str, Any] | None]] | None = None

    async def follow(
        self, row: JobRow, handle: Handle, submitted_at: float, first: tuple[int, int] | None
    ) -> None:
        """Watch ``row``'s request until its result is committed, or its failure recorded.
        ``submitted_at`` is on the context's clock; ``first`` is (requests in flight at its
        submit, its submit order) for a request of this run, None for a re-attached one."""
        ctx, job = self._ctx, row.job_id
        deadline_at = submitted_at + self._deadline
        started = row.state is S.RUNNING
        seen = False

        def note(status: Status, prompt: bool) -> None:
            nonlocal started, seen
            ctx.reach.answered()
            if not seen and first is not None:
                self._pacing.first_status(status, first[1], first[0], prompt)
            seen = True
            if isinstance(status, InProgress) and not started:
                started = True
                ctx.journal.transition(job, S.RUNNING)
                ctx.emit(ev.Started(job))

        # an auto window learns from each new request's first status
        prompt = first is not None and self._pacing.wants_prompt_check()
        op = self._watching.op

        async def watched() -> Done:
            nonlocal op
            op = self._watching.op
            done = await self._watching.completed(
                job,
                handle,
                submitted_at=submitted_at,
                deadline_at=deadline_at,
                prompt=prompt,
                note=note,
            )
            if done.result is None:
                op = "result"
                done = Done(await ctx.client.result(handle), done.inference_time)
            return done

        try:
            got: Done | Outcome | None = await self._ask(job, watched, lambda: op, deadline_at)
            # Still worth asking, but the deadline came first (a laptop's network not back
            # yet after it woke): past it, as when the way of watching gives up.
            late = isinstance(got, Outcome) and self._retry.again(1, got)
        except (DeadlineExceeded, TimeoutError):
            late = True
        if late:
            got = await self._past_deadline(row, handle, note, lambda: started)
        if got is None:  # cancelled and sent again
            return
        if isinstance(got, Outcome) and got.reason == "expired":
            got = await self._from_history(row, got)
            late = True  # how long it took is not known: the run times learn nothing
        if isinstance(got, Outcome):
            ctx.record.after_failure(row, got)  # decided and recorded before any await
            await keep_logs(ctx.client, ctx.journal, job, handle, got, ctx.settings.redact)
            return
        self._finished(row, got, submitted_at, late=late)

    async def _from_history(self, row: JobRow, expired: Outcome) -> Done | Outcome:
        """The queue no longer has the request: its result from fal's history, else the
        queue's answer stands (sent again, counted as lost)."""
        if self.kept is None:
            return expired
        current = self._ctx.journal.get(row.job_id) or row
        try:
            result = await self.kept(current)
        except Exception as exc:  # the history cannot say: the queue's answer stands
            self._ctx.journal.event(row.job_id, "history", f"not asked: {exc}")
            return expired
        return expired if result is None else Done(result, None)

    async def _past_deadline(
        self, row: JobRow, handle: Handle, note: Note, started: Callable[[], bool]
    ) -> Done | Outcome | None:
        """The request's deadline passed: ask fal where it stands. Its result when it
        completed (a sleeping laptop, a stopped process: fal went on meanwhile); None when it
        was cancelled and its job sent again; the failure to record when fal could not be
        asked, or the result could not be read."""
        ctx, job = self._ctx, row.job_id
        until = ctx.clock() + ASK_PAST_DEADLINE_S
        st = await self._ask(job, lambda: ctx.client.status(handle), lambda: "status", until)
        if isinstance(st, Outcome):
            return st  # a RETRY outcome leaves it attached: asked again by the next run
        note(st, False)  # an IN_PROGRESS moves the job to RUNNING, as any status does
        if not isinstance(st, Completed):
            answer = await cancel(ctx.client, handle)
            ctx.journal.event(job, "cancel", answer)
            if answer != ALREADY_COMPLETED:  # else it completed between the two: fetch it
                # fal bills a request that ran; one cancelled in its queue never ran. A
                # cancel fal did not accept may leave it to run: counted, to be safe.
                ran = started() or answer != CANCELLED
                where = "while it ran" if started() else "in fal's queue"
                msg = f"no result within --deadline {self._deadline:g} s; cancelled {where}"
                ctx.record.resubmit(row, "deadline", msg, lost=False, dup=ran)
                return None
        ctx.journal.event(job, "deadline", "completed on fal past the deadline: fetched")
        got = await self._ask(job, lambda: ctx.client.result(handle), lambda: "result", until)
        if isinstance(got, Outcome):
            return got
        return Done(got, st.inference_time if isinstance(st, Completed) else None)

    async def _ask(
        self, job: str, call: Callable[[], Awaitable[T]], op: Callable[[], str], until: float
    ) -> T | Outcome:
        """``call``'s answer. A failure the client's own tries did not cure is asked again,
        more slowly (``retry.FOLLOW``), while ``classify`` says it is worth it and the clock is
        before ``until``; else it is returned as its ``Outcome``, for the caller to record.
        ``op()`` names what the failure is about (it can change inside ``call``). A deadline
        (``DeadlineExceeded``, ``TimeoutError``) passes through."""
        ctx = self._ctx
        attempt = 0
        while True:
            try:
                answer = await call()
            except (DeadlineExceeded, TimeoutError):
                raise
            except Exception as exc:
                o = classify(exc, op=op())
                ctx.reach.failed(o)
                attempt += 1
                if self._retry.again(attempt, o) and ctx.clock() < until:
                    delay = self._retry.delay(attempt, o)
                    ctx.record.retrying(job, op(), o, delay, attempt)
                    await ctx.sleep(delay)
                    continue
                return o
            ctx.reach.answered()
            return answer

    def _finished(self, row: JobRow, done: Done, submitted_at: float, *, late: bool) -> None:
        took = self._ctx.clock() - submitted_at
        # fal's own run time when it says so: ours includes our own lag under load, which
        # would talk the watch choice out of the quick check exactly when it pays most. A
        # result found past the deadline says how long we were away, not how long fal took.
        if done.inference_time is not None or not late:
            self._pacing.runtimes.add(took if done.inference_time is None else done.inference_time)
        assert done.result is not None
        self._ctx.journal.set_result(row.job_id, done.result)  # committed before any download
        self._ctx.emit(ev.Finished(row.job_id, took))
        self._pool.put(row.job_id, done.inference_time)  # the slot is free from here on
