"""Why and how a run stops, as one value every part reads: ``Stop``.

A stop comes from the user (Ctrl-C, SIGTERM, a declined cost), from the clock (``--stop-at``),
from the budget (``--max-cost``), from fal locking the account (its credit ran out), from a
full disk, or from an answer that ends the run (a refused key, real work in a folder an
emulator was given). Each part asks it one question:

- the submit loop: ``requested``, no new claims;
- a submit waiting out a backoff: ``abandons_claims``, then give the job back (nothing was
  sent for it), woken by ``abandoned()``. A budget stop is the exception: the claims that
  passed its check are still sent, and only the jobs after them are refused;
- the scheduler's loop: ``now``, cancel what is in flight (the journal stays consistent).

When several stops come, the exit code reports the strongest (``RANK``): a refused key over a
full disk over a locked account over Ctrl-C over the budget (what the user must act on
first wins). A fatal stop keeps its error (``error``), which the run reports as it
is: a refused key is an ``AuthError``, a folder mistake a ``UsageError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from batchgen.errors import BatchgenError
from batchgen.running import events as ev

R = ev.StopReason
RANK: tuple[R, ...] = (
    R.BUDGET,
    R.STOP_AT,
    R.DECLINED,
    R.INTERRUPTED,
    R.LOCKED,
    R.DISK_FULL,
    R.FATAL,
)


class Stop:
    def __init__(self, emit: Callable[[ev.Event], None], changed: asyncio.Event) -> None:
        self._emit = emit
        self._changed = changed  # the scheduler's loop wakes on it
        self._abandon = asyncio.Event()
        self.reason: R | None = None  # the strongest stop asked for
        self.requested = False  # no new claims
        self.now = False  # cancel what is in flight
        self.error: BatchgenError | None = None  # a fatal stop's cause
        self.causes: dict[R, str] = {}  # what first asked for each stop, when it said

    @property
    def abandons_claims(self) -> bool:
        """Whether a claimed job not yet sent goes back to the queue (all but a budget stop)."""
        return self.requested and self.reason is not R.BUDGET

    async def abandoned(self) -> None:
        """Returns once the run abandons its claims (a backoff waits on this beside its sleep)."""
        await self._abandon.wait()

    def request(
        self, reason: R = R.INTERRUPTED, *, now: bool = False, cause: str | None = None
    ) -> None:
        """First call: submit nothing more, finish what is paid for. ``now``: cancel all.
        Each change is announced once as a ``Stopping`` event. ``cause``: the answer that
        asked for it, kept in ``causes`` for the end of the run."""
        if cause is not None:
            self.causes.setdefault(reason, cause)
        if self.reason is None or RANK.index(reason) > RANK.index(self.reason):
            self.reason = reason
        first = not self.requested
        self.requested = True
        if now and not self.now:
            self.now = True
            self._emit(ev.Stopping(now=True, reason=str(reason)))
        elif first:
            self._emit(ev.Stopping(now=False, reason=str(reason)))
        if self.abandons_claims:
            self._abandon.set()
        self._changed.set()

    def fail(self, error: BatchgenError) -> None:
        """Stop at once for ``error`` (the first one is kept and reported)."""
        if self.error is None:
            self.error = error
        self.request(R.FATAL, now=True)
