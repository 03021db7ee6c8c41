"""The platform API client (fal/platform.py): against the emulator in-process, and against
small stand-in servers for the answers the emulator never gives (429, 500, an older shape)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from batchgen.emulator import EmulatorConfig, create_app
from batchgen.errors import AdminKeyRequired, AuthError, ProtocolError, QueueHTTPError
from batchgen.fal import Endpoints
from batchgen.fal.auth import FalKey
from batchgen.fal.platform import BillingEvent, PlatformClient, RequestItem
from batchgen.retry import ZeroWait

EP = "openai/gpt-image-2"
LOW = {"prompt": "a red fox", "quality": "low", "image_size": "square_hd"}
ORDINARY = FalKey("test-id:test-secret")
ADMIN = FalKey("admin-test")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Counting(httpx.AsyncBaseTransport):
    """Passes every request on and keeps its URL, so a test can count the calls."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.urls: list[httpx.URL] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.urls.append(request.url)
        return await self.inner.handle_async_request(request)


@pytest.fixture
async def emulator() -> AsyncIterator[tuple[httpx.AsyncClient, Counting, Clock]]:
    clock = Clock()
    app = create_app(EmulatorConfig(time_scale=0.001, clock=clock))
    counting = Counting(httpx.ASGITransport(app=app))
    async with httpx.AsyncClient(transport=counting, base_url="http://emulator") as http:
        yield http, counting, clock


async def submit_some(http: httpx.AsyncClient, clock: Clock, n: int, **extra: Any) -> list[str]:
    ids = []
    for i in range(n):
        body = {**LOW, "prompt": f"picture {i}", **extra}
        r = await http.post(f"/{EP}", json=body, headers={"Authorization": ADMIN.header})
        ids.append(r.json()["request_id"])
        clock.now += 1.0  # each ends before the next: a stable order
    return ids


def client(http: httpx.AsyncClient, key: FalKey | None = ORDINARY, **kw: Any) -> PlatformClient:
    return PlatformClient(
        http, key=key, base_url=Endpoints.single("http://emulator").platform, **kw
    )


async def test_endpoint_urls_put_the_platform_api_under_v1() -> None:
    assert Endpoints().platform == "https://api.fal.ai/v1"
    assert Endpoints.single("http://127.0.0.1:8765/").platform == "http://127.0.0.1:8765/v1"


async def test_the_history_is_followed_page_by_page(emulator: Any) -> None:
    http, counting, clock = emulator
    sent = await submit_some(http, clock, 5)
    seen = [i async for i in client(http).requests_by_endpoint([EP], limit=2)]
    assert [i.request_id for i in seen] == sent[::-1]
    calls = [u for u in counting.urls if u.path.endswith("by-endpoint")]
    assert len(calls) == 3 and "cursor" in calls[2].params  # 2 + 2 + 1
    first = seen[0]
    assert isinstance(first, RequestItem) and first.status_code == 200
    assert isinstance(first.ended_at, datetime) and first.ended_at.tzinfo is not None
    assert first.reached_fal is not None and first.reached_fal <= first.ended_at
    assert first.json_input is None  # payloads only when asked


async def test_payloads_come_parsed_and_stay_out_of_repr(emulator: Any) -> None:
    http, _, clock = emulator
    key = "sk-user-openai-key-0123456789"
    (rid,) = await submit_some(http, clock, 1, openai_api_key=key)
    (item,) = [i async for i in client(http).requests_by_endpoint([EP], payloads=True)]
    assert item.request_id == rid and item.json_input is not None
    assert item.json_input["openai_api_key"] == key  # fal stores the input as sent...
    assert key not in repr(item)  # ...and the item never prints it
    assert item.json_output["images"][0]["url"].startswith("http://emulator/media/")


async def test_billing_asks_50_request_ids_a_call(emulator: Any) -> None:
    http, counting, clock = emulator
    billed = await submit_some(http, clock, 3)
    unknown = [f"00000000-0000-0000-0000-{i:012d}" for i in range(117)]
    start = datetime.now() - timedelta(days=1)  # naive: taken as UTC
    events = [
        e
        async for e in client(http, ADMIN).billing_events(
            request_ids=[*unknown[:60], *billed, *unknown[60:]],
            start=start,
            end=datetime.now(UTC) + timedelta(days=1),
        )
    ]
    assert sorted(e.request_id for e in events) == sorted(billed)
    assert all(isinstance(e, BillingEvent) and e.cost_usd == pytest.approx(0.01) for e in events)
    calls = [u for u in counting.urls if u.path.endswith("billing-events")]
    assert [len(u.params["request_id"].split(",")) for u in calls] == [50, 50, 20]
    assert all(u.params["start"] == start.replace(tzinfo=UTC).isoformat() for u in calls)


async def test_an_empty_list_of_request_ids_asks_nothing(emulator: Any) -> None:
    http, counting, _ = emulator
    assert [e async for e in client(http, ADMIN).billing_events(request_ids=[])] == []
    assert counting.urls == []


async def test_billing_without_an_admin_key_says_so(emulator: Any) -> None:
    http, _, _ = emulator
    with pytest.raises(AdminKeyRequired, match="admin key") as caught:
        [e async for e in client(http, ORDINARY).billing_events()]
    assert "test-secret" not in str(caught.value)
    with pytest.raises(AuthError) as no_key:  # no key at all: not the admin-key message
        [e async for e in client(http, None).billing_events()]
    assert not isinstance(no_key.value, AdminKeyRequired) and "FAL_KEY" in str(no_key.value)


async def test_a_bad_query_is_a_final_http_error_with_fals_message(emulator: Any) -> None:
    http, counting, _ = emulator
    sleep = ZeroWait()
    with pytest.raises(QueueHTTPError) as caught:
        [i async for i in client(http, sleep=sleep).requests_by_endpoint([EP], start="later")]
    assert caught.value.status == 400 and caught.value.error_type == "validation_error"
    assert "start must be" in str(caught.value)
    assert sleep.delays == [] and len(counting.urls) == 1  # not tried again


def stand_in(answers: list[tuple[int, Any]], seen: list[httpx.Request]) -> httpx.AsyncClient:
    """A server that gives ``answers`` in turn (status, JSON body)."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status, body = answers.pop(0)
        headers = {"retry-after": "7"} if status == 429 else {}
        return httpx.Response(status, content=json.dumps(body).encode(), headers=headers)

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


EVENT = {"request_id": "r1", "endpoint_id": EP, "timestamp": "2026-01-01T00:00:00Z"}


async def test_429_and_500_are_tried_again_with_retry_after_honoured() -> None:
    seen: list[httpx.Request] = []
    answers = [
        (429, {"error": {"type": "rate_limited", "message": "slow down"}}),
        (500, {"error": {"type": "internal_error", "message": "oops"}}),
        (200, {"billing_events": [{**EVENT, "cost_total": 0.5}], "has_more": False}),
    ]
    sleep = ZeroWait()
    async with stand_in(answers, seen) as http:
        platform = PlatformClient(http, key=ADMIN, base_url="http://fal.test/v1", sleep=sleep)
        (event,) = [e async for e in platform.billing_events()]
    assert event.cost_usd == 0.5 and len(seen) == 3
    assert sleep.delays[0] >= 7  # the server's Retry-After is the floor


async def test_an_older_event_without_cost_total_is_priced_from_nano_usd() -> None:
    seen: list[httpx.Request] = []
    old = {**EVENT, "cost_estimate_nano_usd": 150_000_000}
    answers = [(200, {"billing_events": [old], "next_cursor": None, "has_more": False})]
    async with stand_in(answers, seen) as http:
        platform = PlatformClient(http, key=ADMIN, base_url="http://fal.test/v1")
        (event,) = [e async for e in platform.billing_events(endpoint_id=EP)]
    assert event.cost_usd == pytest.approx(0.15)
    assert (
        seen[0].url.path == "/v1/models/billing-events" and seen[0].url.params["endpoint_id"] == EP
    )
    assert seen[0].headers["authorization"] == ADMIN.header


@pytest.mark.parametrize(
    "body",
    [
        {"billing_events": [{"request_id": "r1"}], "has_more": False},  # no cost at all
        {"events": [], "has_more": False},  # not the documented list
        {"billing_events": [{"cost_total": 1.0}], "has_more": False},  # no request id
    ],
)
async def test_an_answer_it_cannot_read_is_a_protocol_error(body: dict[str, Any]) -> None:
    async with stand_in([(200, body)], []) as http:
        platform = PlatformClient(http, key=ADMIN, base_url="http://fal.test/v1")
        with pytest.raises(ProtocolError):
            [e async for e in platform.billing_events()]


async def test_a_server_that_repeats_its_cursor_is_not_followed_forever() -> None:
    page: Callable[[], tuple[int, Any]] = lambda: (  # noqa: E731
        200,
        {"items": [], "next_cursor": "same", "has_more": True},
    )
    async with stand_in([page(), page(), page()], []) as http:
        platform = PlatformClient(http, key=ORDINARY, base_url="http://fal.test/v1")
        with pytest.raises(ProtocolError, match="same cursor"):
            [i async for i in platform.requests_by_endpoint([EP])]


async def test_the_key_never_reaches_an_error_message() -> None:
    echo = {"error": {"type": "bad", "message": f"unknown key {ADMIN.reveal()}"}}
    async with stand_in([(400, echo)], []) as http:
        platform = PlatformClient(http, key=ADMIN, base_url="http://fal.test/v1")
        with pytest.raises(QueueHTTPError) as caught:
            [e async for e in platform.billing_events()]
    assert ADMIN.reveal() not in str(caught.value) and "***" in str(caught.value)
