"""The official ``fal-client`` (1.0.3) drives the emulator over a real loopback socket.

If the emulator and the official client disagree, the emulator is wrong: these tests pin the
wire protocol (docs/fal.md) from the client's side. The sync client blocks, so the
emulator runs in its own thread with its own event loop.
"""

from __future__ import annotations

import asyncio
import gc
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fal_client
import fal_client.client as fal_client_module
import httpx
import pytest
from PIL import Image

from batchgen.emulator import EmulatorConfig, serve

APP = "openai/gpt-image-2"
KEY = "conformance-key-id:conformance-secret"
LOW = {"prompt": "a paper boat", "quality": "low", "image_size": "square_hd"}

# fal-client never closes the httpx.Client it makes for each CDN upload; the fixture collects
# those leaks before each test ends, so the ResourceWarnings surface (and are ignored) here
# rather than in whichever later test the garbage collector happens to run in.
pytestmark = pytest.mark.filterwarnings(
    "ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning"
)


@contextmanager
def emulator_thread(config: EmulatorConfig) -> Iterator[str]:
    """Serve the emulator from a background thread; yield its base URL."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        box["stop"], box["loop"] = stop, asyncio.get_running_loop()
        try:
            async with serve(config, "127.0.0.1", 0) as url:
                box["url"] = url
                ready.set()
                await stop.wait()
        except BaseException as exc:  # surface startup failures in the test thread
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10), "emulator did not start"
    if "error" in box:
        raise box["error"]
    try:
        yield box["url"]
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(10)


@pytest.fixture
def point_fal_at(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Point fal_client's queue, REST and CDN hosts at an emulator URL (docs/fal.md, Hosts)."""
    monkeypatch.setenv("FAL_KEY", KEY)
    made: list[fal_client.SyncClient] = []

    def point(url: str) -> fal_client.SyncClient:
        monkeypatch.setattr(fal_client_module, "QUEUE_URL_FORMAT", f"{url}/")
        monkeypatch.setattr(fal_client_module, "REST_URL", url)
        monkeypatch.setattr(fal_client_module, "CDN_URL", url)
        client = fal_client.SyncClient()  # the key comes from FAL_KEY
        made.append(client)
        return client

    yield point
    for client in made:
        if "_client" in client.__dict__:
            client.__dict__["_client"].close()
    gc.collect()


def stats(url: str) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(f"{url}/_emulator/stats").json()
    return data


def test_submit_status_iter_events_and_result(point_fal_at: Any, caplog: Any) -> None:
    with emulator_thread(EmulatorConfig(time_scale=0.01)) as url:
        client = point_fal_at(url)
        handle = client.submit(APP, LOW)
        assert handle.status_url == f"{url}/{APP}/requests/{handle.request_id}/status"
        first = handle.status()
        assert isinstance(first, (fal_client.Queued, fal_client.InProgress, fal_client.Completed))
        events = list(handle.iter_events(with_logs=True, interval=0.02))
        assert isinstance(events[-1], fal_client.Completed)
        assert events[-1].error is None
        assert events[-1].logs and events[-1].logs[0]["source"] == "USER"
        assert "inference_time" in events[-1].metrics
        assert isinstance(handle.status(with_logs=False), fal_client.Completed)
        assert handle.status(with_logs=False).logs is None
        result = handle.get()
        (image,) = result["images"]
        assert (image["width"], image["height"]) == (1024, 1024)
        assert httpx.get(image["url"]).content[:4] == b"\x89PNG"
        # The rebuilt-URL API (AppId.from_endpoint_id) reaches the same request.
        assert client.result(APP, handle.request_id) == result
        assert isinstance(client.status(APP, handle.request_id), fal_client.Completed)
        s = stats(url)
        assert s["submits_accepted"] == 1
        assert s["unauthorized"] == 0
    assert "conformance-secret" not in caplog.text


def test_submit_with_sub_path_keeps_handle_urls_on_the_app(point_fal_at: Any) -> None:
    with emulator_thread(EmulatorConfig(time_scale=0)) as url:
        client = point_fal_at(url)
        buf = io.BytesIO()
        Image.new("RGB", (64, 48), (10, 200, 30)).save(buf, format="PNG")
        # The edit app fetches its references: they must be uploaded to (its) storage first.
        ref = client.upload(buf.getvalue(), "image/png", file_name="ref.png")
        handle = client.submit(APP, {**LOW, "image_urls": [ref]}, path="/edit")
        assert f"/{APP}/requests/" in handle.response_url
        assert "edit" not in handle.response_url
        assert handle.get()["images"]


def test_subscribe_with_queue_updates(point_fal_at: Any) -> None:
    with emulator_thread(EmulatorConfig(time_scale=0.02, concurrency_limit=1)) as url:
        client = point_fal_at(url)
        blocker = client.submit(APP, LOW)  # holds the only slot for ~80 ms
        updates: list[Any] = []
        enqueued: list[str] = []
        result = client.subscribe(
            APP,
            {**LOW, "quality": "medium"},  # runs ~240 ms: several polls see it in progress
            with_logs=True,
            interval=0.02,
            on_enqueue=enqueued.append,
            on_queue_update=updates.append,
        )
        assert result["images"]
        assert len(enqueued) == 1
        kinds = [type(u).__name__ for u in updates]
        assert kinds[0] == "Queued"
        assert "InProgress" in kinds
        assert kinds[-1] == "Completed"
        assert blocker.get()["images"]
        assert stats(url)["peak_in_progress"] == 1


def test_cancel_queued_then_already_completed(point_fal_at: Any) -> None:
    with emulator_thread(EmulatorConfig(time_scale=1.0, concurrency_limit=1)) as url:
        client = point_fal_at(url)
        client.submit(APP, {**LOW, "quality": "high"})  # runs ~30 s, holds the slot
        queued = client.submit(APP, LOW)
        assert isinstance(queued.status(), fal_client.Queued)
        queued.cancel()
        done = queued.status(with_logs=True)
        assert isinstance(done, fal_client.Completed)
        assert done.error_type == "client_cancelled"
        with pytest.raises(fal_client.FalClientHTTPError) as info:
            client.cancel(APP, queued.request_id)
        assert info.value.status_code == 400
        assert stats(url)["cancels_effective"] == 1


def test_cancel_running_frees_the_slot(point_fal_at: Any) -> None:
    with emulator_thread(EmulatorConfig(time_scale=1.0, concurrency_limit=1)) as url:
        client = point_fal_at(url)
        running = client.submit(APP, {**LOW, "quality": "high"})
        waiting = client.submit(APP, LOW)
        assert isinstance(running.status(), fal_client.InProgress)
        client.cancel(APP, running.request_id)  # the rebuilt cancel URL
        assert isinstance(waiting.status(), fal_client.InProgress)
        with pytest.raises(fal_client.FalClientHTTPError) as info:
            running.get()
        assert (info.value.status_code, info.value.error_type) == (499, "client_cancelled")


def test_start_timeout_is_not_retried(point_fal_at: Any) -> None:
    with emulator_thread(EmulatorConfig(time_scale=1.0, concurrency_limit=1)) as url:
        client = point_fal_at(url)
        client.submit(APP, {**LOW, "quality": "high"})  # ~30 s: the next one cannot start
        late = client.submit(APP, LOW, start_timeout=1.1)  # sent as X-Fal-Request-Timeout
        with pytest.raises(fal_client.FalClientHTTPError) as info:
            late.get(interval=0.05)
        assert info.value.status_code == 504
        assert info.value.error_type == "request_timeout"
        # 504 with X-Fal-Request-Timeout-Type is the user's own timeout: asked for once.
        assert stats(url)["result_requests"] == 1


def test_priority_start_timeout_and_hint_as_the_client_sends_them(point_fal_at: Any) -> None:
    # fal-client's own parameters, on the wire as it sends them: the emulator must honour
    # the priority, read the start timeout under the old name, and count all three.
    with emulator_thread(EmulatorConfig(time_scale=1.0, concurrency_limit=1)) as url:
        client = point_fal_at(url)
        client.submit(APP, {**LOW, "quality": "high"})  # ~30 s: the others wait
        low = client.submit(APP, {**LOW, "prompt": "low"}, priority="low", hint="runner-7")
        normal = client.submit(APP, {**LOW, "prompt": "normal"}, priority="normal")
        late = client.submit(APP, {**LOW, "prompt": "late"}, priority="low", start_timeout=1.1)
        positions = [h.status() for h in (normal, low, late)]
        assert [p.position for p in positions if isinstance(p, fal_client.Queued)] == [0, 1, 2]
        with pytest.raises(fal_client.FalClientHTTPError) as info:
            late.get(interval=0.05)
        assert info.value.status_code == 504
        counted = stats(url)["control_headers"]
        assert counted["x-fal-queue-priority"] == {"low": 2, "normal": 1}
        assert counted["x-fal-runner-hint"] == {"runner-7": 1}
        assert counted["x-fal-request-timeout"] == {"1.1": 1}


def test_errors_reach_the_caller_as_fal_reports_them(point_fal_at: Any) -> None:
    with emulator_thread(EmulatorConfig(time_scale=0, faults="runner_error=1")) as url:
        client = point_fal_at(url)
        with pytest.raises(fal_client.FalClientHTTPError) as info:
            client.subscribe(APP, LOW, interval=0.01)
        assert info.value.status_code >= 500
        assert info.value.error_type in {
            "runner_disconnected",
            "request_timeout",
            "runner_server_error",
            "runner_incomplete_response",
        }
    with emulator_thread(EmulatorConfig(time_scale=0)) as url:
        client = point_fal_at(url)
        with pytest.raises(fal_client.FalClientHTTPError) as info:
            client.subscribe(APP, {"prompt": "x", "num_images": 9}, interval=0.01)
        assert info.value.status_code == 422
        assert isinstance(info.value.message, list)  # the detail list, as real fal sends
        assert info.value.message[0]["loc"] == ["body", "num_images"]


def test_client_retries_429_and_ingress_503_on_submit(point_fal_at: Any) -> None:
    spec = "submit429=0.4,submit503=0.3,status503=0.3"
    with emulator_thread(EmulatorConfig(time_scale=0, faults=spec, seed=1)) as url:
        client = point_fal_at(url)
        for i in range(6):
            assert client.subscribe(APP, {**LOW, "prompt": f"p{i}"}, interval=0.01)["images"]
        s = stats(url)
        assert s["submits_refused_429"] > 0
        assert s["submits_refused_503"] > 0
        assert s["status_faults"] > 0
        # Refusals created no job: each prompt was accepted exactly once.
        assert s["submits_accepted"] == 6
        assert s["duplicate_submits"] == 0


def test_client_does_not_retry_a_status_500(point_fal_at: Any) -> None:
    with emulator_thread(EmulatorConfig(time_scale=0, faults="status500=1")) as url:
        client = point_fal_at(url)
        handle = client.submit(APP, LOW)
        with pytest.raises(fal_client.FalClientHTTPError) as info:
            handle.status()
        assert info.value.status_code == 500
        assert stats(url)["status_polls"] == 1


def test_dropped_submit_is_retried_and_billed_twice(point_fal_at: Any) -> None:
    # The case batchgen exists to avoid: fal-client re-POSTs after a drop and pays again.
    with emulator_thread(EmulatorConfig(time_scale=0, faults="submitdrop=0.5", seed=2)) as url:
        client = point_fal_at(url)
        for i in range(4):
            client.submit(APP, {**LOW, "prompt": f"p{i}"})
        s = stats(url)
        assert s["submits_dropped"] > 0
        assert s["duplicate_submits"] == s["submits_dropped"]


def test_upload_single_fallback_and_file(point_fal_at: Any, tmp_path: Path) -> None:
    with emulator_thread(EmulatorConfig()) as url:
        client = point_fal_at(url)
        v3 = client.upload(b"hello v3", "text/plain", file_name="hello.txt")
        assert v3.startswith(f"{url}/files/")
        assert httpx.get(v3).content == b"hello v3"
        gcs = client.upload(b"hello gcs", "text/plain", repository="fal")
        got = httpx.get(gcs)
        assert (got.content, got.headers["content-type"]) == (b"hello gcs", "text/plain")
        path = tmp_path / "ref.png"
        path.write_bytes(b"\x89PNG fake")
        from_file = client.upload_file(path)
        assert from_file.endswith("/ref.png")
        assert httpx.get(from_file).content == b"\x89PNG fake"
        assert stats(url)["uploads"] == 3


def test_multipart_upload(point_fal_at: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Shrink the client's thresholds so a 1 MiB file takes the >100 MiB path.
    monkeypatch.setattr(fal_client_module, "MULTIPART_THRESHOLD", 256 * 1024)
    monkeypatch.setattr(fal_client_module, "MULTIPART_CHUNK_SIZE", 100 * 1024)
    data = bytes(range(256)) * 4096  # 1 MiB, 11 parts of 100 KiB
    with emulator_thread(EmulatorConfig()) as url:
        client = point_fal_at(url)
        access = client.upload(data, "application/octet-stream", file_name="big.bin")
        assert httpx.get(access).content == data


async def test_async_client_end_to_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAL_KEY", KEY)
    async with serve(EmulatorConfig(time_scale=0.01)) as url:
        monkeypatch.setattr(fal_client_module, "QUEUE_URL_FORMAT", f"{url}/")
        monkeypatch.setattr(fal_client_module, "REST_URL", url)
        monkeypatch.setattr(fal_client_module, "CDN_URL", url)
        client = fal_client.AsyncClient()
        handle = await client.submit(APP, LOW)
        events = [e async for e in handle.iter_events(with_logs=True, interval=0.02)]
        assert isinstance(events[-1], fal_client.Completed)
        result = await handle.get()
        assert result["images"][0]["url"].startswith(f"{url}/media/")
        uploaded = await client.upload(b"async bytes", "text/plain")
        async with httpx.AsyncClient() as http:
            assert (await http.get(uploaded)).content == b"async bytes"
        http_client = await client._client  # an async cached property in fal-client
        await http_client.aclose()
    gc.collect()


async def test_webhook_url_gets_a_delivery_signed_as_fal_signs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """fal-client's ``webhook_url=`` reaches the emulator, whose delivery carries fal's four
    signature headers and verifies against its JWKS (what ``--watch webhook`` checks)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from batchgen.emulator.server import serve_asgi
    from batchgen.fal.webhook import Verifier, parse_delivery

    got: asyncio.Queue[tuple[dict[str, str], bytes]] = asyncio.Queue()

    async def hook(request: Request) -> Response:
        await got.put((dict(request.headers), await request.body()))
        return Response(status_code=200)

    monkeypatch.setenv("FAL_KEY", KEY)
    receiver = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
    async with serve(EmulatorConfig(time_scale=0)) as url, serve_asgi(receiver) as hook_url:
        monkeypatch.setattr(fal_client_module, "QUEUE_URL_FORMAT", f"{url}/")
        monkeypatch.setattr(fal_client_module, "REST_URL", url)
        client = fal_client.AsyncClient()
        handle = await client.submit(APP, LOW, webhook_url=f"{hook_url}/hook")
        headers, raw = await asyncio.wait_for(got.get(), 30)
        async with httpx.AsyncClient() as http:

            async def jwks() -> Any:
                return (await http.get(f"{url}/.well-known/jwks.json")).json()

            assert await Verifier(jwks).verify(headers, raw) == handle.request_id
        delivery = parse_delivery(raw)
        assert delivery.ok and delivery.payload == await handle.get()
        http_client = await client._client  # an async cached property in fal-client
        await http_client.aclose()
    gc.collect()
