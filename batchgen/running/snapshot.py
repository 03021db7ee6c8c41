"""What a run tells while it runs: every event to run.log and to the caller (``Delivery``),
and a ``Snapshot`` of the counts now and then."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from batchgen.journal.writer import Journal
from batchgen.planning.jobs import JobState
from batchgen.planning.pricing import usd
from batchgen.running.events import Event
from batchgen.running.runlog import RunLog
from batchgen.running.scheduler import Scheduler

S = JobState


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The run's counts at one moment, delivered to ``on_event`` every ``progress_every`` s,
    once before the first submit and once at the end. Counts are jobs, across every run into
    the same folder (the journal's view), except ``in_flight`` and ``window`` (this run)."""

    pending: int  # not submitted yet (or to resubmit)
    queued: int  # waiting on fal's side
    running: int  # seen IN_PROGRESS
    in_flight: int  # submitted by this run and not finished
    done: int  # downloaded
    failed: int  # failed for good
    spent: float  # estimated USD this run added (in a rehearsal: what it would cost on fal)
    window: int  # requests allowed in flight now
    total: int = 0  # jobs in the folder's journal
    rehearsal: bool = False  # an --emulate run: nothing is billed
    unreachable: float | None = None  # seconds the server has not answered, once announced


RunEvent = Event | Snapshot
OnEvent = Callable[[RunEvent], None]


class Delivery:
    """Every event to run.log and to the caller's callback, which must not break the run."""

    def __init__(self, on_event: OnEvent | None, log: RunLog) -> None:
        self.wanted = on_event is not None
        self._on_event = on_event
        self._log = log
        self._error: Exception | None = None

    def __call__(self, event: RunEvent) -> None:
        if not isinstance(event, Snapshot):
            self._log.on_event(event)
        if self._on_event is None:
            return
        try:
            self._on_event(event)
        except Exception as exc:  # a bug in the caller's code must not leave a job half-done
            self._error, self._on_event = exc, None
            self._log.write(f"on_event raised {type(exc).__name__}; no more events delivered")

    def raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error


async def tick(snapshot: Callable[[], None], every: float | None) -> None:
    if every is None or every <= 0:
        return
    while True:
        await asyncio.sleep(every)
        snapshot()


def snapshot_of(journal: Journal, sched: Scheduler, total: int) -> Snapshot:
    c = journal.counts()
    return Snapshot(
        pending=c[S.PENDING] + c[S.UNKNOWN],
        queued=c[S.QUEUED],
        running=c[S.RUNNING],
        in_flight=sched.in_flight,
        done=c[S.DOWNLOADED],
        failed=c[S.FAILED],
        spent=usd(run_spend(journal, sched)),  # on_event's callers see it: to a millionth
        window=sched.window.size,
        total=total,
        rehearsal=sched.rehearsal,
        unreachable=sched.reach.seconds(),
    )


def run_spend(journal: Journal, sched: Scheduler) -> float:
    spent0, rehearsal0 = sched.spent_at_start
    if sched.rehearsal:
        return journal.rehearsal_estimate() - rehearsal0
    return journal.spent_estimate() - spent0
