"""The client over a real loopback socket (uvicorn serving the emulator): a full cycle, the SSE
stream as it really arrives (incrementally, with keep-alives), and a real dropped submit."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from batchgen.emulator import EmulatorConfig, create_app, serve
from batchgen.emulator.server import serve_asgi
from batchgen.errors import StatusStreamError, UnknownOutcome
from batchgen.fal import Completed, Endpoints, InProgress, QueueClient, Queued
from batchgen.retry import Action, ZeroWait, classify

T2I = "openai/gpt-image-2"
LOW = {"prompt": "a lighthouse", "quality": "low", "image_size": "square_hd"}

pytestmark = pytest.mark.timeout(30)


def client(http: httpx.AsyncClient, url: str) -> QueueClient:
    return QueueClient(http, endpoints=Endpoints.single(url), key="k", sleep=ZeroWait())


async def test_full_cycle_over_a_socket() -> None:
    async with serve(EmulatorConfig(time_scale=0.0)) as url, httpx.AsyncClient() as http:
        q = client(http, url)
        h = await q.submit(T2I, LOW)
        assert h.status_url.startswith(url)
        assert isinstance(await q.status(h, logs=True), Completed)
        image = (await q.result(h))["images"][0]
        assert (await http.get(image["url"])).headers["content-type"] == "image/png"
        uploaded = await q.upload(b"bytes on the wire", "text/plain", "w.txt")
        assert (await http.get(uploaded)).content == b"bytes on the wire"


async def test_stream_follows_a_request_from_queue_to_completion() -> None:
    # One slot: the second request waits in the queue while the first runs (~0.2 s each).
    config = EmulatorConfig(concurrency_limit=1, time_scale=0.05, keepalive_s=0.05)
    async with serve(config) as url, httpx.AsyncClient() as http:
        q = client(http, url)
        await q.submit(T2I, LOW)
        second = await q.submit(T2I, {**LOW, "prompt": "a harbour"})
        seen = [s async for s in q.stream_status(second, inactivity_timeout=2.0)]
        stats = (await http.get(f"{url}/_emulator/stats")).json()
    assert seen[0] == Queued(0)
    assert any(isinstance(s, InProgress) for s in seen)
    assert isinstance(seen[-1], Completed) and seen[-1].ok
    assert stats["stream_connections"] == 1
    assert stats["status_polls"] == 0  # the stream replaced polling entirely


async def test_the_stream_connection_carries_the_next_request() -> None:
    # fal ends the stream after COMPLETED: read to that end, its connection is reused for the
    # result fetch instead of a new TCP connection per job. The server sees the client port.
    ports: list[int] = []
    app = create_app(EmulatorConfig(time_scale=0.05, keepalive_s=0.05))

    async def seen(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            ports.append(scope["client"][1])
        await app(scope, receive, send)

    limits = httpx.Limits(max_connections=1)
    async with serve_asgi(seen) as url, httpx.AsyncClient(limits=limits) as http:
        q = client(http, url)
        h = await q.submit(T2I, LOW)
        async for st in q.stream_status(h, inactivity_timeout=2.0):
            if isinstance(st, Completed):
                break  # as the watcher does: no read after COMPLETED
        assert (await q.result(h))["images"]
    assert len(ports) == 3 and len(set(ports)) == 1  # submit, stream, result: one connection


async def test_keepalives_hold_the_stream_open_past_the_inactivity_timeout() -> None:
    # The request runs 0.6-1 s with no status change, and the inactivity timeout is 0.3 s:
    # only the keep-alive comments (every 0.05 s) keep the stream alive.
    config = EmulatorConfig(time_scale=0.2, keepalive_s=0.05)
    async with serve(config) as url, httpx.AsyncClient() as http:
        q = client(http, url)
        h = await q.submit(T2I, LOW)
        start = time.monotonic()
        seen = [s async for s in q.stream_status(h, inactivity_timeout=0.3)]
        took = time.monotonic() - start
    assert isinstance(seen[-1], Completed)
    assert took > 0.3


async def test_a_silent_stream_is_abandoned_after_the_inactivity_timeout() -> None:
    config = EmulatorConfig(time_scale=1.0, keepalive_s=60.0)  # runs seconds, no keep-alive
    async with serve(config) as url, httpx.AsyncClient() as http:
        q = client(http, url)
        h = await q.submit(T2I, LOW)
        start = time.monotonic()
        seen = []
        with pytest.raises(StatusStreamError, match=r"stream silent for 0\.3 s") as err:
            async for s in q.stream_status(h, inactivity_timeout=0.3):
                seen.append(s)
        took = time.monotonic() - start
        # The caller falls back to polling, which still works.
        assert isinstance(await q.status(h), InProgress)
    assert seen == [InProgress(None)]
    assert 0.3 <= took < 2.0
    assert classify(err.value, op="status").action is Action.RETRY


async def test_a_dropped_submit_over_a_real_socket_is_unknown() -> None:
    async with serve(EmulatorConfig(faults="submitdrop=1")) as url, httpx.AsyncClient() as http:
        with pytest.raises(UnknownOutcome):
            await client(http, url).submit(T2I, LOW)
        stats = (await http.get(f"{url}/_emulator/stats")).json()
    assert stats["submits_accepted"] == 1


SUBMIT_ANSWER = (
    b'{"request_id":"r1","status_url":"http://x/r1/status","response_url":"http://x/r1",'
    b'"cancel_url":"http://x/r1/cancel"}'
)


async def slow_server(delay: float) -> asyncio.Server:
    """Reads a request, waits ``delay`` seconds, then answers a submit (a slow fal ingress)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            ),
            0,
        )
        await reader.readexactly(length)
        try:
            await asyncio.sleep(delay)
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + b"content-length: %d\r\n\r\n" % len(SUBMIT_ANSWER)
                + SUBMIT_ANSWER
            )
            await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_a_submit_answered_too_late_is_unknown() -> None:
    server = await slow_server(delay=5.0)
    port = server.sockets[0].getsockname()[1]
    async with server, httpx.AsyncClient() as http:
        q = QueueClient(
            http,
            endpoints=Endpoints.single(f"http://127.0.0.1:{port}"),
            key="k",
            timeout=httpx.Timeout(0.2),
        )
        with pytest.raises(UnknownOutcome, match="ReadTimeout"):
            await q.submit(T2I, LOW)
        server.close()


async def test_the_clients_timeout_overrides_a_short_httpx_default() -> None:
    server = await slow_server(delay=0.3)
    port = server.sockets[0].getsockname()[1]
    async with server, httpx.AsyncClient(timeout=0.05) as http:
        q = QueueClient(http, endpoints=Endpoints.single(f"http://127.0.0.1:{port}"), key="k")
        handle = await q.submit(T2I, LOW)
        server.close()
    assert handle.request_id == "r1"
