"""One request from its submit to its committed result: ``Follower``.

The way of watching (``watching``: the stream, polling, or a webhook) waits for the result.
Around it, this decides what happens when something goes wrong, with ``retry.classify``:

- a status or result that cannot be read although the request exists (the client's own
  tries ran out) is asked again, more slowly (``retry.FOLLOW``), until the deadline:
  sending it again would pay twice;
- past the deadline (``--deadline``, from the submit, possibly in an earlier process), the
  request is cancelled and its job sent again, bounded by ``--max-attempts``;
- any other failure is recorded as ``classify`` says (``Recorder.after_failure``), and fal's
  logs of the request are kept.

The first status of a request submitted by this run is what an auto window learns from
(``Pacing.first_status``); the first IN_PROGRESS moves the job to RUNNING. The result is
committed to the journal before anything else, and the job handed to the download pool: the
request's slot in the window is free from that moment.
"""

from __future__ import annotations

from batchgen.fal import Handle, InProgress, Status
from batchgen.journal.writer import JobRow
from batchgen.outputs.downloader import DownloadPool
from batchgen.planning.jobs import JobState
from batchgen.retry import FOLLOW, classify
from batchgen.running import events as ev
from batchgen.running.context import RunContext
from batchgen.running.logs import keep_logs
from batchgen.running.pacing import Pacing
from batchgen.running.watching import DeadlineExceeded, Done, Watching, cancel

S = JobState


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
        attempt = 0
        while True:
            op = self._watching.op
            try:
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
                ctx.reach.answered()
                break
            except (DeadlineExceeded, TimeoutError):
                ctx.journal.event(job, "cancel", await cancel(ctx.client, handle))
                msg = f"no result within --deadline {self._deadline:g} s; cancelled"
                ctx.record.resubmit(row, "deadline", msg, lost=False)
                return
            except Exception as exc:
                o = classify(exc, op=op)
                ctx.reach.failed(o)
                attempt += 1
                if self._retry.again(attempt, o) and ctx.clock() < deadline_at:
                    delay = self._retry.delay(attempt, o)
                    ctx.record.retrying(job, op, o, delay, attempt)
                    await ctx.sleep(delay)
                    continue
                ctx.record.after_failure(row, o)  # decided and recorded before any await
                await keep_logs(ctx.client, ctx.journal, job, handle, o, ctx.settings.redact)
                return
        self._finished(row, done, submitted_at)

    def _finished(self, row: JobRow, done: Done, submitted_at: float) -> None:
        took = self._ctx.clock() - submitted_at
        # fal's own run time when it says so: ours includes our own lag under load, which
        # would talk the watch choice out of the quick check exactly when it pays most.
        self._pacing.runtimes.add(took if done.inference_time is None else done.inference_time)
        assert done.result is not None
        self._ctx.journal.set_result(row.job_id, done.result)  # committed before any download
        self._ctx.emit(ev.Finished(row.job_id, took))
        self._pool.put(row.job_id, done.inference_time)  # the slot is free from here on
