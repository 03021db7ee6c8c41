"""Lost submits looked for in fal's history before anything is paid for twice: ``Lookup``.

A submit whose answer never came (the connection dropped after fal made the request, a
crash mid-POST) leaves its job UNKNOWN, with the attempt's time and input in the journal
(``journal/attempts.py``). Nothing is sent again for it until fal's request history
(``fal/platform.py``) has been asked:

- one look lists the requests of the lost jobs' endpoints that ended since just before the
  earliest attempt, with their inputs, and ``fal.matching.match`` pairs each lost job with an
  unowned request of the same input (a multiset for identical inputs);
- found: the job is re-attached to that request (UNKNOWN -> QUEUED) and followed like any
  other, its deadline counted from the attempt;
- not found yet: the history lists a request only once it has ended, so it may still be
  running: looked for again, less and less often, until it would have ended; then it was
  never made (or fal never lists it): sent again, not counted. "Would have ended" is the
  attempt's time plus ``SETTLE_FLOOR_S`` plus ``SETTLE_FACTOR`` times the slowest request
  seen (submit to end: this run's, and the ones the history lists, anyone's), and never
  later than the attempt's ``--deadline``, which is all there is to go by before any
  request has ended. Waiting the whole deadline (20 minutes by default) for a POST that a
  crash cut before it left would hold the end of every resumed run for nothing;
- the history cannot tell (it keeps no inputs: payload storage off; the key may not read it;
  fal answers 4xx; a journal of an older batchgen that did not record the input): sent
  again at once, counted as a possible duplicate charge, with one notice a run saying why. A
  history that does not answer (5xx, no connection) is asked again until the deadline first.

A stop (Ctrl-C, the budget, ``--stop-at``) ends the looking after the current look: what is
still unsettled stays UNKNOWN and the next run looks again. A job that has spent
``--max-attempts`` is failed rather than sent again.

``KeptResults`` is the other use of the history: a finished request's result the queue no
longer has (404/410) is read from its ``json_output``, so an expired result costs no new
submit while fal keeps the payload (not with ``--no-store-io``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from batchgen.errors import BatchgenError
from batchgen.fal import Handle
from batchgen.fal.matching import CLOCK_SKEW_S, LostSubmit, entry_of, match
from batchgen.fal.platform import PlatformClient
from batchgen.journal.attempts import LostRow
from batchgen.journal.writer import JobRow
from batchgen.planning.jobs import JobState
from batchgen.retry import Action, classify
from batchgen.running import events as ev
from batchgen.running.context import RunContext

SETTLE_FACTOR = 3.0  # a request ends within this many times the slowest one seen...
SETTLE_FLOOR_S = 10.0  # ...plus this, for the history to list it (and clocks to differ)
FIRST_WAIT_S = 1.0  # the first look again: a request made by the lost submit may end soon
MAX_WAIT_S = 30.0  # looks double their interval up to this
NO_INPUTS = "its entries keep no inputs: payload storage is off (--no-store-io)"
NOT_RECORDED = "the journal has no record of what was sent (an older batchgen wrote it)"

Attach = Callable[[str, Handle, float], None]  # job id, the request found, its attempt's time


class Lookup:
    """Settles the folder's UNKNOWN jobs (the module docstring). ``attach(job_id, handle,
    at)`` follows a request found; ``run`` returns when none is left unsettled, or after a
    stop's last look."""

    def __init__(
        self,
        ctx: RunContext,
        history: PlatformClient,
        attach: Attach,
        *,
        slowest: Callable[[], float | None] = lambda: None,
        guard: Callable[[Coroutine[Any, Any, None]], Coroutine[Any, Any, None]] = lambda c: c,
    ) -> None:
        self._ctx = ctx
        self._history = history
        self._attach = attach
        self._guard = guard  # what the run wraps its tasks in (a full disk stops it)
        self._run_slowest = slowest  # the run's slowest request, submit to result
        self._slowest: float | None = None  # the slowest the history listed, sent to ended
        self._task: asyncio.Task[None] | None = None
        self._owned: set[str] = set()  # every request id the folder made (grows as read)
        self._read_to = 0  # the last audit event read for them
        self._told = False  # the notice when the history cannot tell: once a run
        self._wake = asyncio.Event()

    def start(self) -> None:
        """A submit's answer was lost (or a crash left one): make sure the looking runs, and
        looks soon, however long its wait had grown. Not once the run stops at once."""
        if self._ctx.stop.now:
            return
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._guarded())
            self._task.add_done_callback(lambda _: self._ctx.changed.set())
        else:
            self._wake.set()

    async def _guarded(self) -> None:
        # The coroutine is made inside the task: one cancelled before it starts leaves none
        # behind never awaited.
        await self._guard(self.run())

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    async def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run(self) -> None:
        ctx, wait = self._ctx, FIRST_WAIT_S
        while True:
            lost = ctx.journal.lost_submits()
            if not lost:
                return
            self._wake.clear()
            self._settle(lost, await self._look(lost))
            if ctx.stop.requested or not ctx.journal.counts()[JobState.UNKNOWN]:  # in memory
                return
            woken = await self._sleep(wait)  # by a new lost submit: its own first wait
            wait = FIRST_WAIT_S if woken else min(wait * 2, MAX_WAIT_S)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep ``seconds``, or until woken by a new lost submit or a stop; True if woken."""
        ctx = self._ctx
        waits = [
            asyncio.ensure_future(ctx.sleep(seconds)),
            asyncio.ensure_future(self._wake.wait()),
            asyncio.ensure_future(ctx.stop.abandoned()),
        ]
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        return waits[0] not in done

    async def _look(self, lost: list[LostRow]) -> tuple[dict[str, str], set[str], str | None]:
        """One look: (job -> request found, jobs the history cannot tell about, why it could
        not be asked or None)."""
        known = [r for r in lost if r.known]
        blind = {r.job_id for r in lost if not r.known}
        if not known:
            return {}, blind, None
        since = min(r.at for r in known if r.at is not None) - CLOCK_SKEW_S
        endpoints = sorted({r.endpoint for r in known})
        entries = []
        try:
            async for item in self._history.requests_by_endpoint(
                endpoints, start=datetime.fromtimestamp(since, UTC), payloads=True, limit=100
            ):
                entries.append(entry_of(item))
                if item.ended_at is not None and item.reached_fal is not None:
                    took = (item.ended_at - item.reached_fal).total_seconds()
                    self._slowest = max(self._slowest or 0.0, took)
        except (BatchgenError, OSError, ValueError) as exc:
            o = classify(exc, op="history")
            self._ctx.journal.event(None, "history", f"not asked: {o.message}")
            return {}, blind, ("unanswered: " if o.action is Action.RETRY else "") + o.message
        made, self._read_to = self._ctx.journal.requests_made(self._read_to)
        self._owned |= made
        attempts = [LostSubmit(r.job_id, r.key or "", r.at or 0.0, r.endpoint) for r in known]
        m = match(attempts, entries, self._owned)
        self._ctx.emit(ev.LookedUp(len(known), len(m.pairs)))
        if m.spare:
            self._ctx.journal.event(None, "history", f"requests nobody collects: {m.spare}")
        return m.pairs, blind | set(m.blind), None

    def _settle(
        self, lost: list[LostRow], look: tuple[dict[str, str], set[str], str | None]
    ) -> None:
        ctx = self._ctx
        pairs, blind, failed = look
        now, deadline = ctx.wall(), ctx.settings.options.deadline
        settle = self._settle_after()
        unanswered = failed is not None and failed.startswith("unanswered: ")
        for r in lost:
            if r.job_id in pairs:
                rid = pairs[r.job_id]
                self._owned.add(rid)
                handle = ctx.client.handle_for(r.endpoint, rid)
                ctx.journal.set_submitted(r.job_id, handle.to_json(), at=r.at)
                ctx.emit(ev.Found(r.job_id, rid))
                self._attach(r.job_id, handle, r.at or now)
                continue
            past = r.at is None or now >= r.at + deadline
            if r.job_id in blind or (failed is not None and (past or not unanswered)):
                why = NOT_RECORDED if not r.known else (failed or NO_INPUTS)
                self._again(r, f"fal's history cannot tell: {why}", dup=True, why=why)
            elif failed is None and (past or (r.at is not None and now >= r.at + settle)):
                waited = min(settle, deadline)
                self._again(r, f"not in fal's history {waited:.0f} s after it was sent", dup=False)

    def _settle_after(self) -> float:
        """Seconds after an attempt by which its request would have ended and been listed
        (the module docstring); the deadline when no request has ended yet."""
        seen = [t for t in (self._run_slowest(), self._slowest) if t is not None]
        if not seen:
            return self._ctx.settings.options.deadline
        return min(SETTLE_FLOOR_S + SETTLE_FACTOR * max(seen), self._ctx.settings.options.deadline)

    def _again(self, r: LostRow, message: str, *, dup: bool, why: str | None = None) -> None:
        """The lost submit is settled as not found: sent again, or failed at its last attempt."""
        ctx = self._ctx
        if why is not None and not self._told:
            self._told = True
            ctx.emit(ev.HistoryUnavailable(why))
        row = ctx.journal.get(r.job_id)
        if row is None:
            return
        if not r.in_manifest:  # no longer wanted: nothing is sent for it
            ctx.journal.requeue(r.job_id, message)
        elif r.attempts + 1 >= ctx.settings.options.max_attempts:
            ctx.record.fail(row, ev.SUBMIT_DROPPED, f"{message} (after {r.attempts + 1} attempts)")
        else:
            ctx.journal.requeue(r.job_id, message, dup=dup)
            ctx.emit(ev.Requeued(r.job_id, ev.SUBMIT_DROPPED, message, False, dup))


class KeptResults:
    """Results the queue no longer has (404/410), read from fal's history."""

    def __init__(self, ctx: RunContext, history: PlatformClient) -> None:
        self._ctx = ctx
        self._history = history

    async def from_history(self, row: JobRow) -> dict[str, Any] | None:
        """The result fal's history keeps for ``row``'s request (its ``json_output``), or None
        when it has none: not listed, not stored, not a success. Raises what the client
        raises."""
        handle = Handle.from_json(row.handle or {})
        rid, since = handle.request_id, row.submitted_at
        start = datetime.fromtimestamp(since - CLOCK_SKEW_S, UTC) if since is not None else None
        items = self._history.requests_by_endpoint(
            [row.spec.endpoint], request_id=rid, payloads=True, start=start, status="success"
        )
        async for item in items:
            if item.request_id == rid and isinstance(item.json_output, dict):
                self._ctx.journal.event(row.job_id, "history", "result read from fal's history")
                self._ctx.emit(ev.Recovered(row.job_id, rid))
                return item.json_output
        return None

    async def read_again(self, row: JobRow) -> dict[str, Any]:
        """A job's result read again (fresh image URLs after a failed download): from the
        queue, or from fal's history when the queue no longer has it."""
        try:
            return await self._ctx.client.result(Handle.from_json(row.handle or {}))
        except Exception as exc:
            if classify(exc, op="result").reason != "expired":
                raise
            try:
                kept = await self.from_history(row)
            except Exception:  # the history cannot say: the queue's answer stands
                kept = None
            if kept is None:
                raise
            return kept
