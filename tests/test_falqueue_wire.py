"""Wire-level cases the emulator does not produce (Retry-After, JSON 5xx on submit, malformed
bodies, timeouts mid-request): an ``httpx.MockTransport`` plays the server, scripted per test."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchgen.errors import (
    AuthError,
    ProtocolError,
    QueueHTTPError,
    QueueTransportError,
    StatusStreamError,
    UnknownOutcome,
)
from batchgen.fal import (
    Completed,
    Endpoints,
    Handle,
    InProgress,
    QueueClient,
    Queued,
)
from batchgen.fal.statuses import parse_status
from batchgen.fal.stream import END_WAIT_S
from batchgen.fal.transport import http_error
from batchgen.retry import Action, RetryPolicy, ZeroWait, classify

BASE = "http://fal.test"
H = Handle(
    request_id="r1",
    status_url=f"{BASE}/o/a/requests/r1/status",
    response_url=f"{BASE}/o/a/requests/r1",
    cancel_url=f"{BASE}/o/a/requests/r1/cancel",
)
SUBMITTED = {**H.to_json(), "status": "IN_QUEUE", "queue_position": 0}
NGINX = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"

Reply = httpx.Response | Exception


class Script:
    """Answers requests in order from a list; records what it was sent."""

    def __init__(self, *replies: Reply) -> None:
        self.replies: Iterator[Reply] = iter(replies)
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        reply = next(self.replies)
        if isinstance(reply, Exception):
            raise reply
        return reply


def client(
    script: Callable[[httpx.Request], httpx.Response],
    sleep: ZeroWait | None = None,
    attempts: int = 4,
) -> QueueClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(script))
    return QueueClient(
        http,
        endpoints=Endpoints.single(BASE),
        key="k-secret",
        sleep=sleep or ZeroWait(),
        retry=RetryPolicy(attempts=attempts, rng=lambda: 0.5),
    )


def ok(body: Any, status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def req() -> httpx.Request:
    return httpx.Request("POST", f"{BASE}/o/a")


# ---------------------------------------------------------------------------- submit


async def test_submit_429_carries_retry_after_and_is_sent_once() -> None:
    s = Script(ok({"detail": "slow down"}, 429, **{"Retry-After": "2"}))
    with pytest.raises(QueueHTTPError) as err:
        await client(s).submit("o/a", {"prompt": "x"})
    assert len(s.seen) == 1
    outcome = classify(err.value, op="submit")
    assert (outcome.action, outcome.retry_after) == (Action.RETRY, 2.0)


@pytest.mark.parametrize(
    ("reply", "action", "ingress"),
    [
        (httpx.Response(502, text=NGINX), Action.RETRY, True),
        (ok({"detail": "Internal error"}, 500), Action.FINAL, False),
        (ok({"detail": "busy"}, 503), Action.FINAL, False),
        # A 504 carrying fal's timeout header is the request's own timeout, not ingress.
        (
            httpx.Response(504, text=NGINX, headers={"X-Fal-Request-Timeout-Type": "user"}),
            Action.FINAL,
            False,
        ),
        (ok({"detail": "nope"}, 500, **{"X-Fal-Retryable": "true"}), Action.RETRY, False),
    ],
)
async def test_submit_5xx_only_ingress_is_a_refusal(
    reply: httpx.Response, action: Action, ingress: bool
) -> None:
    s = Script(reply)
    with pytest.raises(QueueHTTPError) as err:
        await client(s).submit("o/a", {})
    assert len(s.seen) == 1  # never retried inside, whatever the answer
    assert err.value.ingress is ingress
    assert classify(err.value, op="submit").action is action


@pytest.mark.parametrize(
    ("exc", "raised"),
    [
        (httpx.ConnectError("refused"), QueueTransportError),
        (httpx.ConnectTimeout("slow connect"), QueueTransportError),
        (httpx.PoolTimeout("pool full"), QueueTransportError),
        (httpx.ReadTimeout("no answer"), UnknownOutcome),
        (httpx.ReadError("reset"), UnknownOutcome),
        (httpx.WriteError("broken pipe"), UnknownOutcome),
        (httpx.RemoteProtocolError("Server disconnected"), UnknownOutcome),
    ],
)
async def test_submit_tells_nothing_sent_from_no_answer(
    exc: Exception, raised: type[Exception]
) -> None:
    s = Script(exc)
    with pytest.raises(raised) as err:
        await client(s).submit("o/a", {})
    assert len(s.seen) == 1
    expected = Action.RETRY if raised is QueueTransportError else Action.UNKNOWN
    assert classify(err.value, op="submit").action is expected
    if isinstance(err.value, QueueTransportError):
        assert err.value.sent is False


@pytest.mark.parametrize(
    "body", [{"request_id": "r1"}, {**SUBMITTED, "status_url": None}, ["not", "an", "object"]]
)
async def test_a_submit_answer_without_the_handle_is_unknown(body: Any) -> None:
    with pytest.raises(ProtocolError) as err:
        await client(Script(ok(body))).submit("o/a", {})
    assert classify(err.value, op="submit").action is Action.UNKNOWN


@pytest.mark.parametrize("endpoint", ["", "/", "o/a?x=1", "o/../a"])
async def test_submit_refuses_a_malformed_endpoint(endpoint: str) -> None:
    s = Script()
    with pytest.raises(ValueError):
        await client(s).submit(endpoint, {})
    assert s.seen == []


# ---------------------------------------------------------------------------- idempotent GETs


async def test_status_honours_retry_after_then_succeeds() -> None:
    sleep = ZeroWait()
    s = Script(
        ok({"detail": "slow"}, 429, **{"Retry-After": "3"}),
        httpx.ReadError("reset"),
        ok({"status": "IN_QUEUE", "queue_position": 4}, 202),
    )
    assert await client(s, sleep).status(H) == Queued(4)
    assert len(s.seen) == 3
    assert 3.0 <= sleep.delays[0] <= 3.75  # never shorter than asked
    assert sleep.delays[1] == 0.5  # second retry, full jitter: (0.5·2) × U(=0.5)


async def test_x_fal_retryable_false_stops_the_retries() -> None:
    s = Script(ok({"detail": "no"}, 503, **{"X-Fal-Retryable": "false"}))
    with pytest.raises(QueueHTTPError):
        await client(s).status(H)
    assert len(s.seen) == 1


async def test_result_retries_a_gateway_5xx_but_not_the_models_error() -> None:
    s = Script(ok({"detail": "oops"}, 500), ok({"images": []}))
    assert await client(s).result(H) == {"images": []}
    assert len(s.seen) == 2

    s = Script(ok({"detail": "Runner disconnected", "error_type": "runner_disconnected"}, 503))
    with pytest.raises(QueueHTTPError) as err:
        await client(s).result(H)
    assert len(s.seen) == 1
    assert classify(err.value, op="result").action is Action.RESUBMIT


async def test_error_type_may_come_from_the_header_only() -> None:
    s = Script(
        httpx.Response(
            504,
            text="timed out",
            headers={"X-Fal-Error-Type": "request_timeout", "x-fal-request-id": "r1"},
        )
    )
    with pytest.raises(QueueHTTPError) as err:
        await client(s).result(H)
    assert (err.value.error_type, err.value.request_id) == ("request_timeout", "r1")
    assert classify(err.value, op="result").reason == "request_timeout"


async def test_result_that_is_not_json_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        await client(Script(httpx.Response(200, text="<html>"))).result(H)


async def test_cancel_retries_a_dropped_connection() -> None:
    s = Script(httpx.RemoteProtocolError("eof"), ok({"status": "CANCELLATION_REQUESTED"}, 202))
    assert await client(s).cancel(H) == "CANCELLATION_REQUESTED"
    assert [r.method for r in s.seen] == ["PUT", "PUT"]
    assert s.seen[0].content == b""


async def test_auth_errors_are_raised_at_once() -> None:
    s = Script(ok({"detail": "locked"}, 403))
    with pytest.raises(AuthError, match="HTTP 403"):
        await client(s).status(H)
    assert len(s.seen) == 1


# ---------------------------------------------------------------------------- status parsing


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"status": "IN_QUEUE", "queue_position": 0}, Queued(0)),
        ({"status": "IN_PROGRESS", "logs": None}, InProgress(None)),
        ({"status": "IN_PROGRESS", "logs": [{"message": "hi"}]}, InProgress([{"message": "hi"}])),
        ({"status": "COMPLETED", "logs": None, "response_url": "x"}, Completed()),
        (
            {
                "status": "COMPLETED",
                "logs": None,
                "metrics": {"inference_time": 1.5},
                "error": "Runner disconnected",
                "error_type": "runner_disconnected",
            },
            Completed("Runner disconnected", "runner_disconnected", {"inference_time": 1.5}),
        ),
    ],
)
def test_parse_status(body: dict[str, Any], status: object) -> None:
    assert parse_status(body) == status


@pytest.mark.parametrize(
    "body",
    [
        {"status": "IN_QUEUE"},  # fal-client raises KeyError here
        {"status": "IN_QUEUE", "queue_position": "3"},
        {"status": "IN_QUEUE", "queue_position": True},
        {"status": "IN_QUEUE", "queue_position": -1},
        {"status": "IN_PROGRESS"},
        {"status": "COMPLETED"},
        {"status": "COMPLETED", "logs": None, "metrics": [1]},
        {"status": "COMPLETED", "logs": None, "metrics": []},
        {"status": "COMPLETED", "logs": "text"},
        {"status": "COMPLETED", "logs": None, "error": 5},
        {"status": "FAILED", "logs": None},  # fal has no FAILED status
        {"status": None},
        ["IN_QUEUE"],
        None,
    ],
)
def test_parse_status_is_strict(body: Any) -> None:
    with pytest.raises(ProtocolError):
        parse_status(body)


async def test_a_malformed_status_is_not_retried() -> None:
    s = Script(ok({"status": "FAILED", "logs": None}))
    with pytest.raises(ProtocolError, match="unknown queue status"):
        await client(s).status(H)
    assert len(s.seen) == 1


# ---------------------------------------------------------------------------- the stream


def sse(*events: str, status: int = 200, ctype: str = "text/event-stream") -> httpx.Response:
    return httpx.Response(status, content="".join(events).encode(), headers={"content-type": ctype})


QUEUED = 'data: {"status":"IN_QUEUE","queue_position":1}\n\n'
RUNNING = 'data: {"status":"IN_PROGRESS","logs":null}\n\n'
DONE = 'data: {"status":"COMPLETED","logs":null,"metrics":{}}\n\n'


async def collect(s: Script, **kw: Any) -> list[object]:
    return [st async for st in client(s).stream_status(H, **kw)]


async def test_stream_yields_until_completed_and_skips_comments() -> None:
    s = Script(sse(QUEUED, ": keepalive\n\n", RUNNING, DONE, RUNNING))
    assert await collect(s, logs=True) == [Queued(1), InProgress(None), Completed()]
    (r,) = s.seen
    assert r.url.path == "/o/a/requests/r1/status/stream"
    assert r.url.params["logs"] == "1"
    assert r.headers["accept"] == "text/event-stream"
    assert r.headers["authorization"] == "Key k-secret"


class AfterDone(httpx.AsyncByteStream):
    """A stream that sends COMPLETED, then hangs (``hang``) or breaks instead of ending."""

    def __init__(self, *, hang: bool) -> None:
        self.hang = hang
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield (RUNNING + DONE).encode()
        if self.hang:
            await asyncio.sleep(60)
        raise httpx.ReadError("reset after the last event")

    async def aclose(self) -> None:
        self.closed = True


@pytest.mark.parametrize("hang", [True, False])
async def test_a_stream_that_does_not_end_after_completed_still_completes(hang: bool) -> None:
    # Read to its end after COMPLETED (so its connection can be reused), but never wait on a
    # server that holds it open, nor fail the status on an error past it.
    body = AfterDone(hang=hang)
    s = Script(httpx.Response(200, stream=body, headers={"content-type": "text/event-stream"}))
    start = time.monotonic()
    assert await collect(s) == [InProgress(None), Completed()]
    assert time.monotonic() - start < END_WAIT_S + 1.0
    assert body.closed


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (sse(QUEUED, RUNNING), "closed before COMPLETED"),
        (sse(QUEUED, "data: {not json}\n\n"), "broke"),
        (sse(DONE, ctype="application/json"), "broke"),
        (ok({"detail": "not found"}, 404), "refused: HTTP 404"),
        (httpx.ReadError("reset"), "broke: ReadError"),
    ],
)
async def test_a_broken_stream_says_poll_instead(reply: Reply, match: str) -> None:
    with pytest.raises(StatusStreamError, match=match) as err:
        await collect(Script(reply))
    assert classify(err.value, op="status").action is Action.RETRY


async def test_a_refused_key_on_the_stream_is_fatal() -> None:
    with pytest.raises(AuthError):
        await collect(Script(ok({"detail": "no key"}, 401)))


# ---------------------------------------------------------------------------- storage


async def test_upload_falls_back_when_the_token_is_unreadable() -> None:
    s = Script(
        ok({"token": "t", "token_type": "Bearer", "expires_at": "2030-01-01T00:00:00"}),  # naive
        ok({"upload_url": f"{BASE}/put/1?sig=abc", "file_url": f"{BASE}/files/1"}),
        httpx.Response(200),
    )
    assert await client(s).upload(b"data", "image/png") == f"{BASE}/files/1"
    init = s.seen[1]
    assert init.url.path == "/storage/upload/initiate"
    assert init.url.params["storage_type"] == "gcs"
    assert s.seen[2].method == "PUT" and s.seen[2].content == b"data"
    assert "authorization" not in s.seen[2].headers


async def test_upload_does_not_fall_back_on_a_refused_key() -> None:
    s = Script(ok({"detail": "bad key"}, 401))
    with pytest.raises(AuthError):
        await client(s).upload(b"data", "image/png")
    assert len(s.seen) == 1


async def test_a_failed_upload_names_no_signature() -> None:
    s = Script(
        ok({"detail": "CDN down"}, 400),  # token fetch refused: fall back
        ok({"upload_url": f"{BASE}/put/1?X-Goog-Signature=s3cr3t", "file_url": f"{BASE}/f/1"}),
        ok({"detail": "expired"}, 400),
    )
    with pytest.raises(QueueHTTPError) as err:
        await client(s).upload(b"data", "image/png")
    assert "s3cr3t" not in str(err.value) and "s3cr3t" not in repr(err.value.url)


async def test_a_403_from_the_signed_url_is_not_an_account_problem() -> None:
    s = Script(
        ok({"detail": "no CDN"}, 400),
        ok({"upload_url": f"{BASE}/put/1?sig=x", "file_url": f"{BASE}/f/1"}),
        httpx.Response(403, text="<Error>SignatureDoesNotMatch</Error>"),
    )
    with pytest.raises(QueueHTTPError) as err:
        await client(s).upload(b"data", "image/png")
    assert err.value.status == 403
    assert classify(err.value, op="upload").action is Action.FINAL  # this upload, not the run


async def test_a_refused_cdn_token_is_dropped_and_the_upload_falls_back() -> None:
    token = {"token": "t1", "token_type": "Bearer", "expires_at": "2099-01-01T00:00:00+00:00"}
    s = Script(
        ok(token),
        ok({"detail": "token revoked"}, 401),  # the CDN refuses the token, not our key
        ok({"upload_url": f"{BASE}/put/1", "file_url": f"{BASE}/f/1"}),
        httpx.Response(200),
        ok({**token, "token": "t2"}),  # the next upload asks for a fresh token
        ok({"access_url": f"{BASE}/files/2"}),
    )
    q = client(s)
    assert await q.upload(b"one", "image/png") == f"{BASE}/f/1"
    assert await q.upload(b"two", "image/png") == f"{BASE}/files/2"
    assert s.seen[1].headers["authorization"] == "Bearer t1"
    assert s.seen[5].headers["authorization"] == "Bearer t2"


# ---------------------------------------------------------------------------- fuzzing the edges

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
STATUS_LIKE = st.fixed_dictionaries(
    {"status": st.sampled_from(["IN_QUEUE", "IN_PROGRESS", "COMPLETED", "FAILED"])},
    optional={"queue_position": JSON, "logs": JSON, "metrics": JSON, "error": JSON},
)


@given(body=JSON | STATUS_LIKE)
def test_parse_status_fails_only_with_protocol_error(body: Any) -> None:
    try:
        parse_status(body)
    except ProtocolError as exc:
        assert "\n" not in str(exc)


@given(
    status=st.integers(400, 599),
    body=st.binary(max_size=300) | JSON.map(lambda v: json.dumps(v).encode()),
    headers=st.dictionaries(
        st.sampled_from(
            [
                "retry-after",
                "x-fal-retryable",
                "x-fal-error-type",
                "x-fal-request-id",
                "x-ratelimit-reset",
                "x-fal-request-timeout-type",
            ]
        ),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
    ),
)
def test_any_error_answer_becomes_one_readable_line(
    status: int, body: bytes, headers: dict[str, str]
) -> None:
    resp = httpx.Response(status, content=body, headers=headers, request=req())
    err = http_error(resp)
    assert err.status == status
    assert "\n" not in str(err)
    assert err.retry_after is None or err.retry_after >= 0
    for op in ("submit", "status", "result", "cancel"):
        classify(err, op=op)
