"""Webhooks: fal's payload, delivered when the request completes, retried on failure."""

from __future__ import annotations

from typing import Any

import httpx
from conftest import MakeClient
from emu_helpers import T2I, FakeClock, stats
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

LOW = {"prompt": "a kite", "quality": "low", "image_size": "square_hd"}


def receiver(fail_first: int = 0) -> tuple[Starlette, list[tuple[dict[str, str], Any]]]:
    """A tiny webhook endpoint that records what it receives (and can refuse at first)."""
    got: list[tuple[dict[str, str], Any]] = []
    refusals = [fail_first]

    async def hook(request: Request) -> Response:
        if refusals[0] > 0:
            refusals[0] -= 1
            return Response(status_code=500)
        got.append((dict(request.headers), await request.json()))
        return Response(status_code=200)

    return Starlette(routes=[Route("/hook", hook, methods=["POST"])]), got


async def test_webhook_delivers_fal_payload_on_completion(
    make_client: MakeClient, clock: FakeClock
) -> None:
    hook_app, got = receiver()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=hook_app)) as hooks:
        client, app = await make_client(webhook_client=hooks)
        start = clock()
        r = await client.post(T2I, json=LOW, params={"fal_webhook": "http://hooks/hook?x=1"})
        rid = r.json()["request_id"]
        assert got == []  # nothing before completion
        await app.state.webhooks.idle()
        ((headers, body),) = got
        assert clock() - start >= 3.0  # it waited (in model time) for the run to finish
        assert headers["x-fal-webhook-request-id"] == rid
        assert body["request_id"] == rid and body["gateway_request_id"] == rid
        assert body["status"] == "OK" and body["error"] is None
        (image,) = body["payload"]["images"]
        assert (await client.get(image["url"])).status_code == 200
        assert (await stats(client))["webhooks_delivered"] == 1


async def test_webhook_error_payload_and_retry(make_client: MakeClient) -> None:
    hook_app, got = receiver(fail_first=1)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=hook_app)) as hooks:
        client, app = await make_client(time_scale=0, webhook_client=hooks)
        bad = {"prompt": "x", "quality": "ultra"}
        await client.post(T2I, json=bad, params={"fal_webhook": "http://hooks/hook"})
        await app.state.webhooks.idle()
        ((_, body),) = got  # the first delivery was refused, the retry landed
        assert body["status"] == "ERROR"
        assert body["error"] == "Invalid status code: 422"
        assert body["payload"]["detail"][0]["loc"] == ["body", "quality"]


async def test_webhook_gives_up_after_its_attempts(make_client: MakeClient) -> None:
    hook_app, got = receiver(fail_first=99)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=hook_app)) as hooks:
        client, app = await make_client(time_scale=0, webhook_client=hooks, webhook_attempts=2)
        await client.post(T2I, json=LOW, params={"fal_webhook": "http://hooks/hook"})
        await app.state.webhooks.idle()
        assert got == []
        s = await stats(client)
        assert (s["webhooks_delivered"], s["webhooks_failed"]) == (0, 1)


async def test_many_webhooks_with_a_queue(make_client: MakeClient) -> None:
    hook_app, got = receiver()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=hook_app)) as hooks:
        client, app = await make_client(concurrency_limit=2, webhook_client=hooks)
        ids = []
        for i in range(5):
            r = await client.post(
                T2I, json={**LOW, "prompt": f"p{i}"}, params={"fal_webhook": "http://hooks/hook"}
            )
            ids.append(r.json()["request_id"])
        await app.state.webhooks.idle()
        assert sorted(b["request_id"] for _, b in got) == sorted(ids)
