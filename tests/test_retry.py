"""batchgen/retry.py: every row of docs/interfaces.md's table (What a failure means) as a table
test, backoff's bounds, the policies, the loop."""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

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
from batchgen.retry import (
    MAX_RETRY_AFTER,
    Action,
    RetryEvent,
    RetryPolicy,
    ZeroWait,
    backoff,
    call_with_retries,
    classify,
    parse_retry_after,
)

REQ = httpx.Request("POST", "https://queue.fal.run/openai/gpt-image-2")
NGINX = {"ingress": True}
CPV = [{"loc": ["body", "prompt"], "msg": "flagged", "type": "content_policy_violation"}]
BAD = [{"loc": ["body", "image_size"], "msg": "too small", "type": "value_error"}]


def http(status: int, **kw: Any) -> QueueHTTPError:
    return QueueHTTPError(status, **kw)


# (op, exception, action, reason) — one line per row of docs/interfaces.md's table (What a
# failure means), and its edges.
TABLE: list[tuple[str, BaseException, Action, str]] = [
    # any: 401 / 403 -> stop the run
    *[(op, http(401), Action.FATAL, "auth") for op in ("submit", "status", "result", "cancel")],
    ("submit", http(403), Action.FATAL, "auth"),
    ("upload", AuthError("bad key"), Action.FATAL, "auth"),
    # ...a locked account (its credit ran out): stop submitting, collect what was accepted
    ("result", http(402), Action.LOCKED, "account_locked"),
    (
        "submit",
        http(403, detail="User is locked. Reason: Exhausted balance"),
        Action.LOCKED,
        "account_locked",
    ),
    ("submit", AccountLocked("locked"), Action.LOCKED, "account_locked"),
    # ...but a 403 from a public media URL or a signed upload URL is about that URL only
    ("media", http(403), Action.FINAL, "http_403"),
    ("upload", http(403), Action.FINAL, "http_403"),
    # submit: 408, 409, 429, ingress 5xx, connect error -> retry with backoff
    ("submit", http(408), Action.RETRY, "http_408"),
    ("submit", http(409), Action.RETRY, "http_409"),
    ("submit", http(429, retry_after=7.0), Action.RETRY, "http_429"),
    ("submit", http(502, **NGINX), Action.RETRY, "http_502"),
    ("submit", http(503, **NGINX), Action.RETRY, "http_503"),
    ("submit", http(504, **NGINX), Action.RETRY, "http_504"),
    ("submit", QueueTransportError("connect", sent=False), Action.RETRY, "transport"),
    ("submit", httpx.ConnectError("refused", request=REQ), Action.RETRY, "transport"),
    ("submit", httpx.PoolTimeout("pool", request=REQ), Action.RETRY, "transport"),
    # submit: a JSON 5xx is an answer, not a refusal: not retried blindly
    ("submit", http(500, detail="boom"), Action.FINAL, "http_500"),
    ("submit", http(503, detail="busy"), Action.FINAL, "http_503"),
    ("submit", http(422, detail=BAD), Action.FINAL, "validation"),
    ("submit", http(404, detail="Path /x not found"), Action.FINAL, "http_404"),
    # submit: connection lost after sending -> UNKNOWN
    ("submit", UnknownOutcome("dropped"), Action.UNKNOWN, "submit_dropped"),
    ("submit", QueueTransportError("read", sent=True), Action.UNKNOWN, "submit_dropped"),
    ("submit", httpx.ReadTimeout("slow", request=REQ), Action.UNKNOWN, "submit_dropped"),
    ("submit", httpx.RemoteProtocolError("eof", request=REQ), Action.UNKNOWN, "submit_dropped"),
    ("submit", ProtocolError("no request_id"), Action.UNKNOWN, "protocol"),
    # status / result / cancel / media GET: transport error, 5xx, 429 -> retry the GET
    *[
        (op, exc, Action.RETRY, reason)
        for op in ("status", "result", "cancel", "media")
        for exc, reason in [
            (QueueTransportError("read", sent=True), "transport"),
            (httpx.ReadError("reset", request=REQ), "transport"),
            (http(429), "http_429"),
            (http(503, **NGINX), "http_503"),
        ]
    ],
    *[(op, http(500, detail="oops"), Action.RETRY, "http_500") for op in ("status", "cancel")],
    ("media", http(500), Action.RETRY, "http_500"),
    ("result", http(500, detail="gateway hiccup"), Action.RETRY, "http_500"),
    # result: 422 (validation, content_policy_violation) -> FAILED, never retried
    ("result", http(422, detail=BAD), Action.FINAL, "validation"),
    ("result", http(422, detail=CPV), Action.FINAL, "content_policy_violation"),
    (
        "result",
        http(422, detail="refused", error_type="content_policy_violation"),
        Action.FINAL,
        "content_policy_violation",
    ),
    ("result", http(400, error_type="bad_request"), Action.FINAL, "bad_request"),
    # result: 5xx with a runner error_type, 504 timeout -> resubmit
    (
        "result",
        http(503, error_type="runner_disconnected"),
        Action.RESUBMIT,
        "runner_disconnected",
    ),
    ("result", http(500, error_type="runner_server_error"), Action.RESUBMIT, "runner_server_error"),
    ("result", http(504, error_type="request_timeout"), Action.RESUBMIT, "request_timeout"),
    # ...but fal's 504 for the request's own start timeout (it never ran, not billed) says so
    (
        "result",
        http(504, error_type="request_timeout", timeout_type="user"),
        Action.RESUBMIT,
        "start_timeout",
    ),
    ("result", http(504, detail="timed out"), Action.RESUBMIT, "http_504"),
    ("result", http(499, error_type="client_cancelled"), Action.RESUBMIT, "client_cancelled"),
    # result: 404 after expiry -> resubmit, counted as lost
    ("result", http(404, detail="not found"), Action.RESUBMIT, "expired"),
    ("status", http(404), Action.RESUBMIT, "expired"),
    ("result", ProtocolError("not JSON"), Action.RESUBMIT, "protocol"),
    # the stream breaking means "poll instead", never a failed job
    ("status", StatusStreamError("quiet for 30 s"), Action.RETRY, "stream_broken"),
    # download: retry, then FAILED
    (
        "media",
        DownloadError("cut", retryable=True, reason="truncated"),
        Action.RETRY,
        "download_truncated",
    ),
    (
        "media",
        DownloadError("not an image", reason="wrong_type"),
        Action.FINAL,
        "download_wrong_type",
    ),
    ("media", DownloadError("gone", reason="http_404"), Action.RESUBMIT, "expired"),
    ("media", DownloadError("gone", reason="http_410"), Action.RESUBMIT, "expired"),
    ("media", http(404), Action.FINAL, "http_404"),
    ("upload", http(413), Action.FINAL, "http_413"),
    ("cancel", http(400), Action.FINAL, "http_400"),
    # anything else is a bug or unexpected: final, with its type in the message
    ("result", ValueError("weird"), Action.FINAL, "error"),
]


@pytest.mark.parametrize(("op", "exc", "action", "reason"), TABLE)
def test_classify_table(op: str, exc: BaseException, action: Action, reason: str) -> None:
    outcome = classify(exc, op=op)
    assert (outcome.action, outcome.reason) == (action, reason)
    assert "\n" not in outcome.message
    # The message is what failures.jsonl and the gallery show: our own errors read as they
    # are written ("HTTP 422: ..."); a foreign one (an httpx error, a bug) keeps its type name.
    if isinstance(exc, BatchgenError):
        assert outcome.message == str(exc).replace("\n", " ").strip()[:300]
    else:
        assert outcome.message.startswith(type(exc).__name__)


def test_retry_after_travels_with_the_outcome() -> None:
    assert classify(http(429, retry_after=7.0), op="submit").retry_after == 7.0
    assert classify(http(503, ingress=True), op="status").retry_after is None


@pytest.mark.parametrize(
    ("op", "exc", "action"),
    [
        # X-Fal-Retryable is the server's word and overrides the table either way.
        ("submit", http(429, retryable=False), Action.FINAL),
        ("status", http(500, retryable=False), Action.FINAL),
        ("submit", http(500, retryable=True), Action.RETRY),
        ("result", http(422, detail=BAD, retryable=True), Action.RESUBMIT),
    ],
)
def test_x_fal_retryable_is_honoured(op: str, exc: QueueHTTPError, action: Action) -> None:
    assert classify(exc, op=op).action is action


@pytest.mark.parametrize(
    ("op", "exc"),
    [
        ("result", http(422, detail=CPV, retryable=True)),
        (
            "result",
            http(422, detail="refused", error_type="content_policy_violation", retryable=True),
        ),
        ("status", http(422, detail=CPV, retryable=True)),
        ("submit", http(422, detail=CPV, retryable=True)),
        ("result", http(400, error_type="content_policy_violation", retryable=True)),
        ("result", http(422, detail=[*BAD, *CPV], retryable=True)),
    ],
)
def test_content_policy_is_final_whatever_the_headers_say(op: str, exc: QueueHTTPError) -> None:
    # The same input would be paid for again and refused again: no header may turn the
    # refusal into a resubmit (result) or a retry (submit).
    outcome = classify(exc, op=op)
    assert (outcome.action, outcome.reason) == (Action.FINAL, "content_policy_violation")


def test_a_refusal_that_created_nothing_is_still_retried_whatever_it_names() -> None:
    # A 429 made no job, so retrying it costs nothing, even if its body names the policy.
    exc = http(429, detail=CPV, retry_after=2.0)
    assert classify(exc, op="submit").action is Action.RETRY


def test_classify_rejects_an_unknown_op() -> None:
    with pytest.raises(ValueError, match="unknown op"):
        classify(http(500), op="download")


# ---------------------------------------------------------------------------- backoff


@given(attempt=st.integers(1, 200), r=st.floats(0.0, 1.0, exclude_max=True))
def test_backoff_is_full_jitter_under_the_cap(attempt: int, r: float) -> None:
    d = backoff(attempt, base=0.5, cap=30.0, rng=lambda: r)
    assert 0.0 <= d <= min(30.0, 0.5 * 2 ** (attempt - 1))


def test_backoff_ceiling_doubles_then_caps() -> None:
    top = [backoff(a, base=0.5, cap=30.0, rng=lambda: 1.0) for a in range(1, 9)]
    assert top == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_backoff_spreads_workers() -> None:
    rng = random.Random(1)
    delays = {backoff(3, rng=rng.random) for _ in range(50)}
    assert len(delays) == 50


@given(ra=st.floats(0.01, 1000.0), r=st.floats(0.0, 1.0))
def test_retry_after_is_a_floor_never_shortened(ra: float, r: float) -> None:
    d = backoff(1, retry_after=ra, rng=lambda: r)
    floor = min(ra, MAX_RETRY_AFTER)
    assert floor <= d <= floor * 1.25


def test_backoff_counts_from_one() -> None:
    with pytest.raises(ValueError):
        backoff(0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("-3", 0.0),
        ("Wed, 25 Nov 2026 18:00:10 GMT", 10.0),
        ("Wed, 25 Nov 2026 17:59:00 GMT", 0.0),
        ("soon", None),
        ("nan", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    now = 1795629600.0  # 2026-11-25 18:00:00 UTC
    assert parse_retry_after(value, now=lambda: now) == expected


# ---------------------------------------------------------------------------- the loop


async def test_loop_retries_until_success_and_reports_each_wait() -> None:
    calls: list[int] = []
    events: list[RetryEvent] = []
    sleep = ZeroWait()

    async def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise http(429, retry_after=3.0)
        if len(calls) == 2:
            raise QueueTransportError("reset", sent=True)
        return "ok"

    policy = RetryPolicy(attempts=5, rng=lambda: 0.0)
    got = await call_with_retries(
        flaky, op="status", policy=policy, sleep=sleep, on_retry=events.append
    )
    assert got == "ok"
    assert len(calls) == 3
    assert sleep.delays == [3.0, 0.0]  # Retry-After honoured, then jittered backoff
    assert [(e.attempt, e.outcome.reason) for e in events] == [(1, "http_429"), (2, "transport")]


async def test_loop_gives_up_after_the_attempts_with_the_last_error() -> None:
    sleep = ZeroWait()
    n = 0

    async def always_503() -> None:
        nonlocal n
        n += 1
        raise http(503, ingress=True, detail=f"try {n}")

    with pytest.raises(QueueHTTPError, match="try 4"):
        await call_with_retries(always_503, op="result", policy=RetryPolicy(4), sleep=sleep)
    assert n == 4
    assert len(sleep.delays) == 3


async def test_loop_does_not_retry_what_is_not_retry() -> None:
    sleep = ZeroWait()
    n = 0

    async def content_policy() -> None:
        nonlocal n
        n += 1
        raise http(422, detail=CPV)

    with pytest.raises(QueueHTTPError):
        await call_with_retries(content_policy, op="result", policy=RetryPolicy(), sleep=sleep)
    assert n == 1
    assert sleep.delays == []


async def test_loop_refuses_the_submit() -> None:
    async def fn() -> None:
        return None

    with pytest.raises(ValueError, match="never retried"):
        await call_with_retries(fn, op="submit", policy=RetryPolicy(), sleep=ZeroWait())


@given(
    status=st.integers(300, 599),
    op=st.sampled_from(["submit", "status", "result", "cancel", "media", "upload"]),
    ingress=st.booleans(),
    error_type=st.none() | st.sampled_from(["runner_disconnected", "request_timeout"]),
    retryable=st.none() | st.booleans(),
    retry_after=st.none() | st.floats(0, 100),
)
def test_any_http_answer_classifies_without_ambiguity(
    status: int,
    op: str,
    ingress: bool,
    error_type: str | None,
    retryable: bool | None,
    retry_after: float | None,
) -> None:
    exc = http(
        status,
        ingress=ingress,
        error_type=error_type,
        retryable=retryable,
        retry_after=retry_after,
    )
    outcome = classify(exc, op=op)
    # An answer, even an error, proves the server saw the request: never "unknown".
    assert outcome.action is not Action.UNKNOWN
    # Only the queue-side request can be resubmitted; a submit answer never asks for it.
    if op in ("submit", "cancel", "media", "upload"):
        assert outcome.action is not Action.RESUBMIT
    # The server's "do not retry" always wins over our guess.
    if retryable is False:
        assert outcome.action is not Action.RETRY
    if outcome.action is Action.RETRY:
        assert outcome.retry_after == retry_after
