"""``run.log``: a plain-text, timestamped account of a run, kept in its output folder.

One line per thing a person debugging a night's run wants to see: the start, the plan, every
resume, retry, requeue and failure, window changes, stops, and the summary. Routine successes
(a job submitted, an image saved) are left to the journal's audit trail, so the log stays
readable at 100,000 jobs. Every line passes through ``redact`` (``Settings.redact``: the fal
key and, for a BYOK run, the OpenAI key), so a key can never reach the file even if a server
echoes it back in an error message.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from batchgen.running.events import (
    BudgetReached,
    Event,
    Failed,
    Found,
    HistoryUnavailable,
    LookedUp,
    Planned,
    Reachable,
    Ready,
    Recovered,
    Requeued,
    Resumed,
    Retrying,
    Stopping,
    SubmitLost,
    Unreachable,
    WebhooksSilent,
    WindowChanged,
    announce,
    history_text,
    repair_notices,
    silent_text,
)

RUN_LOG = "run.log"


def describe(event: Event) -> str | None:
    """The log line for an event, or None for the routine ones."""
    match event:
        case Planned(new=new, kept=kept, not_in_manifest=gone):
            extra = (
                f", {gone} in the journal but no longer in the manifest (not run)" if gone else ""
            )
            return f"plan: {new} new jobs, {kept} kept{extra}"
        case Resumed(reattached=r, to_download=d, unknown=u, retried_failed=f):
            more = [
                f"{n} {what}"
                for n, what in (
                    (event.redownload, "download failures to fetch again (no new submit)"),
                    (event.dropped, "requests of a stopped emulator resubmitted (free)"),
                    (event.replaced, "rehearsal jobs to make for real (placeholders removed)"),
                )
                if n
            ] + [text for n, text in repair_notices(event) if n]
            if not (r or d or u or f or more):
                return None
            return (
                f"resume: {r} requests re-attached, {d} results to download, "
                f"{u} lost submits to look for in fal's history, "
                f"{f} failed jobs put back" + "".join(f", {x}" for x in more)
            )
        case Ready():
            return "ready: " + " ".join(announce(event))
        case Retrying(job_id=job, op=op, reason=reason, message=msg, delay=delay, attempt=n):
            who = f"job {job[:16]} " if job else ""
            return f"retry: {who}{op} #{n} {reason} ({msg}); waiting {delay:.2f} s"
        case Requeued(job_id=job, reason=reason, message=msg, lost=lost, possible_duplicate=d):
            what = (
                "result expired before it was fetched (lost); resubmitting"
                if lost
                else ("resubmitting (a possible duplicate charge)" if d else "resubmitting")
            )
            return f"requeue: job {job[:16]} {reason} ({msg}); {what}"
        case SubmitLost(job_id=job, reason=reason, message=msg):
            return f"lost: job {job[:16]} {reason} ({msg}); looking in fal's history first"
        case Found(job_id=job, request_id=rid):
            return f"found: job {job[:16]} made request {rid} (fal's history); following it"
        case LookedUp(lost=n, found=f):
            return f"history: looked for {n} lost submits, found {f}"
        case HistoryUnavailable():
            return "notice: " + history_text(event)
        case Recovered(job_id=job, request_id=rid):
            return f"recovered: job {job[:16]} result of {rid} read from fal's history"
        case Failed(job_id=job, reason=reason, message=msg):
            return f"failed: job {job[:16]} {reason}: {msg}"
        case WindowChanged(size=size):
            return f"window: up to {size} requests in flight"
        case Unreachable(seconds=s, message=msg):
            return f"unreachable: no answer from the server for {s:.1f} s ({msg}); retrying"
        case Reachable(seconds=s):
            return f"reachable: the server answers again after {s:.1f} s"
        case BudgetReached(spent=spent, in_flight=fl, next_cost=c, cap=cap):
            return (
                f"budget: spent ${spent:.2f} + in flight ${fl:.2f} + next job ${c:.2f} "
                f"would pass --max-cost ${cap:.2f}; no more submits"
            )
        case WebhooksSilent():
            return silent_text(event)
        case Stopping(now=now, reason=reason):
            return f"stop ({reason}): " + (
                "cancelling everything now" if now else "no new submits; finishing paid requests"
            )
        case _:
            return None


class RunLog:
    """Appends lines to ``out_dir/run.log``; each line is flushed as it is written."""

    def __init__(
        self,
        out_dir: Path,
        *,
        redact: Callable[[str], str] = lambda s: s,
        clock: Callable[[], float] = time.time,
    ) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / RUN_LOG
        self._redact = redact
        self._clock = clock
        self._f: IO[str] | None = self.path.open("a", encoding="utf-8")

    def write(self, message: str) -> None:
        if self._f is None:
            return
        stamp = datetime.fromtimestamp(self._clock(), UTC).isoformat(timespec="milliseconds")
        try:
            for line in self._redact(message).splitlines() or [""]:
                self._f.write(f"{stamp.replace('+00:00', 'Z')} {line}\n")
            self._f.flush()
        except OSError:
            # A full disk: the run goes on and says so itself; a log line is not worth a
            # crash (what is still buffered is written with the next line that fits).
            pass

    def on_event(self, event: Event) -> None:
        line = describe(event)
        if line is not None:
            self.write(line)

    def close(self) -> None:
        if self._f is not None:
            with contextlib.suppress(OSError):  # the last buffered lines, on a full disk
                self._f.close()
            self._f = None
