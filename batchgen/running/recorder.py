"""What the scheduler and the download pool decide about a job, written down in one order:
the journal first, then ``failures.jsonl``, then the event (so a crash between two steps
leaves the journal, the source of truth, ahead of every view of it).

The download pool reports to it through ``outputs.downloader.DownloadReport`` (``saved``,
``fail``, ``lost``, ``disk_full``); an answer that ends the run (a refused key) goes to the
run's ``Stop``, and so do a locked account and a full disk, which end only its submitting.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from batchgen.errors import AuthError, DiskFull
from batchgen.journal.writer import JobRow, Journal
from batchgen.outputs.index import append_failure, failure_row
from batchgen.retry import Action, Outcome
from batchgen.running import events as ev
from batchgen.running.stop import Stop


class Recorder:
    def __init__(
        self,
        journal: Journal,
        *,
        out_dir: Path,
        max_attempts: int,
        emit: Callable[[ev.Event], None],
        stop: Stop,
        on_disk_full: Callable[[], bool] = lambda: False,
    ) -> None:
        self._journal = journal
        self._on_disk_full = on_disk_full
        self._out_dir = out_dir
        self._max_attempts = max_attempts
        self._emit = emit
        self._stop = stop

    def retrying(self, job: str | None, op: str, o: Outcome, delay: float, attempt: int) -> None:
        self._journal.event(job, "retry", f"{op} {o.reason}: {o.message}; wait {delay:.2f} s")
        self._emit(ev.Retrying(job, op, o.reason, o.message, delay, attempt))

    def saved(self, job_id: str, images: int) -> None:
        """Its images verified, indexed and the job DOWNLOADED (the pool committed that)."""
        self._emit(ev.Saved(job_id, images))

    def lost(self, row: JobRow, message: str) -> None:
        """fal no longer has the result or its images: the work is gone, send it again."""
        self.resubmit(row, "expired", message, lost=True)

    def disk_full(self, job_id: str, message: str) -> None:
        """An image could not be saved for want of room: the job keeps its result (COMPLETED)
        for the next run, and the run stops submitting (``on_disk_full`` makes room first)."""
        self._on_disk_full()
        with contextlib.suppress(DiskFull):  # the audit line is worth no more than that
            self._journal.event(job_id, "disk_full", message)

    def fail(self, row: JobRow, reason: str, message: str) -> None:
        """FAILED for good, with its class and message."""
        current = self._journal.get(row.job_id)
        self._journal.fail(row.job_id, reason, message)
        append_failure(
            self._out_dir,
            failure_row(
                row.spec,
                error_class=reason,
                message=message,
                attempts=(current or row).attempts + 1,
                request_id=(current or row).request_id,
            ),
        )
        self._emit(ev.Failed(row.job_id, reason, message))

    def after_failure(self, row: JobRow, o: Outcome) -> None:
        """A followed request failed as ``classify`` says: stop the run, fail the job, leave
        it attached for the next run, or send it again."""
        if o.action is Action.FATAL:
            self._stop.fail(AuthError(o.message))  # the request stays attached for next time
        elif o.action is Action.LOCKED:
            # fal would not answer for it now; it is still running there, paid for: the
            # request stays attached and the next run (after a top-up) follows it again.
            self._journal.event(row.job_id, "locked", o.message)
            self._stop.request(ev.StopReason.LOCKED, cause=o.message)
        elif o.action is Action.FINAL:
            self.fail(row, o.reason, o.message)
        elif o.action is Action.RETRY:
            # Deadline passed while the status or result could not be read: the request is
            # left attached (its id is in the journal) and re-attached by the next run.
            self._journal.event(row.job_id, "unreachable", o.message)
        else:
            self.resubmit(row, o.reason, o.message, lost=o.reason == "expired")

    def resubmit(
        self, row: JobRow, reason: str, message: str, *, lost: bool, dup: bool = False
    ) -> None:
        """Back in line for a new request, or FAILED once ``--max-attempts`` is spent. A lost
        result (fal no longer has it, or its images) is resubmitted whatever the attempts
        say: it is not the job's fault, and it is counted apart. Only a job lost more than
        ``--max-attempts`` times over is failed (as ``lost``), so a server that never keeps
        what it makes cannot spend without bound. ``dup``: the request it abandons may be
        billed as well as the next (it was cancelled while it ran), so the journal counts a
        possible duplicate charge when the job is sent again."""
        current = self._journal.get(row.job_id) or row
        if lost and current.lost >= self._max_attempts:
            self.fail(row, "lost", f"{message} (its result was lost {current.lost + 1} times)")
            return
        if current.attempts + 1 >= self._max_attempts and not lost:
            self.fail(row, reason, f"{message} (after {current.attempts + 1} attempts)")
            return
        self._journal.requeue(row.job_id, f"{reason}: {message}", lost=lost, dup=dup)
        self._emit(ev.Requeued(row.job_id, reason, message, lost, possible_duplicate=dup))
