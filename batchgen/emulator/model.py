"""The emulator's queue, as pure in-memory state driven by an injected clock.

Nothing ticks in the background. Every call passes ``now`` (the app reads its injected clock),
and ``advance(now)`` replays what happened since the last call in time order: a request starts
at the exact moment a slot frees (not when someone polls), runs for its run time, completes,
and is forgotten when its result retention runs out. Tests therefore run an hour of model time
by moving a fake clock, and two polls at the same instant always agree.

The account model follows fal (docs/fal.md, Concurrency, the queue and priority): at most
``limit`` requests IN_PROGRESS, the rest IN_QUEUE, normal priority before low and FIFO within
each (``lanes``); submits are never refused for concurrency.
"""

from __future__ import annotations

import heapq
import random
import uuid
from collections import Counter
from typing import Any

from batchgen.emulator import billing, byok
from batchgen.emulator.counters import STAT_KEYS, canonical_input_key
from batchgen.emulator.faults import EVIL_NAMES, FaultDice, FaultSpec
from batchgen.emulator.lanes import PRIORITIES, Line
from batchgen.emulator.latency import INVALID_RUN_S, run_time_for
from batchgen.emulator.request import Outcome, Phase, Request, StatusView
from batchgen.planning import gptimage

RETENTION_S = 3600.0  # fal keeps a result 1 hour after completion...
RETENTION_LARGE_S = 360.0  # ...or 6 minutes when it is 10 KB or more
# Who answers a request fal reroutes (the `fallback` fault): not a real endpoint id, so nobody
# mistakes an emulated fallback for a model.
FALLBACK_ENDPOINT = "emulator/fallback"

__all__ = [
    "STAT_KEYS",
    "Outcome",
    "Phase",
    "QueueModel",
    "Request",
    "StatusView",
    "canonical_input_key",
]
# Runner failures as fal reports them: (HTTP status of the result, error_type, message).
RUNNER_ERRORS: tuple[tuple[int, str, str], ...] = (
    (503, "runner_disconnected", "Runner disconnected"),
    (504, "request_timeout", "Request timed out"),
    (500, "runner_server_error", "Runner returned a server error"),
    (502, "runner_incomplete_response", "Runner sent an incomplete response"),
)


class QueueModel:
    """Requests, their states, the concurrency limit and the counters the stats route shows."""

    def __init__(
        self,
        *,
        concurrency_limit: int = 40,
        time_scale: float = 1.0,
        faults: FaultSpec | None = None,
        seed: int = 0,
        retention_scale: float | None = None,
        result_ttl: float | None = None,
    ) -> None:
        if concurrency_limit < 1:
            raise ValueError("concurrency_limit must be at least 1")
        if time_scale < 0:
            raise ValueError("time_scale must not be negative")
        self.limit = concurrency_limit
        self.time_scale = time_scale
        # Retention follows the time scale, except at 0 (instant runs) where an instantly
        # expiring result would make the emulator useless.
        self.retention_scale = (
            retention_scale if retention_scale is not None else (time_scale or 1.0)
        )
        if result_ttl is not None and not result_ttl > 0:
            raise ValueError("result_ttl must be positive")
        # Set: every result is kept this many clock seconds, whatever its size or the scale.
        self.result_ttl = result_ttl
        self.dice = FaultDice(faults or FaultSpec(), seed)
        self._rng = random.Random(f"{seed}:latency")
        self.requests: dict[str, Request] = {}
        self.expired: set[str] = set()
        # fal's own record: every request that ended, in the order they ended, kept after the
        # queue forgets its result (the platform routes read it: emulator/platform.py).
        self.history: dict[str, Request] = {}
        self.bills: dict[str, billing.Charge] = {}  # request id -> what it was billed
        self.billed_nano = 0
        self._lanes: dict[str, Line[Request]] = {
            p: Line(lambda r: r.phase is Phase.QUEUED) for p in PRIORITIES
        }
        self._next_qseq = 0
        self._running: list[tuple[float, int, str]] = []  # heap of (finish_at, qseq, id)
        self._deadlines: list[tuple[float, int, str]] = []  # heap of (start by, qseq, id)
        self._n_running = 0
        self._n_queued = 0
        self._expiry: list[tuple[float, str]] = []  # heap of (expires_at, id)
        self._t = float("-inf")  # model time reached by advance()
        self.counters: Counter[str] = Counter()
        self.media_expires: dict[str, float] = {}  # request id -> when its images go (CDN)
        self.control_headers: dict[str, Counter[str]] = {}  # header -> value -> submits
        self.submits_per_input: Counter[str] = Counter()
        self.peak_in_progress = 0
        self.peak_queue_length = 0

    # -- time -----------------------------------------------------------------------------

    def advance(self, now: float) -> list[Request]:
        """Replay everything up to ``now``; return the requests that completed meanwhile.

        Two kinds of event move the queue: a running request finishing (which lets the next
        one start at that instant) and a queued request's start deadline passing. They are
        replayed in time order; on a tie the deadline wins, as it has already run out.
        """
        done: list[Request] = []
        if now < self._t:
            now = self._t  # a clock never runs backwards inside the model
        t = self._t if self._t != float("-inf") else now
        while True:
            self._fill(t)
            finish = self._peek_finish()
            deadline = self._peek_deadline()
            if (
                deadline is not None
                and deadline[0] <= now
                and (finish is None or deadline[0] <= finish[0])
            ):
                heapq.heappop(self._deadlines)
                t, req = deadline
                self._unqueue(req)
                req.outcome = Outcome.START_TIMEOUT
                self._complete(req, t)
            elif finish is not None and finish[0] <= now:
                heapq.heappop(self._running)
                t, req = finish
                self._complete(req, t)
            else:
                break
            done.append(req)
        self._t = now
        self._expire(now)
        return done

    def _peek_finish(self) -> tuple[float, Request] | None:
        while self._running:
            finish_at, _, rid = self._running[0]
            req = self.requests.get(rid)
            if req is not None and req.phase is Phase.RUNNING and req.finish_at == finish_at:
                return finish_at, req
            heapq.heappop(self._running)  # stale: cancelled while running
        return None

    def _peek_deadline(self) -> tuple[float, Request] | None:
        while self._deadlines:
            at, _, rid = self._deadlines[0]
            req = self.requests.get(rid)
            if req is not None and req.phase is Phase.QUEUED:
                return at, req
            heapq.heappop(self._deadlines)  # stale: it started, or was cancelled
        return None

    def next_event_at(self) -> float | None:
        """When the queue next changes by itself (a completion or a start deadline), if ever."""
        times = [e[0] for e in (self._peek_finish(), self._peek_deadline()) if e is not None]
        return min(times) if times else None

    def _unqueue(self, req: Request) -> None:
        """Take a queued request out of line; it stays in its lane and is skipped there."""
        self._lanes[req.priority].take_out(req.ticket)

    def _next_in_line(self) -> Request | None:
        for lane in self._lanes.values():  # normal before low
            req = lane.pop()
            if req is not None:
                return req
        return None

    def _fill(self, t: float) -> None:
        while self._n_running < self.limit and (req := self._next_in_line()) is not None:
            self._n_queued -= 1
            req.phase = Phase.RUNNING
            req.started_at = max(t, req.submitted_at)
            req.finish_at = req.started_at + req.run_time
            heapq.heappush(self._running, (req.finish_at, req.qseq, req.id))
            self._n_running += 1
            self.peak_in_progress = max(self.peak_in_progress, self._n_running)
        for lane in self._lanes.values():
            lane.trim()

    def _complete(self, req: Request, t: float) -> None:
        if req.phase is Phase.RUNNING:
            self._n_running -= 1
        elif req.phase is Phase.QUEUED:
            self._n_queued -= 1
        req.phase = Phase.DONE
        req.completed_at = t
        self.history[req.id] = req
        bill = billing.charge(req)
        if bill is not None:
            self.bills[req.id] = bill
            self.billed_nano += bill.nano_usd
        large = bool(req.outcome is Outcome.OK and req.input.get("sync_mode") is True)
        keep = (RETENTION_LARGE_S if large else RETENTION_S) * self.retention_scale
        if self.result_ttl is not None:
            keep = self.result_ttl
        req.expires_at = t + keep
        heapq.heappush(self._expiry, (req.expires_at, req.id))
        if req.media_expiry is not None and req.outcome is Outcome.OK:
            # fal's CDN clock starts when the image is made; scaled like result retention.
            self.media_expires[req.id] = t + req.media_expiry * self.retention_scale

    def media_gone(self, request_id: str, now: float) -> bool:
        """Whether the images of ``request_id`` have passed their lifecycle expiry."""
        at = self.media_expires.get(request_id)
        return at is not None and now >= at

    def _expire(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            _, rid = heapq.heappop(self._expiry)
            if rid in self.requests:
                del self.requests[rid]
                self.expired.add(rid)

    # -- operations -----------------------------------------------------------------------

    def submit(
        self,
        app: str,
        endpoint: str,
        body: dict[str, Any],
        now: float,
        *,
        webhook: str | None = None,
        start_timeout: float | None = None,
        input_problems: list[gptimage.InputProblem] | None = None,
        reference: Any = None,
        priority: str = "normal",
        media_expiry: float | None = None,
        fallbacks: bool = True,
    ) -> Request:
        """Accept a request (fal accepts invalid input too: it fails at result time).

        ``start_timeout`` (X-Fal-Request-Start-Timeout, real seconds, not scaled) fails the
        request if it is still queued that long after submission. ``input_problems`` are
        found by the app layer (references it cannot fetch); ``reference`` is kept for the
        rendered result. ``priority`` picks its lane (low waits behind every normal one);
        ``media_expiry`` is how long its images are served after completion; ``fallbacks``
        False (x-fal-disable-fallbacks) keeps the `fallback` fault from rerouting it.
        """
        self.advance(now)
        problems = gptimage.validate_input(endpoint, body, strict=False)
        problems += byok.problems(endpoint, body)  # the OpenAI key, a BYOK id's rules
        problems += input_problems or []
        if problems:
            outcome, run_time = Outcome.INVALID, INVALID_RUN_S
        else:
            run_time = run_time_for(endpoint, body, self._rng)
            if self.dice.roll("content_policy"):
                outcome = Outcome.CONTENT_POLICY
            elif self.dice.roll("runner_error"):
                outcome = Outcome.RUNNER_ERROR
            else:
                outcome = Outcome.OK
        req = Request(
            id=str(uuid.uuid4()),
            app=app,
            endpoint=endpoint,
            input=body,
            submitted_at=now,
            run_time=run_time * self.time_scale,
            outcome=outcome,
            qseq=self._next_qseq,
            webhook=webhook,
            problems=problems,
            reference=reference,
            priority=priority if priority in self._lanes else "normal",
            media_expiry=media_expiry,
        )
        if outcome is Outcome.RUNNER_ERROR:
            req.runner_error = self._rng.choice(RUNNER_ERRORS)
        self._tamper(req, fallbacks)
        self._next_qseq += 1
        self.requests[req.id] = req
        req.ticket = self._lanes[req.priority].push(req)
        self._n_queued += 1
        if start_timeout is not None:
            req.start_by = now + start_timeout
            heapq.heappush(self._deadlines, (req.start_by, req.qseq, req.id))
        self.counters["submits_accepted"] += 1
        self.submits_per_input[canonical_input_key(endpoint, body)] += 1
        self._fill(now)
        self.peak_queue_length = max(self.peak_queue_length, self._n_queued)
        return req

    def _tamper(self, req: Request, fallbacks: bool) -> None:
        """Decided once per request, so every read of its result says the same thing."""
        if req.outcome is Outcome.CONTENT_POLICY and self.dice.roll("policy_retryable"):
            req.retryable_refusal = True
            self.counters["refusals_retryable"] += 1
        if req.outcome is not Outcome.OK:
            return
        if self.dice.roll("fallback"):  # fal would reroute it, if the request lets it
            if fallbacks:
                req.answered_by = FALLBACK_ENDPOINT
            self.counters["fallbacks_used" if fallbacks else "fallbacks_disabled"] += 1
        if self.dice.roll("evil_name"):
            req.evil_name = EVIL_NAMES[self.counters["results_evil_name"] % len(EVIL_NAMES)]
            self.counters["results_evil_name"] += 1
        if self.dice.roll("file_url"):
            req.file_url = True
            self.counters["results_file_url"] += 1
        if self.dice.roll("blank"):
            req.blank = True
            self.counters["results_blank"] += 1

    def view(self, rid: str, now: float) -> StatusView | None:
        """The request's state at ``now``; None when unknown or expired."""
        self.advance(now)
        req = self.requests.get(rid)
        if req is None:
            return None
        position = None
        if req.phase is Phase.QUEUED:
            position = self._lanes[req.priority].position(req.ticket)
            if req.priority == "low":  # behind every normal request waiting
                position += self._lanes["normal"].length
        return StatusView(req.phase, position, req)

    def cancel(self, rid: str, now: float) -> str:
        """fal's cancel answer: CANCELLATION_REQUESTED, ALREADY_COMPLETED or NOT_FOUND.

        A queued request is removed and never runs; a running one stops at once (the
        emulated app honours cancellation), which frees its slot for the next in line.
        """
        self.advance(now)
        req = self.requests.get(rid)
        if req is None:
            return "NOT_FOUND"
        if req.phase is Phase.DONE:
            return "ALREADY_COMPLETED"
        self.counters["cancels_effective"] += 1
        if req.phase is Phase.QUEUED:
            self._unqueue(req)
        req.outcome = Outcome.CANCELLED
        req.finish_at = now
        self._complete(req, now)
        self._fill(now)
        return "CANCELLATION_REQUESTED"

    def queue_length(self) -> int:
        return self._n_queued

    def stats(self) -> dict[str, Any]:
        dupes = sum(n - 1 for n in self.submits_per_input.values() if n > 1)
        return {
            **{k: self.counters[k] for k in STAT_KEYS},
            **{k: v for k, v in sorted(self.counters.items()) if k not in STAT_KEYS},
            "submits_per_input": dict(self.submits_per_input),
            "duplicate_submits": dupes,
            "in_progress": self._n_running,
            "queue_length": self._n_queued,
            "peak_in_progress": self.peak_in_progress,
            "peak_queue_length": self.peak_queue_length,
            "requests_kept": len(self.requests),
            "requests_expired": len(self.expired),
            "requests_ended": len(self.history),
            "billed_requests": len(self.bills),
            "billed_usd": self.billed_nano / billing.NANO,
            "control_headers": {h: dict(v) for h, v in sorted(self.control_headers.items())},
        }
