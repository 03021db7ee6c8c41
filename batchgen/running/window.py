"""Pure pacing decisions for the scheduler: how many requests to keep in flight, whether the
budget allows one more, and how to watch a request. No I/O, no clock: the scheduler feeds
observations in and reads decisions out, so every rule here is table-tested.

The concurrency window counts requests submitted and not yet seen complete. fal never refuses
a queue submit for concurrency (extra requests wait IN_QUEUE), so the window, not the server,
bounds the money in flight. ``AutoWindow`` finds the account's limit L from what the requests
show when first watched:

* a request that starts running at once while the window is full says "there may be room":
  grow by one (so a full window of such starts doubles it, like TCP's slow start);
* a request seen waiting at queue position p while we have n in flight says "the server runs
  at most n - (p + 1) of ours": shrink to that, and remember it as the ceiling.

Growing back to the ceiling is free; growing past it is a probe, tried only after a long run
of immediate starts (the account's limit can rise with credit purchases), so against a fixed
limit L the window settles at L instead of flapping between L and L + 1.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

DEFAULT_MAX_WINDOW = 40  # fal's self-serve ceiling; more only by arrangement
PROBE_ROUNDS = 8  # windows' worth of immediate starts before probing above the ceiling


@dataclass(frozen=True, slots=True)
class Observation:
    """What the first status seen for one request said.

    ``position`` is the IN_QUEUE position (0 = next to start), or None when the request was
    already running or done. ``in_flight`` is how many of our requests were in flight when
    this one was submitted, itself included. ``prompt`` says the status was asked for right
    after the submit: a later look that finds it running cannot tell whether it waited first.
    ``ahead`` counts our requests submitted before this one and still in flight when the
    status came: the sharpest estimate of how many run, since requests that finished between
    this submit and this status no longer inflate it.
    """

    position: int | None
    in_flight: int
    prompt: bool = True
    ahead: int | None = None  # ours submitted earlier and still in flight, when known

    @property
    def waited(self) -> bool:
        return self.position is not None


class FixedWindow:
    """``--concurrency N``: the user knows the limit; observations change nothing."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a window holds at least one request")
        self.size = size

    def observe(self, obs: Observation) -> int:
        return self.size

    def wants_prompt_check(self) -> bool:
        return False


@dataclass
class AutoWindow:
    """``--concurrency auto``: find the account's limit, clamped to ``lo..hi``."""

    lo: int = 1
    hi: int = DEFAULT_MAX_WINDOW
    size: int = 2  # start small: a new account's limit is 2
    ceiling: int | None = None  # the largest size known not to queue, once one queued
    _streak: int = field(default=0, repr=False)  # immediate starts at the ceiling

    def __post_init__(self) -> None:
        if not 1 <= self.lo <= self.hi:
            raise ValueError("need 1 <= lo <= hi")
        self.size = min(max(self.size, self.lo), self.hi)

    def observe(self, obs: Observation) -> int:
        """Take one observation; return the new size."""
        if obs.waited:
            assert obs.position is not None
            # Ours on the server = running + queued, and at least position + 1 of ours wait,
            # so the server ran at most this many. Requests that finished meanwhile inflate
            # the estimate, never deflate it: a later observation corrects it downwards.
            before = obs.in_flight - 1 if obs.ahead is None else obs.ahead
            estimate = before - obs.position
            self.size = max(self.lo, min(self.size, estimate))
            self.ceiling = self.size
            self._streak = 0
            return self.size
        if not obs.prompt:
            # A late look: only a wait is evidence. It still counts towards the next probe.
            if self.ceiling is not None and obs.in_flight >= self.size >= self.ceiling:
                self._count_towards_probe()
            return self.size
        if self.ceiling is not None and obs.in_flight > self.ceiling:
            self.ceiling = None  # it ran at once above the ceiling: the limit went up
        if obs.in_flight < self.size:
            return self.size  # the window was not full: a free start says nothing about L
        if self.ceiling is None or self.size < self.ceiling:
            self.size = min(self.hi, self.size + 1)
            return self.size
        self._count_towards_probe()
        return self.size

    def _count_towards_probe(self) -> None:
        self._streak += 1
        if self._streak >= PROBE_ROUNDS * self.size and self.size < self.hi:
            self._streak = 0
            self.size += 1  # probe one above the ceiling; a wait puts it back

    def wants_prompt_check(self) -> bool:
        """Every request's first status should come at once: a late look that finds it
        running hides that it waited, and the window would never learn it is too big."""
        return True


Window = FixedWindow | AutoWindow


def make_window(concurrency: int | None, *, hi: int = DEFAULT_MAX_WINDOW) -> Window:
    """``None`` means auto."""
    return AutoWindow(hi=hi) if concurrency is None else FixedWindow(concurrency)


# -- budget -------------------------------------------------------------------------------

EPSILON_USD = 1e-9  # float sums of cents must not refuse a job that exactly fits


def budget_allows(*, spent: float, in_flight: float, job: float, cap: float | None) -> bool:
    """May a job costing ``job`` be submitted? Never past the cap, counting what may still be
    billed for the requests in flight."""
    if cap is None:
        return True
    return spent + in_flight + job <= cap + EPSILON_USD


# -- watching -------------------------------------------------------------------------------


class WatchMode(StrEnum):
    STREAM = "stream"
    POLL = "poll"
    WEBHOOK = "webhook"  # fal POSTs each result to us (running/webhooks.py)


@dataclass(frozen=True, slots=True)
class WatchPlan:
    """How to watch one request: optionally one status GET after ``check_after`` seconds
    (None: no early check), then the stream or polling."""

    mode: WatchMode
    check_after: float | None


# A stream costs a connection, an SSE handshake and a keep-alive; one status GET costs one
# round trip. When requests are expected done within this many seconds of submission, a
# single GET at the expected moment usually finds them COMPLETED and saves the stream.
QUICK_RUN_S = 0.5


def plan_watch(mode: WatchMode, expected_run: float | None) -> WatchPlan:
    """Choose per request from the run times seen so far (``expected_run``, None when none)."""
    if mode is WatchMode.POLL:
        return WatchPlan(WatchMode.POLL, None)
    if expected_run is not None and expected_run <= QUICK_RUN_S:
        return WatchPlan(WatchMode.STREAM, expected_run)
    return WatchPlan(WatchMode.STREAM, None)


POLL_MIN_S = 0.25  # never the fixed 100 ms poll of fal-client
POLL_MAX_S = 15.0
POLL_GROWTH = 1.6


def poll_delay(attempt: int, expected_run: float | None, elapsed: float) -> float:
    """Seconds before poll number ``attempt`` (0-based), ``elapsed`` seconds after submit.

    The first poll lands near the expected completion, later ones back off geometrically, so
    a request polls a handful of times whatever its length (fal-client polls every 100 ms:
    about 20 status requests for a 2 s job).
    """
    if attempt == 0 and expected_run is not None and expected_run > elapsed:
        return min(POLL_MAX_S, max(POLL_MIN_S, expected_run - elapsed))
    base = max(POLL_MIN_S, (expected_run or 1.0) * 0.25)
    return float(min(POLL_MAX_S, base * POLL_GROWTH**attempt))


class RunTimes:
    """The last few submit-to-completion times, for ``plan_watch`` and ``poll_delay``."""

    def __init__(self, keep: int = 32, initial: Iterable[float] = ()) -> None:
        self._recent: deque[float] = deque(initial, maxlen=keep)

    def add(self, seconds: float) -> None:
        self._recent.append(seconds)

    def expected(self) -> float | None:
        """The median: one very slow request should not slow everyone's polling."""
        return statistics.median(self._recent) if self._recent else None

    def slowest(self) -> float | None:
        return max(self._recent) if self._recent else None
