"""What batchgen sends with each submit (fal/headers.py) and what it reads back from a result:
the start timeout's 504 (from the wire to classify) and the endpoint that answered."""

from __future__ import annotations

import json

import httpx

from batchgen.fal import Handle, QueueClient
from batchgen.fal.headers import ANSWERED_BY_KEY, RequestControls
from batchgen.retry import Action, RetryPolicy, ZeroWait, classify

H = Handle("r1", "http://fal/o/a/requests/r1/status", "http://fal/o/a/requests/r1", "http://x")


def test_defaults_send_only_disable_fallbacks() -> None:
    # fal's defaults otherwise: normal priority, no start timeout, media kept, payloads stored
    assert RequestControls().headers() == {"x-fal-disable-fallbacks": "true"}


def test_every_control_on_the_wire() -> None:
    c = RequestControls(
        priority="low", start_timeout=30, media_expiry=900, allow_fallbacks=True, store_io=False
    )
    assert c.headers() == {
        "X-Fal-Queue-Priority": "low",
        # the current name and the deprecated one fal-client still sends: the new one wins
        "X-Fal-Request-Start-Timeout": "30.0",
        "X-Fal-Request-Timeout": "30.0",
        "X-Fal-Object-Lifecycle-Preference": json.dumps({"expiration_duration_seconds": 900}),
        "X-Fal-Store-IO": "0",
    }


async def _result_with(status: int, headers: dict[str, str], body: object) -> object:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers=headers)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        client = QueueClient(http, key="k", sleep=ZeroWait(), retry=RetryPolicy(attempts=1))
        try:
            return await client.result(H)
        except Exception as exc:
            return exc


async def test_a_start_timeout_504_is_resubmitted_as_start_timeout() -> None:
    exc = await _result_with(
        504,
        {"x-fal-request-timeout-type": "user", "x-fal-error-type": "request_timeout"},
        {"detail": "Request timed out", "error_type": "request_timeout"},
    )
    assert isinstance(exc, Exception)
    o = classify(exc, op="result")
    assert (o.action, o.reason) == (Action.RESUBMIT, "start_timeout")


async def test_the_endpoint_that_answered_is_kept_with_the_result() -> None:
    body = {"images": []}
    got = await _result_with(200, {"x-fal-fallback-endpoint": "fal-ai/other"}, body)
    assert got == {"images": [], ANSWERED_BY_KEY: "fal-ai/other"}
    assert await _result_with(200, {}, body) == {"images": []}
    # a value that is no endpoint id is not believed
    assert await _result_with(200, {"x-fal-fallback-endpoint": "a b"}, body) == {"images": []}
