"""The run's HTTP clients: several small connection pools behind one transport (issue 12).

Over a real loopback socket, because what matters is what a server sees: every request
answered (streams included), connections reused rather than opened per request, no more
connections than requests in flight.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from batchgen.config import Settings, build_settings
from batchgen.emulator.server import serve_asgi
from batchgen.manifest import load_manifest
from batchgen.running.pools import CONNECTIONS_PER_SHARD, ShardedTransport, shards_for
from batchgen.running.setup import clients


def recording_app(
    seen: Counter[tuple[str, int]], gate: asyncio.Event, held: asyncio.Event | None = None
) -> Starlette:
    """Counts requests by the client's (host, port), that is by connection. Requests with
    ``wait`` wait for ``gate``; ``held`` is set once 32 of them are waiting."""

    async def hello(request: Request) -> Response:
        assert request.client is not None
        seen[(request.client.host, request.client.port)] += 1
        if request.query_params.get("wait"):
            if held is not None and sum(seen.values()) >= 32:
                held.set()
            await gate.wait()
        return JSONResponse({"n": int(request.query_params.get("n", 0))})

    async def events(request: Request) -> Response:
        assert request.client is not None
        seen[(request.client.host, request.client.port)] += 1

        async def body():  # type: ignore[no-untyped-def]
            for i in range(3):
                yield f"data: {i}\n\n".encode()

        return StreamingResponse(body(), media_type="text/event-stream")

    return Starlette(routes=[Route("/hello", hello), Route("/events", events)])


async def test_requests_spread_over_small_pools_and_reuse_their_connections() -> None:
    seen: Counter[tuple[str, int]] = Counter()
    gate, all_held = asyncio.Event(), asyncio.Event()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    transport = ShardedTransport(4, limits)
    async with (
        serve_asgi(recording_app(seen, gate, all_held)) as url,
        httpx.AsyncClient(transport=transport, base_url=url) as client,
    ):
        # 32 requests held open at once: each needs its own connection, all answered.
        held = [
            asyncio.create_task(client.get("/hello", params={"n": i, "wait": 1})) for i in range(32)
        ]
        await asyncio.wait_for(all_held.wait(), 10)
        gate.set()
        answers = await asyncio.gather(*held)
        assert [r.json()["n"] for r in answers] == list(range(32))
        assert len(seen) == 32
        # Then 200 more, 8 at a time, and streams read to the end: no new connection.
        for start in range(0, 200, 8):
            batch = [client.get("/hello", params={"n": n}) for n in range(start, start + 8)]
            assert all(r.status_code == 200 for r in await asyncio.gather(*batch))
        for _ in range(8):
            async with client.stream("GET", "/events") as r:
                lines = [line async for line in r.aiter_lines() if line]
                assert lines == ["data: 0", "data: 1", "data: 2"]
        assert len(seen) == 32 and sum(seen.values()) == 32 + 200 + 8
    # A socket left open by a shard would surface here as an unraisable ResourceWarning,
    # which this suite turns into an error.


async def test_one_shard_behaves_as_a_plain_client() -> None:
    seen: Counter[tuple[str, int]] = Counter()
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    async with (
        serve_asgi(recording_app(seen, asyncio.Event())) as url,
        httpx.AsyncClient(transport=ShardedTransport(1, limits), base_url=url) as c,
    ):
        for n in range(20):
            assert (await c.get("/hello", params={"n": n})).json() == {"n": n}
    assert len(seen) == 1  # one connection, kept alive


async def test_plain_http_never_loads_the_ca_bundle_and_https_verifies_with_it() -> None:
    """Loading certifi's CA bundle costs 30-50 ms of a short run's start-up: a run over plain
    HTTP (the emulator) must not pay it; the first https request makes the context, once."""
    made: list[ssl.SSLContext] = []

    def tls() -> ssl.SSLContext:
        made.append(ssl.create_default_context())  # verifies, as httpx's does
        return made[-1]

    seen: Counter[tuple[str, int]] = Counter()
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    async with (
        serve_asgi(recording_app(seen, asyncio.Event())) as url,
        httpx.AsyncClient(transport=ShardedTransport(2, limits, tls)) as client,
    ):
        for n in range(6):
            assert (await client.get(f"{url}/hello", params={"n": n})).json() == {"n": n}
        assert made == []
        # The same server spoken to over TLS: the handshake fails (it talks plain HTTP), after
        # the context was made once for both https requests.
        for _ in range(2):
            with pytest.raises(httpx.ConnectError):
                await client.get(url.replace("http://", "https://", 1) + "/hello")
        assert len(made) == 1
    assert sum(seen.values()) == 6


def test_shards_hold_a_few_connections_each() -> None:
    assert shards_for(1) == 1
    assert shards_for(CONNECTIONS_PER_SHARD) == 1
    assert shards_for(CONNECTIONS_PER_SHARD + 1) == 2
    assert shards_for(72) == -(-72 // CONNECTIONS_PER_SHARD)


def run_settings(**flags: object) -> Settings:
    demo = load_manifest(Path(__file__).resolve().parents[1] / "manifests" / "demo.yaml")
    return build_settings(flags, {}, demo)


async def test_the_run_clients_reuse_connections_over_the_shards() -> None:
    seen: Counter[tuple[str, int]] = Counter()
    async with (
        serve_asgi(recording_app(seen, asyncio.Event())) as url,
        clients(run_settings(emulate=True)) as (http, media),
    ):
        for client in (http, media):
            for n in range(30):
                assert (await client.get(f"{url}/hello", params={"n": n})).json() == {"n": n}
    assert sum(seen.values()) == 60 and len(seen) <= 2 * 8  # at most one per shard, kept


def no_proxy_but(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    for name in ("NO_PROXY", "ALL_PROXY", "HTTPS_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv(var, value)


async def test_the_run_clients_go_through_a_proxy_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sharded pools are a transport of our own, for which httpx ignores HTTP(S)_PROXY: behind
    a proxy a run against a server must still use it. A proxy that is not there proves the
    request went to it (loopback included: NO_PROXY is unset)."""
    seen: Counter[tuple[str, int]] = Counter()
    no_proxy_but(monkeypatch, "HTTP_PROXY", "http://127.0.0.1:9")
    async with serve_asgi(recording_app(seen, asyncio.Event())) as url:
        async with clients(run_settings(endpoint=url)) as (http, media):
            for client in (http, media):
                with pytest.raises(httpx.ConnectError):
                    await client.get(f"{url}/hello")
        # The in-process emulator is on loopback: --emulate never sends its requests to a
        # proxy, which could only fail to reach it.
        async with clients(run_settings(emulate=True)) as (http, media):
            for client in (http, media):
                assert (await client.get(f"{url}/hello")).status_code == 200
    assert sum(seen.values()) == 2
