"""fal's platform API in the emulator: the request history (/v1/models/requests/by-endpoint)
and the billing events (/v1/models/billing-events), on the fake clock."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from conftest import MakeClient
from emu_helpers import T2I, FakeClock, stats, submit

LOW = {"prompt": "a red fox", "quality": "low", "image_size": "square_hd"}
HIGH = {"prompt": "a snowy owl", "quality": "high", "image_size": "landscape_4_3"}
EP = "openai/gpt-image-2"
HISTORY = "/v1/models/requests/by-endpoint"
BILLING = "/v1/models/billing-events"
ADMIN = {"Authorization": "Key admin-test"}


async def history(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    params.setdefault("endpoint_id", EP)
    r = await client.get(HISTORY, params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def every_item(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    while True:
        page = await history(client, **params)
        items += page["items"]
        assert page["has_more"] is (page["next_cursor"] is not None)
        if not page["has_more"]:
            return items
        params = {**params, "cursor": page["next_cursor"]}


async def test_only_ended_requests_are_listed(make_client: MakeClient, clock: FakeClock) -> None:
    client, _ = await make_client(time_scale=1.0)
    h = await submit(client, LOW)
    clock.advance(1.0)
    assert (await history(client))["items"] == []  # still running: not listed yet
    clock.advance(60.0)
    (item,) = (await history(client))["items"]
    assert item["request_id"] == h["request_id"] and item["endpoint_id"] == EP
    assert item["status_code"] == 200 and item["duration"] > 0
    assert item["sent_at"] <= item["started_at"] < item["ended_at"]
    assert "json_input" not in item  # payloads only with expand=payloads


async def test_the_history_outlives_the_queues_result(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client, _ = await make_client(time_scale=0.001, result_ttl_s=5.0)
    h = await submit(client, {**LOW, "seed": 3})
    clock.advance(1.0)
    result = (await client.get(h["response_url"])).json()
    clock.advance(10.0)
    assert (await client.get(h["response_url"])).status_code == 404  # the queue forgot it
    (item,) = (await history(client, expand="payloads"))["items"]
    assert item["json_input"] == {**LOW, "seed": 3}
    assert item["json_output"] == result  # image URLs included
    assert (await client.get(item["json_output"]["images"][0]["url"])).status_code == 200


async def test_pages_follow_cursors_without_repeats_when_newer_requests_end(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client, _ = await make_client(time_scale=0.001)
    sent = []
    for i in range(7):
        sent.append((await submit(client, {**LOW, "prompt": f"p{i}"}))["request_id"])
        clock.advance(1.0)  # each ends before the next is sent: distinct end times
    first = await history(client, limit=3)
    assert [i["request_id"] for i in first["items"]] == sent[::-1][:3]  # newest end first
    assert first["has_more"] is True
    late = (await submit(client, {**LOW, "prompt": "late"}))["request_id"]
    clock.advance(1.0)  # ends between two pages: it belongs before the first, not in the next
    rest = await every_item(client, limit=3, cursor=first["next_cursor"])
    assert [i["request_id"] for i in rest] == sent[::-1][3:]
    assert late not in {i["request_id"] for i in first["items"] + rest}


async def test_filters_endpoint_status_request_id_and_window(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client, _ = await make_client(time_scale=0.001)
    ok = (await submit(client, LOW))["request_id"]
    bad = (await submit(client, {**LOW, "quality": "ultra"}))["request_id"]  # 422 at result
    edit_id = "openai/gpt-image-2/edit"
    other = (await submit(client, {"prompt": "x"}, path="/fal-ai/other-model"))["request_id"]
    clock.advance(1.0)
    assert {i["request_id"] for i in await every_item(client)} == {ok, bad}
    both = await every_item(client, endpoint_id=f"{EP},fal-ai/other-model")
    assert {i["request_id"] for i in both} == {ok, bad, other}
    repeated = await every_item(client, endpoint_id=[EP, edit_id, "fal-ai/other-model"])
    assert {i["request_id"] for i in repeated} == {ok, bad, other}
    assert [i["request_id"] for i in await every_item(client, status="success")] == [ok]
    assert [i["request_id"] for i in await every_item(client, status="user_error")] == [bad]
    assert await every_item(client, status="error") == []
    assert [i["request_id"] for i in await every_item(client, request_id=bad)] == [bad]
    newest, oldest = await every_item(client)
    assert await every_item(client, end=oldest["ended_at"]) == []  # end is exclusive
    assert await every_item(client, start=newest["ended_at"]) == [newest]  # start is not
    assert await every_item(client, start="2001-01-01", end="2001-01-02") == []


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({}, "endpoint_id"),
        ({"endpoint_id": ",".join(f"a/b{i}" for i in range(51))}, "endpoint_id"),
        ({"endpoint_id": EP, "limit": "0"}, "limit"),
        ({"endpoint_id": EP, "limit": "101"}, "limit"),
        ({"endpoint_id": EP, "status": "failed"}, "status"),
        ({"endpoint_id": EP, "request_id": "not-a-uuid"}, "request_id"),
        ({"endpoint_id": EP, "cursor": "bm9wZQ"}, "cursor"),
        ({"endpoint_id": EP, "sort_by": "cost"}, "sort_by"),
        ({"endpoint_id": EP, "start": "yesterday"}, "start"),
        ({"endpoint_id": EP, "start": "2026-01-02", "end": "2026-01-01"}, "before"),
        ({"endpoint_id": EP, "expand": "logs"}, "expand"),
    ],
)
async def test_a_bad_query_is_400_in_fals_error_shape(
    make_client: MakeClient, params: dict[str, str], says: str
) -> None:
    client, _ = await make_client()
    r = await client.get(HISTORY, params=params)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "validation_error"
    assert says in r.json()["error"]["message"]


async def test_a_cursor_is_bound_to_its_sort(make_client: MakeClient, clock: FakeClock) -> None:
    client, _ = await make_client(time_scale=0.001)
    for i in range(3):
        await submit(client, {**LOW, "prompt": f"p{i}"})
    clock.advance(1.0)
    page = await history(client, limit=1)
    r = await client.get(
        HISTORY, params={"endpoint_id": EP, "cursor": page["next_cursor"], "sort_by": "duration"}
    )
    assert r.status_code == 400
    by_duration = await every_item(client, sort_by="duration", limit=2)
    durations = [i["duration"] for i in by_duration]
    assert len(durations) == 3 and durations == sorted(durations, reverse=True)


async def test_no_key_is_401_in_fals_error_shape(make_client: MakeClient) -> None:
    client, _ = await make_client()
    for path in (HISTORY, BILLING):
        r = await client.get(path, params={"endpoint_id": EP}, headers={"Authorization": ""})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authorization_error"


async def test_billing_needs_an_admin_key(make_client: MakeClient) -> None:
    client, _ = await make_client()
    r = await client.get(BILLING)  # the fixture's key: an ordinary one
    assert r.status_code == 403
    assert r.json() == {
        "error": {"type": "forbidden", "message": "This endpoint requires an admin API key"}
    }
    assert (await client.get(BILLING, headers=ADMIN)).status_code == 200


async def billing(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while True:
        r = await client.get(BILLING, params=params, headers=ADMIN)
        assert r.status_code == 200, r.text
        body = r.json()
        events += body["billing_events"]
        if not body["has_more"]:
            return events
        params = {**params, "cursor": body["next_cursor"]}


async def test_only_successful_completions_are_billed_at_the_published_price(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client, _ = await make_client(time_scale=0.001, faults="content_policy=0")
    low = (await submit(client, {**LOW, "num_images": 2}))["request_id"]
    high = (await submit(client, HIGH))["request_id"]
    await submit(client, {**LOW, "quality": "ultra"})  # invalid: 422, not billed
    clock.advance(1.0)
    queued_then_cancelled = await submit(client, LOW)
    await client.put(queued_then_cancelled["cancel_url"])  # cancelled: not billed
    clock.advance(1.0)
    events = await billing(client, limit=1)  # one per page: the cursor is followed
    assert {e["request_id"] for e in events} == {low, high}
    by_id = {e["request_id"]: e for e in events}
    assert by_id[low]["output_units"] == 2 and by_id[low]["unit_price"] == 0.01
    assert by_id[low]["cost_total"] == pytest.approx(0.02)
    assert by_id[high]["cost_total"] == pytest.approx(0.15)  # 1024x768 high
    assert by_id[high]["cost_estimate_nano_usd"] == 150_000_000
    assert by_id[low]["endpoint_id"] == EP
    s = await stats(client)
    assert s["billed_requests"] == 2 and s["billed_usd"] == pytest.approx(0.17)
    assert s["requests_ended"] == 4


async def test_billing_filters_and_bounds(make_client: MakeClient, clock: FakeClock) -> None:
    client, _ = await make_client(time_scale=0.001)
    a = (await submit(client, LOW))["request_id"]
    b = (await submit(client, {"prompt": "x"}, path="/fal-ai/other-model"))["request_id"]
    clock.advance(1.0)
    assert [e["request_id"] for e in await billing(client, request_id=a)] == [a]
    assert [e["request_id"] for e in await billing(client, endpoint_id="fal-ai/other-model")] == [b]
    assert {e["request_id"] for e in await billing(client, request_id=f"{a},{b}")} == {a, b}
    assert await billing(client, start="2001-01-01", end="2001-01-02") == []
    too_long = {"start": "2026-01-01", "end": "2026-06-01"}
    too_many = {"request_id": ",".join(f"r{i}" for i in range(51))}
    for params in (too_long, too_many, {"limit": "500"}):
        r = await client.get(BILLING, params=params, headers=ADMIN)
        assert r.status_code == 400 and "error" in r.json()


async def test_no_store_io_keeps_the_payloads_out_of_the_history(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client, _ = await make_client(time_scale=0.001)
    r = await client.post(T2I, json=LOW, headers={"X-Fal-Store-IO": "0"})
    assert r.status_code == 200
    clock.advance(1.0)
    (item,) = (await history(client, expand="payloads"))["items"]
    assert item["json_input"] is None and item["json_output"] is None
    assert item["status_code"] == 200
