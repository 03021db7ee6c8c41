"""What to do about a failure, and how long to wait before doing it again.

``classify(exc, op=...)`` is pure: it reads an exception raised by the queue client (or httpx,
or ``outputs.download``) and returns an ``Outcome``, the one place that decides what an answer
means (docs/interfaces.md has the table; ``tests/test_retry.py`` has one case per row).

``RetryPolicy`` is the one policy type: how many tries, the backoff (full jitter, doubling from
``base`` up to ``cap``, a server's Retry-After as a floor) and which outcomes are worth another
try. Every loop that tries again holds one of the named policies below and asks it, after each
failure, whether and how long to wait; docs/interfaces.md lists the loops and why each is its
own. ``call_with_retries`` is that loop for an idempotent request; the submit POST is never
retried there, because repeating it can pay twice. Sleeps are injected everywhere, and
``ZeroWait`` is the zero-wait testing mode that records the delays it was asked for.

This module sits at the bottom of the package (beside ``errors``), so that the downloads
(``outputs``), the queue client (``fal``) and the scheduler (``running``) share it.

Actions:
    RETRY     nothing was created or the request is idempotent: do the same thing again later
    RESUBMIT  the request ran (or vanished) and failed in a way a fresh request may not
    FINAL     the request itself is wrong (validation, content policy): never retried; a
              content-policy refusal stays final even when the server says X-Fal-Retryable
    FATAL     the key is wrong: stop the whole run
    LOCKED    the account can pay for nothing more: stop submitting, collect what it paid for
    UNKNOWN   a submit was sent and no answer came: a job may exist and may be billed
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, TypeVar

import httpx

from batchgen.errors import (
    AccountLocked,
    AuthError,
    BatchgenError,
    DownloadError,
    ProtocolError,
    QueueHTTPError,
    QueueTransportError,
    StatusStreamError,
    UnknownOutcome,
)

OPS: frozenset[str] = frozenset(
    {"submit", "status", "result", "cancel", "media", "upload", "notify", "platform"}
)

T = TypeVar("T")


class Action(StrEnum):
    RETRY = "retry"
    RESUBMIT = "resubmit"
    FINAL = "final"
    FATAL = "fatal"
    LOCKED = "locked"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Outcome:
    action: Action
    reason: str  # a short class to group failures by: http_429, validation, expired, ...
    message: str  # one line, no secret
    retry_after: float | None = None


# A request refused before any job was created: fal-client retries exactly these on submit.
_REFUSED_NOTHING_CREATED = frozenset({408, 409, 429})
# Locked account (third-party reports say 402 or 403) and bad keys stop the run.
_FATAL = frozenset({401, 402, 403})
_MEDIA_GONE = frozenset({"http_404", "http_410"})  # an image URL that no longer answers
CONTENT_POLICY = "content_policy_violation"
START_TIMEOUT = "start_timeout"  # the reason for fal's 504 with X-Fal-Request-Timeout-Type: user


def classify(exc: BaseException, *, op: str) -> Outcome:
    """Map a failure during ``op`` to what the caller should do. Pure: any exception gets an
    answer (ValueError only for an ``op`` that is not one of ``OPS``)."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}")
    msg = _one_line(exc)
    if isinstance(exc, AccountLocked):
        return Outcome(Action.LOCKED, "account_locked", msg)
    if isinstance(exc, AuthError):
        return Outcome(Action.FATAL, "auth", msg)
    if isinstance(exc, QueueHTTPError):
        return _classify_http(exc, op, msg)
    if isinstance(exc, UnknownOutcome):
        return Outcome(Action.UNKNOWN, "submit_dropped", msg)
    if isinstance(exc, QueueTransportError):
        if op == "submit" and exc.sent:
            return Outcome(Action.UNKNOWN, "submit_dropped", msg)
        return Outcome(Action.RETRY, "transport", msg)
    if isinstance(exc, httpx.TransportError):
        # Raw httpx errors (e.g. from a media download): for a submit, only a failure to
        # connect proves nothing was sent.
        if op == "submit" and not nothing_sent(exc):
            return Outcome(Action.UNKNOWN, "submit_dropped", msg)
        return Outcome(Action.RETRY, "transport", msg)
    if isinstance(exc, StatusStreamError):
        return Outcome(Action.RETRY, "stream_broken", msg)
    if isinstance(exc, ProtocolError):
        # A 2xx we cannot read. After a submit a job may exist; for a status or result we can
        # no longer tell where the request stands, so a fresh one (bounded) is the way out.
        if op == "submit":
            return Outcome(Action.UNKNOWN, "protocol", msg)
        if op in ("status", "result"):
            return Outcome(Action.RESUBMIT, "protocol", msg)
        return Outcome(Action.RETRY, "protocol", msg)
    if isinstance(exc, DownloadError):
        if exc.reason in _MEDIA_GONE:  # fal no longer has the image: the work is lost
            return Outcome(Action.RESUBMIT, "expired", msg)
        return Outcome(
            Action.RETRY if exc.retryable else Action.FINAL, f"download_{exc.reason}", msg
        )
    if isinstance(exc, httpx.HTTPStatusError):  # a plain httpx answer (--notify's receiver)
        status = exc.response.status_code
        if status in _REFUSED_NOTHING_CREATED or status >= 500:
            return Outcome(Action.RETRY, f"http_{status}", msg)
        return Outcome(Action.FINAL, f"http_{status}", msg)
    return Outcome(Action.FINAL, "error", msg)


def _classify_http(exc: QueueHTTPError, op: str, msg: str) -> Outcome:
    status = exc.status
    reason = f"http_{status}"
    # Media and signed upload URLs are fetched without our key: their 403 is about that one
    # URL, not the account (the client raises AuthError where the key itself was refused).
    if status in _FATAL and op not in ("media", "upload"):
        if exc.locked:
            return Outcome(Action.LOCKED, "account_locked", msg)
        return Outcome(Action.FATAL, "auth", msg)
    # A content-policy refusal judges the input itself: the same input is paid for again and
    # refused again. So it is final whatever X-Fal-Retryable says (a 429 or 408 that happens to
    # name it still refused before any job was made, and stays a retry below).
    if (
        400 <= status < 500
        and status not in _REFUSED_NOTHING_CREATED
        and _request_reason(exc) == CONTENT_POLICY
    ):
        return Outcome(Action.FINAL, CONTENT_POLICY, msg)
    transient = (
        status in _REFUSED_NOTHING_CREATED
        or exc.ingress
        or (op != "submit" and op != "result" and status >= 500)
        or (op == "result" and status >= 500 and not _is_model_failure(exc))
    )
    # X-Fal-Retryable is the server's own word; it overrides our guess either way.
    if exc.retryable is False and transient:
        return Outcome(Action.FINAL, reason, msg)
    if transient:
        return Outcome(Action.RETRY, reason, msg, exc.retry_after)

    if op == "submit":
        # An answer that is not a refusal: fal created nothing it will run. Retrying blindly
        # could repeat a real error forever, so it is final unless the server says otherwise.
        if exc.retryable:
            return Outcome(Action.RETRY, reason, msg, exc.retry_after)
        return Outcome(Action.FINAL, _request_reason(exc), msg)

    if op in ("result", "status"):
        if status == 504 and (exc.timeout_type or "").strip().lower() == "user":
            # The request's own start timeout ran out before any runner took it: it never
            # ran, fal bills nothing, and a fresh request may find a free runner. Resubmitted,
            # bounded by --max-attempts like any request that failed.
            return Outcome(Action.RESUBMIT, START_TIMEOUT, msg)
        if status in (404, 410):  # the queue keeps a result for a while, then forgets it
            return Outcome(Action.RESUBMIT, "expired", msg)
        if status >= 500 or status == 499:
            return Outcome(Action.RESUBMIT, exc.error_type or reason, msg)
        if exc.retryable:
            return Outcome(Action.RESUBMIT, _request_reason(exc), msg)
        return Outcome(Action.FINAL, _request_reason(exc), msg)

    # cancel, media, upload: a 4xx answer will not change on a second try.
    return Outcome(Action.FINAL, reason, msg)


def _is_model_failure(exc: QueueHTTPError) -> bool:
    """A result 5xx that is the request's own answer (replayed by the queue), not a hiccup:
    it names a runner error_type, or is a 504 that fal marks as a request timeout."""
    return exc.error_type is not None or (exc.status == 504 and not exc.ingress)


def _request_reason(exc: QueueHTTPError) -> str:
    """``content_policy_violation`` or ``validation`` for a 422; else the error type or code."""
    kinds = {exc.error_type} if exc.error_type else set()
    if isinstance(exc.detail, list):
        kinds |= {str(d.get("type")) for d in exc.detail if isinstance(d, dict)}
    if CONTENT_POLICY in kinds:
        return CONTENT_POLICY
    if exc.status == 422:
        return "validation"
    return exc.error_type or f"http_{exc.status}"


# Failures that happen before a byte of the request reaches the server: no connection was
# made (refused, timed out, no pool slot, proxy refused, a URL httpx cannot even try).
_NOTHING_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ProxyError,
    httpx.UnsupportedProtocol,
)


def nothing_sent(exc: httpx.TransportError) -> bool:
    """True when ``exc`` proves the request never reached the server (safe to repeat a POST)."""
    return isinstance(exc, _NOTHING_SENT)


def _one_line(exc: BaseException) -> str:
    """The message people read (failures.jsonl, the gallery, run.log). Our own errors are
    written to be read as they are ("HTTP 422: prompt: ..."); anything else (an httpx error,
    a bug) keeps its type's name, which is often the only clue ("ConnectError: ...")."""
    text = str(exc).replace("\n", " ").strip()
    if isinstance(exc, BatchgenError) and text:
        return text[:300]
    name = type(exc).__name__
    return f"{name}: {text}"[:300] if text else name


# ---------------------------------------------------------------------------- backoff

# A bogus Retry-After (an hour, a date in 2099) must not stall a run silently.
MAX_RETRY_AFTER = 300.0


def backoff(
    attempt: int,
    *,
    retry_after: float | None = None,
    base: float = 0.5,
    cap: float = 30.0,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry).

    Full jitter (uniform in [0, min(cap, base·2^(attempt-1))]) spreads many workers that failed
    together. A server's Retry-After is a floor, never shortened; up to 25 % is added on top so
    the workers it refused at once do not all return at the same instant.
    """
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    if retry_after is not None and retry_after > 0:
        wait = min(retry_after, MAX_RETRY_AFTER)
        return wait * (1.0 + 0.25 * rng())
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 62))
    return ceiling * rng()


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date; None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - now()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


# ---------------------------------------------------------------------------- the retry loop


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a loop tries again: ``attempts`` tries in all (the first included; None: no count,
    the loop's deadline or the run's stop ends it), waits from :func:`backoff` with ``base``,
    ``cap`` and the jitter of ``rng``, and only after an outcome whose action is in
    ``retryable``."""

    attempts: int | None = 5
    base: float = 0.5
    cap: float = 30.0
    retryable: frozenset[Action] = frozenset({Action.RETRY})
    rng: Callable[[], float] = random.random

    def again(self, attempt: int, outcome: Outcome) -> bool:
        """Whether try number ``attempt`` (1 for the first), which ended in ``outcome``, is
        followed by another."""
        if outcome.action not in self.retryable:
            return False
        return self.attempts is None or attempt < self.attempts

    def delay(self, attempt: int, outcome: Outcome | None = None) -> float:
        """Seconds to wait after try number ``attempt`` failed (``outcome``'s Retry-After, if
        any, is the floor)."""
        after = outcome.retry_after if outcome is not None else None
        return backoff(attempt, retry_after=after, base=self.base, cap=self.cap, rng=self.rng)

    def jittered(self, rng: Callable[[], float]) -> RetryPolicy:
        """The same policy drawing its jitter from ``rng`` (tests: a fixed one)."""
        return replace(self, rng=rng)


# The run's policies, one per kind of loop (docs/interfaces.md says why each is separate).
# An idempotent request inside the queue client (status, result, cancel, uploads, JWKS).
REQUESTS = RetryPolicy()
# A submit refused before fal created anything (429, 408, 409, a load balancer's 5xx, no
# connection): it costs nothing, so be patient, but not forever for a server that answers.
SUBMITS = RetryPolicy(attempts=8, retryable=frozenset({Action.RETRY, Action.RESUBMIT}))
# The same while the server cannot be reached at all: nobody's fault, never a failed job; the
# run's stop ends it.
SUBMITS_UNREACHABLE = replace(SUBMITS, attempts=None)
# A live request's status or result after the client's own tries ran out: sending it again
# would pay twice, so keep asking, more slowly, until its deadline.
FOLLOW = RetryPolicy(attempts=None, base=2.0)
# One image's GET (transport errors, truncation, 429, 5xx).
MEDIA = RetryPolicy(attempts=3, cap=10.0)
# An image that still failed is fetched again from a fresh read of the result: a new URL can
# cure what the old one could not (a truncating CDN node, a wrong type, media gone from one
# node), so any failure counts. No wait: the fresh read is the remedy.
REFETCH = RetryPolicy(
    attempts=3,
    base=0.0,
    cap=0.0,
    retryable=frozenset({Action.RETRY, Action.RESUBMIT, Action.FINAL}),
)
# --notify's POST at the end of a run: one more try, up to a second later.
NOTIFY = RetryPolicy(attempts=2, base=1.0, cap=1.0)


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """Reported before each wait, so the caller can journal every failed attempt."""

    op: str
    attempt: int
    outcome: Outcome
    delay: float


class ZeroWait:
    """A sleep that returns at once and remembers what it was asked: retries in tests take no
    time, and the test can still assert on the delays (Retry-After honoured, backoff growing)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


Sleep = Callable[[float], Awaitable[Any]]


async def call_with_retries(
    fn: Callable[[], Awaitable[T]],
    *,
    op: str,
    policy: RetryPolicy,
    sleep: Sleep,
    on_retry: Callable[[RetryEvent], None] | None = None,
) -> T:
    """Run ``fn`` until it succeeds, a failure is not RETRY, or the attempts run out; the last
    exception propagates unchanged so the caller can classify it again."""
    if op == "submit":
        raise ValueError("the submit POST is never retried by the loop: it can pay twice")
    attempt = 1
    while True:
        try:
            return await fn()
        except Exception as exc:
            outcome = classify(exc, op=op)
            if not policy.again(attempt, outcome):
                raise
            delay = policy.delay(attempt, outcome)
            if on_retry is not None:
                on_retry(RetryEvent(op, attempt, outcome, delay))
            await sleep(delay)
            attempt += 1
