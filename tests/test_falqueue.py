"""The queue client against the emulator in-process: the happy path and every row of the Errors
table, asserting both what the client raised (and how ``classify`` reads it) and what the
server saw (``/_emulator/stats``)."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchgen.emulator import EmulatorConfig, create_app
from batchgen.errors import AuthError, QueueHTTPError, QueueTransportError, UnknownOutcome
from batchgen.fal import (
    Completed,
    Endpoints,
    Handle,
    InProgress,
    QueueClient,
    Queued,
    data_uri,
)
from batchgen.fal.auth import FalKey
from batchgen.retry import Action, RetryEvent, RetryPolicy, ZeroWait, classify

BASE = "http://emulator"
KEY = "key-id-123:very-secret-456"
T2I = "openai/gpt-image-2"
CAT = {"prompt": "a cat in a hat", "quality": "low", "image_size": "square_hd"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder(httpx.AsyncBaseTransport):
    """Sees every request on its way to the emulator, so tests can check the wire."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await self.inner.handle_async_request(request)


class Env:
    def __init__(self, http: httpx.AsyncClient, recorder: Recorder, sleep: ZeroWait) -> None:
        self.http = http
        self.recorder = recorder
        self.sleep = sleep
        self.events: list[RetryEvent] = []

    def client(self, key: str | None = KEY, attempts: int = 4) -> QueueClient:
        return QueueClient(
            self.http,
            endpoints=Endpoints.single(BASE),
            key=key,
            sleep=self.sleep,
            retry=RetryPolicy(attempts=attempts),
            on_retry=self.events.append,
        )

    async def stats(self) -> dict[str, Any]:
        resp = await self.http.get(f"{BASE}/_emulator/stats")
        data: dict[str, Any] = resp.json()
        return data


MakeEnv = Callable[..., Any]


@pytest.fixture
async def make_env() -> AsyncIterator[MakeEnv]:
    clients: list[httpx.AsyncClient] = []

    async def make(**config: Any) -> Env:
        config.setdefault("time_scale", 0.0)
        app = create_app(EmulatorConfig(**config))
        recorder = Recorder(httpx.ASGITransport(app=app))
        http = httpx.AsyncClient(transport=recorder)
        clients.append(http)
        return Env(http, recorder, ZeroWait())

    yield make
    for c in clients:
        await c.aclose()


# ---------------------------------------------------------------------------- happy path


async def test_submit_status_result_cancel(make_env: MakeEnv) -> None:
    env = await make_env()
    q = env.client()
    h = await q.submit(T2I, CAT)
    assert h.status_url.startswith(f"{BASE}/openai/gpt-image-2/requests/{h.request_id}")
    assert Handle.from_json(h.to_json()) == h

    st = await q.status(h)
    assert isinstance(st, Completed) and st.ok and st.logs is None
    assert "inference_time" in st.metrics
    with_logs = await q.status(h, logs=True)
    assert isinstance(with_logs, Completed) and with_logs.logs

    result = await q.result(h)
    (image,) = result["images"]
    assert (image["width"], image["height"]) == (1024, 1024)
    assert await q.cancel(h) == "ALREADY_COMPLETED"

    stats = await env.stats()
    assert (stats["submits_accepted"], stats["status_polls"], stats["result_requests"]) == (1, 2, 1)


async def test_every_request_carries_the_key_and_our_user_agent(make_env: MakeEnv) -> None:
    env = await make_env()
    q = env.client()
    h = await q.submit(
        T2I, CAT, webhook="https://example.com/hook?x=1", headers={"X-Fal-Store-IO": "0"}
    )
    await q.status(h)
    await q.result(h)
    post, *gets = env.recorder.requests
    assert post.url.path == "/openai/gpt-image-2"
    assert post.url.params["fal_webhook"] == "https://example.com/hook?x=1"
    assert post.headers["x-fal-store-io"] == "0"
    assert post.headers["content-type"] == "application/json"
    for r in [post, *gets]:
        assert r.headers["authorization"] == f"Key {KEY}"
        assert r.headers["user-agent"].startswith("batchgen/")
    assert gets[0].url.params["logs"] == "0"


async def test_sub_path_endpoint_posts_to_the_sub_path(make_env: MakeEnv) -> None:
    env = await make_env()
    edit = {"prompt": "make it blue", "image_urls": ["https://example.com/a.png"]}
    h = await env.client().submit("openai/gpt-image-2/edit", edit)
    assert env.recorder.requests[0].url.path == "/openai/gpt-image-2/edit"
    # fal builds the handle's URLs from owner/app only; we use them verbatim.
    assert "/edit/" not in h.status_url


async def test_queue_positions_then_progress_then_completion(make_env: MakeEnv) -> None:
    clock = Clock()
    env = await make_env(concurrency_limit=1, time_scale=1.0, clock=clock)
    q = env.client()
    first, second, third = [await q.submit(T2I, {**CAT, "prompt": p}) for p in "abc"]
    assert isinstance(await q.status(first), InProgress)
    assert await q.status(second) == Queued(0)
    assert await q.status(third) == Queued(1)
    clock.now += 1_000  # well past three run times, well inside the hour of retention
    for h in (first, second, third):
        assert isinstance(await q.status(h), Completed)


async def test_cancel_a_queued_request(make_env: MakeEnv) -> None:
    clock = Clock()
    env = await make_env(concurrency_limit=1, time_scale=1.0, clock=clock)
    q = env.client()
    await q.submit(T2I, CAT)
    waiting = await q.submit(T2I, {**CAT, "prompt": "dog"})
    assert await q.cancel(waiting) == "CANCELLATION_REQUESTED"
    gone = Handle.from_json(
        {
            **waiting.to_json(),
            "cancel_url": waiting.cancel_url.replace(waiting.request_id, "no-such-request"),
        }
    )
    assert await q.cancel(gone) == "NOT_FOUND"


# -------------------------- what a failure means (docs/interfaces.md, What a failure means)


async def test_missing_key_is_fatal_everywhere_and_never_retried(make_env: MakeEnv) -> None:
    env = await make_env()
    h = await env.client().submit(T2I, CAT)
    anon = env.client(key=None)
    for call in (anon.submit(T2I, CAT), anon.status(h), anon.result(h), anon.cancel(h)):
        with pytest.raises(AuthError, match="HTTP 401") as err:
            await call
        assert classify(err.value, op="status").action is Action.FATAL
    assert (await env.stats())["unauthorized"] == 4
    assert env.sleep.delays == []


async def test_submit_429_is_a_refusal_retried_by_the_caller(make_env: MakeEnv) -> None:
    env = await make_env(faults="submit429=1")
    with pytest.raises(QueueHTTPError) as err:
        await env.client().submit(T2I, CAT)
    assert err.value.status == 429
    assert classify(err.value, op="submit").action is Action.RETRY
    stats = await env.stats()
    assert (stats["submit_attempts"], stats["submits_accepted"]) == (1, 0)  # one POST, no job


async def test_submit_ingress_503_is_marked_ingress(make_env: MakeEnv) -> None:
    env = await make_env(faults="submit503=1")
    with pytest.raises(QueueHTTPError) as err:
        await env.client().submit(T2I, CAT)
    assert err.value.ingress and err.value.status == 503
    assert "nginx" in str(err.value) and "<" not in str(err.value)
    assert classify(err.value, op="submit").action is Action.RETRY
    assert (await env.stats())["submit_attempts"] == 1


async def test_dropped_submit_is_unknown_not_a_refusal(make_env: MakeEnv) -> None:
    env = await make_env(faults="submitdrop=1")
    with pytest.raises(UnknownOutcome) as err:
        await env.client().submit(T2I, CAT)
    assert classify(err.value, op="submit").action is Action.UNKNOWN
    stats = await env.stats()
    # The server did create (and will bill) the job: the client must not pretend otherwise.
    assert (stats["submit_attempts"], stats["submits_accepted"]) == (1, 1)


async def test_nothing_sent_is_a_safe_transport_error() -> None:
    # A port that was free a moment ago: the connection is refused before any byte is sent.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with httpx.AsyncClient() as http:
        q = QueueClient(http, endpoints=Endpoints.single(f"http://127.0.0.1:{port}"), key=KEY)
        with pytest.raises(QueueTransportError) as err:
            await q.submit(T2I, CAT)
    assert err.value.sent is False
    assert classify(err.value, op="submit").action is Action.RETRY
    assert "very-secret" not in str(err.value)


async def test_invalid_input_is_final_and_fetched_once(make_env: MakeEnv) -> None:
    env = await make_env()
    q = env.client()
    h = await q.submit(T2I, {"prompt": "x", "quality": "ultra"})
    st = await q.status(h)
    assert isinstance(st, Completed)
    with pytest.raises(QueueHTTPError) as err:
        await q.result(h)
    assert err.value.status == 422 and isinstance(err.value.detail, list)
    assert "quality" in str(err.value)
    outcome = classify(err.value, op="result")
    assert (outcome.action, outcome.reason) == (Action.FINAL, "validation")
    assert (await env.stats())["result_requests"] == 1


async def test_content_policy_is_final(make_env: MakeEnv) -> None:
    env = await make_env(faults="content_policy=1")
    q = env.client()
    h = await q.submit(T2I, CAT)
    with pytest.raises(QueueHTTPError) as err:
        await q.result(h)
    outcome = classify(err.value, op="result")
    assert (outcome.action, outcome.reason) == (Action.FINAL, "content_policy_violation")
    assert (await env.stats())["result_requests"] == 1


@pytest.mark.parametrize("seed", range(6))
async def test_runner_error_is_resubmitted_not_retried(make_env: MakeEnv, seed: int) -> None:
    env = await make_env(faults="runner_error=1", seed=seed)
    q = env.client()
    h = await q.submit(T2I, CAT)
    st = await q.status(h)
    assert isinstance(st, Completed) and not st.ok and st.error_type
    with pytest.raises(QueueHTTPError) as err:
        await q.result(h)
    assert err.value.status >= 500 and err.value.error_type == st.error_type
    assert err.value.request_id == h.request_id
    outcome = classify(err.value, op="result")
    assert (outcome.action, outcome.reason) == (Action.RESUBMIT, st.error_type)
    assert (await env.stats())["result_requests"] == 1  # the model's answer is not re-asked


async def test_expired_result_is_resubmitted_as_lost(make_env: MakeEnv) -> None:
    clock = Clock()
    env = await make_env(clock=clock, time_scale=1.0)
    q = env.client()
    h = await q.submit(T2I, CAT)
    clock.now += 2 * 3600
    with pytest.raises(QueueHTTPError) as err:
        await q.result(h)
    assert err.value.status == 404
    outcome = classify(err.value, op="result")
    assert (outcome.action, outcome.reason) == (Action.RESUBMIT, "expired")
    assert (await env.stats())["result_requests"] == 1


@pytest.mark.parametrize("fault", ["status500", "status503"])
async def test_status_faults_are_retried_then_given_up(make_env: MakeEnv, fault: str) -> None:
    env = await make_env(faults=f"{fault}=1")
    q = env.client(attempts=4)
    h = await q.submit(T2I, CAT)
    with pytest.raises(QueueHTTPError) as err:
        await q.status(h)
    assert classify(err.value, op="status").action is Action.RETRY
    assert (await env.stats())["status_polls"] == 4
    assert len(env.sleep.delays) == 3
    assert [e.attempt for e in env.events] == [1, 2, 3]


async def test_flaky_status_recovers_inside_the_client(make_env: MakeEnv) -> None:
    env = await make_env(faults="status500=0.5,status503=0.3", seed=3)
    q = env.client(attempts=20)
    h = await q.submit(T2I, CAT)
    for _ in range(10):
        assert isinstance(await q.status(h), Completed)
    stats = await env.stats()
    assert stats["status_faults"] > 0
    assert stats["status_polls"] == 10 + stats["status_faults"]
    assert len(env.sleep.delays) == stats["status_faults"]


# ---------------------------------------------------------------------------- storage


async def test_upload_to_the_cdn_with_a_cached_token(make_env: MakeEnv) -> None:
    env = await make_env()
    q = env.client()
    urls = [await q.upload(b"hello %d" % i, "text/plain", f"f{i}.txt") for i in range(3)]
    for i, url in enumerate(urls):
        assert (await env.http.get(url)).content == b"hello %d" % i
    paths = [r.url.path for r in env.recorder.requests if r.method == "POST"]
    assert paths.count("/storage/auth/token") == 1
    assert paths.count("/files/upload") == 3
    cdn = [r for r in env.recorder.requests if r.url.path == "/files/upload"]
    assert cdn[0].headers["authorization"].startswith("Bearer ")
    assert cdn[0].headers["x-fal-file-name"] == "f0.txt"


async def test_token_is_renewed_when_it_expires(make_env: MakeEnv) -> None:
    env = await make_env()
    wall = Clock()
    wall.now = 0.0  # the emulator's token expires in the future relative to the real clock
    q = QueueClient(
        env.http, endpoints=Endpoints.single(BASE), key=KEY, sleep=env.sleep, wall_clock=wall
    )
    await q.upload(b"a", "text/plain")
    wall.now = 4e9  # far past any expiry
    await q.upload(b"b", "text/plain")
    paths = [r.url.path for r in env.recorder.requests]
    assert paths.count("/storage/auth/token") == 2


class BrokenCDN(httpx.AsyncBaseTransport):
    """The CDN host answers 503 JSON (a real outage); every other host is the emulator."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "cdn.example":
            return httpx.Response(503, json={"detail": "CDN down"})
        return await self.inner.handle_async_request(request)


async def test_upload_falls_back_to_initiate_and_signed_put(
    make_env: MakeEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = await make_env()
    caplog.set_level(logging.DEBUG)
    http = httpx.AsyncClient(transport=BrokenCDN(env.recorder))
    try:
        q = QueueClient(
            http,
            endpoints=Endpoints(queue=BASE, rest=BASE, cdn="http://cdn.example"),
            key=KEY,
            sleep=ZeroWait(),
            retry=RetryPolicy(attempts=2),
        )
        url = await q.upload(b"\x89PNG fallback", "image/png", "pic.png")
    finally:
        await http.aclose()
    assert (await env.http.get(url)).content == b"\x89PNG fallback"
    put = next(r for r in env.recorder.requests if r.method == "PUT")
    assert "authorization" not in put.headers  # the key never goes to a signed URL
    assert put.headers["content-type"] == "image/png"
    (warning,) = [r for r in caplog.records if r.name == "batchgen.fal.storage"]
    assert "CDN down" in warning.getMessage()
    assert all("very-secret" not in r.getMessage() for r in caplog.records)


async def test_upload_a_file_by_path(make_env: MakeEnv, tmp_path: Path) -> None:
    env = await make_env()
    pic = tmp_path / "ref image.webp"
    pic.write_bytes(b"RIFF....WEBP")
    url = await env.client().upload(pic)
    got = await env.http.get(url)
    assert got.content == b"RIFF....WEBP"
    assert got.headers["content-type"] == "image/webp"
    sent = next(r for r in env.recorder.requests if r.url.path == "/files/upload")
    assert sent.headers["x-fal-file-name"] == "ref image.webp"


def test_data_uri_is_the_offline_choice() -> None:
    assert data_uri(b"\x00\xff", "image/png") == "data:image/png;base64,AP8="


# ---------------------------------------------------------------------------- secrets


async def test_the_key_shows_in_no_repr_or_message(make_env: MakeEnv) -> None:
    env = await make_env(faults="submit429=1")
    q = env.client()
    texts = [repr(q), str(q), repr(FalKey(KEY))]
    with pytest.raises(QueueHTTPError) as err:
        await q.submit(T2I, CAT)
    texts += [str(err.value), repr(err.value), classify(err.value, op="submit").message]
    for text in texts:
        assert "very-secret" not in text and "key-id-123" not in text
