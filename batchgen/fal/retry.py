"""What to do about a failure, and how long to wait before doing it again.

``classify(exc, op=...)`` is pure: it reads an exception raised by the queue client (or httpx, or
``download``) and returns an ``Outcome`` — the one place that encodes the design's Errors table
(``tests/test_retry.py`` has one case per row).
``backoff`` is pure too (randomness injected). ``call_with_retries`` is the single retry loop,
used only for idempotent requests (status, result, cancel, media, upload); the submit POST is
never retried here because repeating it can pay twice. Its sleep is injected, and ``ZeroWait``
is the zero-wait testing mode that records the delays it was asked for.

Actions:
    RETRY     nothing was created or the request is idempotent: do the same thing again later
    RESUBMIT  the request ran (or vanished) and failed in a way a fresh request may not
    FINAL     the request itself is wrong (validation, content policy): never retried; a
              content-policy refusal stays final even when the server says X-Fal-Retryable
    FATAL     the account or key is wrong: stop the whole run
    UNKNOWN   a submit was sent and no answer came: a job may exist and may be billed
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, TypeVar

import httpx

from batchgen.errors import (
    AuthError,
    BatchgenError,
    DownloadError,
    ProtocolError,
    QueueHTTPError,
    QueueTransportError,
    StatusStreamError,
    UnknownOutcome,
)

Op = Literal["submit", "status", "result", "cancel", "media", "upload"]
OPS: frozenset[str] = frozenset({"submit", "status", "result", "cancel", "media", "upload"})

T = TypeVar("T")


class Action(StrEnum):
    RETRY = "retry"
    RESUBMIT = "resubmit"
    FINAL = "final"
    FATAL = "fatal"
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
CONTENT_POLICY = "content_policy_violation"
START_TIMEOUT = "start_timeout"  # the reason for fal's 504 with X-Fal-Request-Timeout-Type: user


def classify(exc: BaseException, *, op: str) -> Outcome:
    """Map a failure during ``op`` to what the caller should do. Pure: any exception gets an
    answer (ValueError only for an ``op`` that is not one of ``OPS``)."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}")
    msg = _one_line(exc)
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
        return Outcome(Action.RETRY if exc.retryable else Action.FINAL, "download", msg)
    return Outcome(Action.FINAL, "error", msg)


def _classify_http(exc: QueueHTTPError, op: str, msg: str) -> Outcome:
    status = exc.status
    reason = f"http_{status}"
    # Media and signed upload URLs are fetched without our key: their 403 is about that one
    # URL, not the account (the client raises AuthError where the key itself was refused).
    if status in _FATAL and op not in ("media", "upload"):
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
        if status == 404:
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
    attempts: int = 5  # tries in all, the first included
    base: float = 0.5
    cap: float = 30.0
    rng: Callable[[], float] = random.random


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
            if outcome.action is not Action.RETRY or attempt >= policy.attempts:
                raise
            delay = backoff(
                attempt,
                retry_after=outcome.retry_after,
                base=policy.base,
                cap=policy.cap,
                rng=policy.rng,
            )
            if on_retry is not None:
                on_retry(RetryEvent(op, attempt, outcome, delay))
            await sleep(delay)
            attempt += 1
