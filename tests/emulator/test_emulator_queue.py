"""The queue as a client sees it: submit, status, result, cancel, limits, expiry."""

from __future__ import annotations

import pytest
from conftest import MakeClient
from emu_helpers import T2I, FakeClock, stats, submit

LOW = {"prompt": "a red fox", "quality": "low", "image_size": "square_hd"}


async def test_submit_answers_fal_shape_with_urls_from_the_request_host(
    make_client: MakeClient,
) -> None:
    client, _ = await make_client()
    body = await submit(client, LOW, path=f"{T2I}/edit")  # sub-path: not in the handle URLs
    rid = body["request_id"]
    root = f"http://emulator/openai/gpt-image-2/requests/{rid}"
    assert body == {
        "status": "IN_QUEUE",
        "request_id": rid,
        "gateway_request_id": rid,
        "response_url": root,
        "status_url": f"{root}/status",
        "cancel_url": f"{root}/cancel",
        "queue_position": 0,
    }


async def test_public_url_overrides_the_request_host(make_client: MakeClient) -> None:
    client, _ = await make_client(public_url="https://fal.example/")
    body = await submit(client, LOW)
    assert body["status_url"].startswith("https://fal.example/openai/gpt-image-2/requests/")


async def test_request_runs_then_completes_with_a_real_image(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client, _ = await make_client()
    h = await submit(client, LOW)
    r = await client.get(h["status_url"])
    assert r.status_code == 202
    assert r.json()["status"] == "IN_PROGRESS"
    assert r.json()["logs"] is None
    clock.advance(60)  # low quality at 1 MP is about 4 s
    r = await client.get(h["status_url"], params={"logs": "1"})
    assert r.status_code == 200
    done = r.json()
    assert done["status"] == "COMPLETED"
    assert [entry["level"] for entry in done["logs"]] == ["INFO", "INFO"]
    assert 3.0 <= done["metrics"]["inference_time"] <= 5.0
    assert "error" not in done
    res = await client.get(h["response_url"])
    assert res.status_code == 200
    assert res.headers["x-fal-request-id"] == h["request_id"]
    (image,) = res.json()["images"]
    assert (image["width"], image["height"], image["content_type"]) == (1024, 1024, "image/png")
    media = await client.get(image["url"])
    assert media.status_code == 200
    assert media.content.startswith(b"\x89PNG")
    assert len(media.content) == image["file_size"]


@pytest.mark.parametrize("value", ["true", "1", "TRUE"])
async def test_logs_true_spellings(make_client: MakeClient, value: str) -> None:
    client, _ = await make_client(time_scale=0)
    h = await submit(client, LOW)
    r = await client.get(h["status_url"], params={"logs": value})
    assert isinstance(r.json()["logs"], list)


@pytest.mark.parametrize("value", ["false", "0"])
async def test_logs_false_spellings(make_client: MakeClient, value: str) -> None:
    client, _ = await make_client(time_scale=0)
    h = await submit(client, LOW)
    r = await client.get(h["status_url"], params={"logs": value})
    assert r.json()["logs"] is None


async def test_concurrency_limit_and_fifo_positions(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client, _ = await make_client(concurrency_limit=2)
    handles = [await submit(client, {**LOW, "prompt": f"p{i}"}) for i in range(5)]
    assert [h["queue_position"] for h in handles] == [0, 0, 0, 1, 2]
    states = [(await client.get(h["status_url"])).json() for h in handles]
    assert [s["status"] for s in states] == ["IN_PROGRESS"] * 2 + ["IN_QUEUE"] * 3
    assert [s.get("queue_position") for s in states[2:]] == [0, 1, 2]
    s = await stats(client)
    assert (s["in_progress"], s["queue_length"], s["peak_in_progress"]) == (2, 3, 2)
    assert s["peak_queue_length"] == 3
    clock.advance(3600 * 0.09)  # long enough for all five, well before expiry
    states = [(await client.get(h["status_url"])).json() for h in handles]
    assert all(s["status"] == "COMPLETED" for s in states)
    assert (await stats(client))["peak_in_progress"] == 2


async def test_queued_request_starts_when_a_slot_frees_not_when_polled(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client, _ = await make_client(concurrency_limit=1)
    first = await submit(client, LOW)
    second = await submit(client, {**LOW, "prompt": "second"})
    clock.advance(1000)  # both have long finished, with no poll in between
    s1 = (await client.get(first["status_url"])).json()
    s2 = (await client.get(second["status_url"])).json()
    # The second started the moment the first ended, so it ran for its own run time only.
    assert s2["status"] == "COMPLETED"
    assert s2["metrics"]["inference_time"] < 6.0
    assert s1["metrics"]["inference_time"] < 6.0


async def test_time_scale_zero_completes_at_once(make_client: MakeClient) -> None:
    client, _ = await make_client(time_scale=0)
    h = await submit(client, {"prompt": "x", "quality": "high"})
    assert (await client.get(h["status_url"])).json()["status"] == "COMPLETED"


async def test_time_scale_scales_run_time(make_client: MakeClient, clock: FakeClock) -> None:
    client, _ = await make_client(time_scale=0.01)
    h = await submit(client, {"prompt": "x", "quality": "high", "image_size": "square_hd"})
    clock.advance(0.1)
    assert (await client.get(h["status_url"])).json()["status"] == "IN_PROGRESS"
    clock.advance(0.3)  # high at 1 MP is 30 s ± 25 %; scaled: ≤ 0.375 s
    assert (await client.get(h["status_url"])).json()["status"] == "COMPLETED"


async def test_result_expires_after_an_hour(make_client: MakeClient, clock: FakeClock) -> None:
    client, _ = await make_client()
    h = await submit(client, LOW)
    clock.advance(10)
    assert (await client.get(h["response_url"])).status_code == 200
    assert (await client.get(h["response_url"])).status_code == 200  # repeatable
    clock.advance(3590 - 5)
    assert (await client.get(h["response_url"])).status_code == 200
    clock.advance(3600)
    r = await client.get(h["response_url"])
    assert r.status_code == 404
    assert "expired" in r.json()["detail"]
    assert (await client.get(h["status_url"])).status_code == 404


async def test_large_results_expire_after_six_minutes(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client, _ = await make_client()
    h = await submit(client, {**LOW, "sync_mode": True})  # data URIs: far over 10 KB
    clock.advance(10)
    res = await client.get(h["response_url"])
    assert res.json()["images"][0]["url"].startswith("data:image/png;base64,")
    clock.advance(361)
    assert (await client.get(h["response_url"])).status_code == 404


async def test_cancel_queued_running_and_done(make_client: MakeClient, clock: FakeClock) -> None:
    client, _ = await make_client(concurrency_limit=1)
    running = await submit(client, LOW)
    queued = await submit(client, {**LOW, "prompt": "queued"})
    behind = await submit(client, {**LOW, "prompt": "behind"})
    assert (await client.get(behind["status_url"])).json()["queue_position"] == 1

    r = await client.put(queued["cancel_url"])
    assert (r.status_code, r.json()) == (202, {"status": "CANCELLATION_REQUESTED"})
    assert (await client.get(behind["status_url"])).json()["queue_position"] == 0
    cancelled = (await client.get(queued["status_url"])).json()
    assert (cancelled["status"], cancelled["error_type"]) == ("COMPLETED", "client_cancelled")

    r = await client.put(running["cancel_url"])
    assert r.status_code == 202
    # The slot freed at once: the next in line is running now.
    assert (await client.get(behind["status_url"])).json()["status"] == "IN_PROGRESS"
    res = await client.get(running["response_url"])
    assert res.status_code == 499
    assert res.json()["error_type"] == "client_cancelled"

    clock.advance(60)
    r = await client.put(behind["cancel_url"])
    assert (r.status_code, r.json()) == (400, {"status": "ALREADY_COMPLETED"})
    r = await client.put("/openai/gpt-image-2/requests/nope/cancel")
    assert (r.status_code, r.json()) == (404, {"status": "NOT_FOUND"})
    assert (await stats(client))["cancel_requests"] == 4


async def test_invalid_input_is_accepted_then_fails_with_a_detail_list(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client, _ = await make_client()
    h = await submit(client, {"prompt": "", "image_size": {"width": 1000, "height": 1024}})
    clock.advance(1)
    status = (await client.get(h["status_url"])).json()
    assert status["status"] == "COMPLETED"
    assert status["error_type"] == "validation_error"
    r = await client.get(h["response_url"])
    assert r.status_code == 422
    locs = [d["loc"] for d in r.json()["detail"]]
    assert ["body", "prompt"] in locs
    assert ["body", "image_size", "width"] in locs
    assert all(set(d) >= {"loc", "msg", "type"} for d in r.json()["detail"])


async def test_result_before_completion_is_a_4xx_with_detail(make_client: MakeClient) -> None:
    client, _ = await make_client()
    h = await submit(client, LOW)
    r = await client.get(h["response_url"])
    assert r.status_code == 400
    assert "IN_PROGRESS" in r.json()["detail"]


async def test_missing_or_malformed_key_is_401_and_counted(make_client: MakeClient) -> None:
    client, _ = await make_client(time_scale=0)
    h = await submit(client, LOW)
    bare = {"Authorization": ""}
    assert (await client.post(T2I, json=LOW, headers=bare)).status_code == 401
    assert (
        await client.post(T2I, json=LOW, headers={"Authorization": "Basic x"})
    ).status_code == 401
    assert (await client.get(h["status_url"], headers=bare)).status_code == 401
    assert (await client.get(h["response_url"], headers=bare)).status_code == 401
    r = await client.post(T2I, json=LOW, headers={"Authorization": "Bearer jwt.token.here"})
    assert r.status_code == 200
    s = await stats(client)
    assert s["unauthorized"] == 4
    assert s["submits_accepted"] == 2


async def test_stats_count_identical_submits(make_client: MakeClient) -> None:
    client, _ = await make_client(time_scale=0)
    await submit(client, {"prompt": "same", "quality": "low"})
    await submit(client, {"quality": "low", "prompt": "same"})  # same input, other key order
    await submit(client, {"prompt": "other", "quality": "low"})
    s = await stats(client)
    assert sorted(s["submits_per_input"].values()) == [1, 2]
    assert s["duplicate_submits"] == 1


async def test_namespaced_and_unknown_paths(make_client: MakeClient) -> None:
    client, _ = await make_client(time_scale=0)
    h = await submit(client, {"prompt": "x"}, path="/workflows/me/flow/run")
    assert "/workflows/me/flow/requests/" in h["status_url"]
    assert (await client.get(h["status_url"])).status_code == 200
    assert (await client.post("/onlyone", json={})).status_code == 404
    r = await client.post(T2I, content=b"not json")
    assert r.status_code == 422


async def test_non_gpt_endpoint_still_gets_images(make_client: MakeClient) -> None:
    client, _ = await make_client(time_scale=0)
    h = await submit(client, {"prompt": "anything", "whatever": 1}, path="/fal-ai/other-model")
    res = await client.get(h["response_url"])
    assert res.status_code == 200
    assert len(res.json()["images"]) == 1


async def test_start_timeout_fails_a_request_still_queued(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client, _ = await make_client(concurrency_limit=1)
    blocker = await submit(client, {**LOW, "quality": "high"})  # ~30 s
    r = await client.post(T2I, json=LOW, headers={"X-Fal-Request-Timeout": "5.0"})
    late = r.json()
    behind = await submit(client, {**LOW, "prompt": "behind"})
    clock.advance(4)
    assert (await client.get(late["status_url"])).json()["status"] == "IN_QUEUE"
    clock.advance(2)
    status = (await client.get(late["status_url"])).json()
    assert (status["status"], status["error_type"]) == ("COMPLETED", "request_timeout")
    assert (await client.get(behind["status_url"])).json()["queue_position"] == 0
    res = await client.get(late["response_url"])
    assert res.status_code == 504
    assert res.headers["x-fal-request-timeout-type"] == "user"
    # A request that starts in time is not affected by its start timeout.
    clock.advance(100)
    assert (await client.get(blocker["response_url"])).status_code == 200
    assert (await client.get(behind["response_url"])).status_code == 200


async def test_fal_max_queue_length_refuses_with_429(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client, _ = await make_client(concurrency_limit=1)
    for i in range(3):  # one running, two queued
        await submit(client, {**LOW, "prompt": f"p{i}"})
    r = await client.post(T2I, json=LOW, params={"fal_max_queue_length": "2"})
    assert r.status_code == 429
    clock.advance(6)  # the first finished and the second started: one left in the queue
    r = await client.post(T2I, json=LOW, params={"fal_max_queue_length": "2"})
    assert r.status_code == 200
    s = await stats(client)
    assert (s["submits_refused_queue_length"], s["submits_accepted"]) == (1, 4)


async def test_result_ttl_sets_the_queues_result_lifetime(
    make_client: MakeClient, clock: FakeClock
) -> None:
    """result_ttl_s: every result (a large one too) is kept that many clock seconds."""
    client, _ = await make_client(time_scale=0.001, result_ttl_s=30.0)
    small = await submit(client, LOW)
    large = await submit(client, {**LOW, "sync_mode": True})
    clock.advance(1.0)
    assert (await client.get(small["response_url"])).status_code == 200
    clock.advance(28.0)
    assert (await client.get(large["response_url"])).status_code == 200  # past fal's 6 min x 0.001
    clock.advance(2.0)
    for h in (small, large):
        r = await client.get(h["response_url"])
        assert r.status_code == 404 and "expired" in r.json()["detail"]
