"""The run's HTTP clients (running/setup.py: clients), as a server and a user see them.

Over real loopback sockets, because what matters is what a server sees: connections reused
rather than opened per request, a stream per request in flight without the polls waiting
behind them, a proxy from the environment used (except for the in-process emulator), a
certificate checked against certifi's CAs or the bundle SSL_CERT_FILE names, and an image's
redirects followed no further than download_image's rule.
"""

from __future__ import annotations

import asyncio
import io
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from test_tls_support import self_signed

from batchgen.config import Settings, build_settings
from batchgen.emulator.server import serve_asgi
from batchgen.errors import DownloadError
from batchgen.manifest import load_manifest
from batchgen.outputs.download import MAX_REDIRECTS, download_image
from batchgen.running.setup import clients

DEAD_PROXY = "http://127.0.0.1:9"  # nothing listens there: a request sent to it fails


def recording_app(seen: Counter[tuple[str, int]], gate: asyncio.Event) -> Starlette:
    """Counts requests by the client's (host, port), that is by connection. ``/events`` sends
    one event, then holds the stream open until ``gate`` is set, as fal's status stream
    stays open while a request runs."""

    def count(request: Request) -> None:
        assert request.client is not None
        seen[(request.client.host, request.client.port)] += 1

    async def hello(request: Request) -> Response:
        count(request)
        return JSONResponse({"n": int(request.query_params.get("n", 0))})

    async def events(request: Request) -> Response:
        count(request)

        async def body() -> AsyncIterator[bytes]:
            yield b"data: IN_PROGRESS\n\n"
            await gate.wait()
            yield b"data: COMPLETED\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    return Starlette(routes=[Route("/hello", hello), Route("/events", events)])


DEMO = Path(__file__).resolve().parents[1] / "manifests" / "demo.yaml"


def run_settings(**flags: object) -> Settings:
    return build_settings(flags, {}, load_manifest(DEMO))


@pytest.fixture(autouse=True)
def no_proxy_or_ca_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_PROXY", "ALL_PROXY", "HTTPS_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


@pytest.mark.parametrize("where", ["emulate", "endpoint"])
async def test_the_run_clients_reuse_their_connections(where: str) -> None:
    seen: Counter[tuple[str, int]] = Counter()
    async with serve_asgi(recording_app(seen, asyncio.Event())) as url:
        settings = run_settings(emulate=True) if where == "emulate" else run_settings(endpoint=url)
        async with clients(settings) as (http, media):
            for client in (http, media):
                for n in range(30):
                    assert (await client.get(f"{url}/hello", params={"n": n})).json() == {"n": n}
    assert sum(seen.values()) == 60 and len(seen) == 2  # one connection per client, kept


async def test_polls_do_not_wait_behind_the_open_streams() -> None:
    """Every request in flight holds a status stream open; polls and results go on beside
    them, on connections of their own, instead of queueing for a free one."""
    seen: Counter[tuple[str, int]] = Counter()
    gate = asyncio.Event()
    window = 8
    first: asyncio.Queue[str] = asyncio.Queue()

    async def watch(http: httpx.AsyncClient, url: str) -> list[str]:
        async with http.stream("GET", f"{url}/events") as r:
            lines = aiter(r.aiter_lines())
            first.put_nowait(await anext(lines))
            return [line async for line in lines if line]

    async with (
        serve_asgi(recording_app(seen, gate)) as url,
        clients(run_settings(emulate=True, concurrency=window)) as (http, _),
    ):
        streams = [asyncio.create_task(watch(http, url)) for _ in range(window)]
        async with asyncio.timeout(10):
            assert [await first.get() for _ in range(window)] == ["data: IN_PROGRESS"] * window
            # every stream open at once: now the polls
            polls = [http.get(f"{url}/hello", params={"n": n}) for n in range(window)]
            assert [r.json()["n"] for r in await asyncio.gather(*polls)] == list(range(window))
            gate.set()
            assert await asyncio.gather(*streams) == [["data: COMPLETED"]] * window
    assert len(seen) == 2 * window  # a connection for each stream, and one for each poll


async def test_a_proxy_from_the_environment_is_used_except_for_the_emulator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A proxy that is not there proves the request went to it (loopback included: NO_PROXY
    is unset). NO_PROXY sends a host around it. The in-process emulator is on loopback:
    --emulate never sends its requests to a proxy, which could only fail to reach them."""
    seen: Counter[tuple[str, int]] = Counter()
    monkeypatch.setenv("HTTP_PROXY", DEAD_PROXY)
    async with serve_asgi(recording_app(seen, asyncio.Event())) as url:
        async with clients(run_settings(endpoint=url)) as (http, media):
            for client in (http, media):
                with pytest.raises(httpx.ConnectError):
                    await client.get(f"{url}/hello")
        async with clients(run_settings(emulate=True)) as (http, media):
            for client in (http, media):
                assert (await client.get(f"{url}/hello")).status_code == 200
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        async with clients(run_settings(endpoint=url)) as (http, media):
            for client in (http, media):
                assert (await client.get(f"{url}/hello")).status_code == 200
    assert sum(seen.values()) == 4


async def test_tls_refuses_an_untrusted_certificate_and_trusts_ssl_cert_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """certifi's CAs do not know a self-signed certificate: refused. Behind a proxy that
    inspects TLS, SSL_CERT_FILE names the CA bundle to trust instead (README); HTTPS_PROXY
    applies to https requests, and NO_PROXY takes a host around it."""
    self_signed(tmp_path)
    cert = str(tmp_path / "cert.pem")
    seen: Counter[tuple[str, int]] = Counter()
    app = recording_app(seen, asyncio.Event())
    async with serve_asgi(app, tls=(cert, str(tmp_path / "key.pem"))) as url:
        assert url.startswith("https://")
        async with clients(run_settings(endpoint=url)) as (http, media):
            for client in (http, media):
                with pytest.raises(httpx.ConnectError):
                    await client.get(f"{url}/hello")
        assert sum(seen.values()) == 0  # refused at the handshake
        monkeypatch.setenv("SSL_CERT_FILE", cert)
        async with clients(run_settings(endpoint=url)) as (http, media):
            for client in (http, media):
                assert (await client.get(f"{url}/hello")).status_code == 200
        monkeypatch.setenv("HTTPS_PROXY", DEAD_PROXY)
        async with clients(run_settings(endpoint=url)) as (http, media):
            for client in (http, media):
                with pytest.raises(httpx.ConnectError):
                    await client.get(f"{url}/hello")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        async with clients(run_settings(endpoint=url)) as (http, media):
            for client in (http, media):
                assert (await client.get(f"{url}/hello")).status_code == 200
    assert sum(seen.values()) == 4


def redirecting_app(seen: Counter[str]) -> Starlette:
    """``/hop/N`` redirects N more times before the image; ``/to-file`` to a local file."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, "PNG")

    async def hop(request: Request) -> Response:
        seen[request.url.path] += 1
        n = request.path_params["n"]
        return RedirectResponse(f"/hop/{n - 1}" if n > 0 else "/image.png")

    async def image(request: Request) -> Response:
        seen[request.url.path] += 1
        return Response(buf.getvalue(), media_type="image/png")

    return Starlette(
        routes=[
            Route("/hop/{n:int}", hop),
            Route("/image.png", image),
            Route("/to-file", lambda r: RedirectResponse("file:///etc/passwd")),
        ]
    )


async def test_the_media_client_follows_an_images_redirects_within_the_limit(
    tmp_path: Path,
) -> None:
    seen: Counter[str] = Counter()
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def fetch(media: httpx.AsyncClient, url: str) -> Path:
        dest = tmp_path / "images" / "x.png"
        await download_image(media, url, dest, expected_format="png", sleep=sleep)
        return dest

    async with (
        serve_asgi(redirecting_app(seen)) as url,
        clients(run_settings(emulate=True)) as (_, media),
    ):
        assert (await fetch(media, f"{url}/hop/{MAX_REDIRECTS - 1}")).is_file()
        assert seen["/image.png"] == 1
        seen.clear()
        # One redirect too many: the client stops at its limit, never fetching the image.
        with pytest.raises(DownloadError) as info:
            await fetch(media, f"{url}/hop/{MAX_REDIRECTS}")
        assert info.value.reason == "too_many_redirects"
        assert sum(seen.values()) == MAX_REDIRECTS + 1 and seen["/image.png"] == 0
        # A redirect to a local file is refused, once, not retried.
        with pytest.raises(DownloadError) as info:
            await fetch(media, f"{url}/to-file")
        assert info.value.reason == "bad_redirect" and not info.value.retryable
    assert sleeps == []
