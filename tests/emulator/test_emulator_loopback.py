"""Over a real socket: dropped connections, truncated bodies, and the CLI command."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys

import httpx
import pytest
from emu_helpers import AUTH, T2I
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from batchgen.emulator import EmulatorConfig, serve
from batchgen.emulator.server import serve_asgi
from batchgen.errors import UsageError

LOW = {"prompt": "a windmill", "quality": "low", "image_size": "square_hd"}


async def test_submitdrop_closes_the_socket_without_an_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with (
        serve(EmulatorConfig(time_scale=0, faults="submitdrop=1")) as url,
        httpx.AsyncClient(base_url=url, headers=AUTH) as client,
    ):
        with pytest.raises(httpx.RemoteProtocolError, match="peer closed connection"):
            await client.post(T2I, json=LOW)
        # A status line may go out, but nothing that names the request, and no body.
        async with client.stream("POST", T2I, json=LOW) as r:
            assert "x-fal-request-id" not in r.headers
            with pytest.raises(httpx.RemoteProtocolError):
                await r.aread()
        s = (await client.get("/_emulator/stats")).json()
        assert (s["submits_accepted"], s["submits_dropped"]) == (2, 2)
    # uvicorn neither answered 500 nor logged the deliberate drop as an application error.
    assert "Exception in ASGI application" not in caplog.text
    assert "without starting response" not in caplog.text


async def test_truncated_media_breaks_mid_body(caplog: pytest.LogCaptureFixture) -> None:
    async with (
        serve(EmulatorConfig(time_scale=0, faults="truncate=1")) as url,
        httpx.AsyncClient(base_url=url, headers=AUTH) as client,
    ):
        h = (await client.post(T2I, json=LOW)).json()
        image = (await client.get(h["response_url"])).json()["images"][0]
        with pytest.raises(httpx.RemoteProtocolError, match=r"incomplete|complete message body"):
            await client.get(image["url"])
        # The server is fine afterwards.
        assert (await client.get("/_emulator/stats")).json()["media_truncated"] == 1
    assert "Exception in ASGI application" not in caplog.text


async def test_a_real_application_error_is_still_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("a real bug")

    app = Starlette(routes=[Route("/", broken)])
    async with serve_asgi(app) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/")).status_code == 500
    assert "Exception in ASGI application" in caplog.text
    assert "a real bug" in caplog.text


async def test_serving_leaves_the_callers_signal_handlers_alone() -> None:
    """uvicorn would put its own SIGINT/SIGTERM handlers in (a Ctrl-C would stop the
    emulator instead of the run's graceful stop); they stay the caller's, and a signal reaches
    the caller while the server keeps serving."""
    got: list[int] = []

    def mine(signum: int, frame: object) -> None:
        got.append(signum)

    caught = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, mine) for sig in caught}
    try:
        async with (
            serve(EmulatorConfig(time_scale=0)) as url,
            httpx.AsyncClient(base_url=url, headers=AUTH) as client,
        ):
            assert all(signal.getsignal(sig) is mine for sig in caught)
            signal.raise_signal(signal.SIGINT)
            assert (await client.post(T2I, json=LOW)).status_code == 200  # still serving
        assert got == [signal.SIGINT]
        assert all(signal.getsignal(sig) is mine for sig in caught)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


async def test_serve_reports_a_busy_port_as_a_usage_error() -> None:
    async with serve(EmulatorConfig()) as url:
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises(UsageError, match="cannot listen"):
            async with serve(EmulatorConfig(), port=port):
                pass


def test_cli_prints_url_serves_and_stops_cleanly_on_ctrl_c() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchgen", "emulator", "--port", "0", "--time-scale", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in first
        url = first.split("listening on ")[1].split()[0]
        r = httpx.post(f"{url}{T2I}", json=LOW, headers=AUTH)
        assert r.status_code == 200
        assert httpx.get(f"{url}/_emulator/stats").json()["submits_accepted"] == 1
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert "Traceback" not in err


async def test_stream_over_a_socket_follows_the_queue_in_real_time() -> None:
    config = EmulatorConfig(time_scale=0.01, concurrency_limit=1)
    async with serve(config) as url, httpx.AsyncClient(base_url=url, headers=AUTH) as client:
        await client.post(T2I, json={**LOW, "quality": "medium"})  # ~120 ms, holds the slot
        h = (await client.post(T2I, json=LOW)).json()
        statuses = []
        async with client.stream("GET", f"{h['status_url']}/stream") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    statuses.append(json.loads(line[6:])["status"])
        assert statuses == ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]


async def test_webhook_delivered_over_a_socket_with_the_default_client() -> None:
    got: list[dict[str, object]] = []
    arrived = asyncio.Event()

    async def hook(request: Request) -> Response:
        got.append(await request.json())
        arrived.set()
        return Response(status_code=204)

    receiver = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
    async with (
        serve_asgi(receiver) as hook_base,
        serve(EmulatorConfig(time_scale=0.01)) as url,
        httpx.AsyncClient(base_url=url, headers=AUTH) as client,
    ):
        r = await client.post(T2I, json=LOW, params={"fal_webhook": f"{hook_base}/hook"})
        await asyncio.wait_for(arrived.wait(), 10)
    (body,) = got
    assert body["request_id"] == r.json()["request_id"]
    assert body["status"] == "OK"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--concurrency-limit", "0"], "--concurrency-limit must be at least 1"),
        (["--time-scale", "-1"], "--time-scale must not be negative"),
        (["--port", "70000"], "--port must be between 0 and 65535"),
        (["--faults", "nosuch=1"], "unknown fault 'nosuch'"),
    ],
)
def test_cli_usage_errors(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    from batchgen.cli import main

    assert main(["emulator", *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert "Traceback" not in err
