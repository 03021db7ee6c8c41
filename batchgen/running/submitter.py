"""One job's submit: its files uploaded, a BYOK key added, ONE POST per try, the outcome
written down before anything else happens.

A refusal that created nothing (429, 408, 409, a load balancer's 5xx, no connection at all)
is tried again with backoff (``retry.SUBMITS``). When the server cannot be reached at all, the
job is never failed for it: it keeps trying (``retry.SUBMITS_UNREACHABLE``) while the run
lasts, and the scheduler sends no other submit meanwhile. Just before each POST the journal
records when it is made and what it sends (``Journal.sending``); a POST sent with no answer is
UNKNOWN, and looked for in fal's history before it is sent again (``lookup.py``). A stop
leaves the journal consistent: nothing sent -> PENDING, maybe sent -> UNKNOWN.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from batchgen.errors import AuthError, BatchgenError, UsageError
from batchgen.fal import Handle
from batchgen.fal.byok import submit_input
from batchgen.fal.matching import input_key
from batchgen.fal.uploads import UploadError, Uploads
from batchgen.journal.groupsync import GroupSync
from batchgen.journal.origin import emulator_at
from batchgen.journal.writer import JobRow
from batchgen.planning.jobs import JobState
from batchgen.retry import SUBMITS, SUBMITS_UNREACHABLE, Action, Outcome, classify
from batchgen.running import events as ev
from batchgen.running.context import RunContext
from batchgen.running.reach import UNREACHABLE

S = JobState


class Submitter:
    def __init__(
        self,
        ctx: RunContext,
        uploads: Uploads,
        sync: GroupSync,
        *,
        webhook: str | None = None,
    ) -> None:
        self._ctx = ctx
        self._journal, self._client, self._s = ctx.journal, ctx.client, ctx.settings
        self._uploads = uploads
        # Waits until the request ids committed so far are fsynced (a group commit).
        self._sync = sync
        self._patient = SUBMITS.jittered(ctx.rng)
        self._unreachable = SUBMITS_UNREACHABLE.jittered(ctx.rng)
        # fal's platform headers (priority, start timeout, media expiry, fallbacks, payload
        # storage): the same on every submit of the run (fal/headers.py).
        self._headers = ctx.settings.controls.headers()
        self.on_lost: Callable[[], None] = lambda: None  # a POST's answer was lost
        # Why an emulator may not work in this folder (it holds real work), if so: an
        # --endpoint server shows it is one only in its first answer.
        self.no_emulator: str | None = None
        self.saw_emulator = False  # the server answered as an emulator: this is a rehearsal
        self.webhook = webhook  # --watch webhook: the URL fal POSTs the result to
        self.busy = 0  # submits under way (a POST, its uploads or its backoff)

    async def submit(self, row: JobRow) -> Handle | None:
        self.busy += 1
        try:
            return await self._submit(row)
        finally:
            self.busy -= 1

    async def _submit(self, row: JobRow) -> Handle | None:
        job, spec = row.job_id, row.spec
        dup = row.possible_duplicates > 0  # an earlier request of the job may be billed too
        attempt = 0
        while True:
            attempt += 1
            # A claim that passed the budget check is still sent after the budget stop (the
            # stop refuses only the jobs after it); Ctrl-C or a refused key abandons it.
            if self._ctx.stop.abandons_claims:
                self._journal.transition(job, S.PENDING)  # nothing sent for this claim
                return None
            posting = False
            try:
                body = await self._uploads.resolve(spec)  # local files -> hosted URLs
                # A BYOK job's OpenAI key joins the body here only: it is never stored.
                body = submit_input(spec, self._s.openai_key, body)
                self._journal.sending(job, input_key(body))  # before the POST: the look-up's
                posting = True
                handle = await self._client.submit(
                    spec.endpoint, body, webhook=self.webhook, headers=self._headers
                )
            except asyncio.CancelledError:
                if not posting:  # stopped while uploading its files: nothing was submitted
                    self._journal.transition(job, S.PENDING)
                    raise
                # Stopped at once mid-POST: it may have reached fal. Resubmit and count it.
                self._journal.transition(
                    job, S.UNKNOWN, error_class="interrupted", error="stopped while submitting"
                )
                self.on_lost()
                raise
            except Exception as exc:
                o = exc.outcome if isinstance(exc, UploadError) else classify(exc, op="submit")
                self._ctx.reach.failed(o)
                # An unreachable server is nobody's fault: never fail a job for it.
                unreachable = o.reason in UNREACHABLE and not isinstance(exc, UploadError)
                policy = self._unreachable if unreachable else self._patient
                if policy.again(attempt, o):
                    delay = policy.delay(attempt, o)
                    self._ctx.record.retrying(job, "submit", o, delay, attempt)
                    try:
                        await self._backoff(delay)
                    except asyncio.CancelledError:
                        self._journal.transition(job, S.PENDING)  # refused: nothing exists
                        raise
                    continue
                self._after_refusal(row, o, exc)
                return None
            self._ctx.reach.answered()
            # An --endpoint server that answered as batchgen's emulator made a rehearsal.
            emulated = handle.emulator and self._s.endpoint
            made_at = emulator_at(self._s.endpoint) if emulated and self._s.endpoint else None
            self.saw_emulator |= made_at is not None
            # The request id, before all else: committed, then fsynced (in a thread, one fsync
            # for the jobs committed meanwhile) before this job goes further.
            self._journal.set_submitted(job, handle.to_json(), origin=made_at, sync=False)
            await self._sync.wait()
            if made_at and self.no_emulator:  # free, and dropped by the next real run
                self._ctx.stop.fail(UsageError(self.no_emulator))
                return None
            self._ctx.emit(ev.Submitted(job, handle.request_id, dup))
            return handle

    async def _backoff(self, delay: float) -> None:
        """Sleep ``delay``, or until the run abandons its claims (Ctrl-C, a refused key): the
        loop's next turn then gives the job back. Nothing was sent for it, and the server may
        stay unreachable for the rest of a capped backoff, which the user would wait through
        for nothing."""
        if self._ctx.stop.abandons_claims:
            return
        waits = [
            asyncio.ensure_future(self._ctx.sleep(delay)),
            asyncio.ensure_future(self._ctx.stop.abandoned()),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def _after_refusal(self, row: JobRow, o: Outcome, exc: BaseException) -> None:
        job = row.job_id
        if o.action is Action.UNKNOWN:
            # fal may have made the request: it is looked for before anything is sent again
            # (lookup.py), which also fails the job once --max-attempts is spent.
            self._journal.transition(job, S.UNKNOWN, error_class=o.reason, error=o.message)
            self._ctx.emit(ev.SubmitLost(job, o.reason, o.message))
            self.on_lost()
        elif o.action is Action.LOCKED:
            # The account's credit ran out: nothing was created. Requests fal accepted before
            # still run and are collected; nothing new is sent until a top-up.
            self._journal.transition(job, S.PENDING)
            self._ctx.stop.request(ev.StopReason.LOCKED, cause=o.message)
        elif o.action is Action.FATAL:
            self._journal.transition(job, S.PENDING)  # refused: nothing was created
            fatal = exc if isinstance(exc, BatchgenError) else AuthError(o.message)
            self._ctx.stop.fail(fatal)
        else:
            self._ctx.record.fail(row, o.reason, o.message)
