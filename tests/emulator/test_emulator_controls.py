"""fal's platform headers as the emulator honours them: priority lanes, the start timeout under
its new name, media expiry, fallbacks, and every control header counted per value."""

from __future__ import annotations

import json

from conftest import MakeClient
from emu_helpers import T2I, FakeClock, stats, submit

LOW = {"prompt": "a red fox", "quality": "low", "image_size": "square_hd"}
HIGH = {**LOW, "quality": "high"}  # ~30 s: holds the only slot


async def _post(client: object, body: dict[str, object], **headers: str) -> dict[str, object]:
    r = await client.post(T2I, json=body, headers=headers)  # type: ignore[attr-defined]
    assert r.status_code == 200, r.text
    data: dict[str, object] = r.json()
    return data


async def _status(client: object, h: dict[str, object]) -> dict[str, object]:
    r = await client.get(h["status_url"])  # type: ignore[attr-defined]
    data: dict[str, object] = r.json()
    return data


async def test_normal_requests_start_before_low_ones_fifo_within_each(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client, _ = await make_client(concurrency_limit=1, time_scale=1.0)
    await submit(client, HIGH)  # takes the slot
    low1 = await _post(client, {**LOW, "prompt": "l1"}, **{"X-Fal-Queue-Priority": "low"})
    norm1 = await _post(client, {**LOW, "prompt": "n1"})
    low2 = await _post(client, {**LOW, "prompt": "l2"}, **{"X-Fal-Queue-Priority": "low"})
    norm2 = await _post(client, {**LOW, "prompt": "n2"}, **{"X-Fal-Queue-Priority": "normal"})
    order = [norm1, norm2, low1, low2]
    # Positions count every normal request ahead of a low one, whenever it came.
    assert [(await _status(client, h))["queue_position"] for h in order] == [0, 1, 2, 3]
    started: list[dict[str, object]] = []
    for _ in range(40):  # each low-quality request takes ~4 s; one slot
        clock.advance(2)
        for h in order:
            if h not in started and (await _status(client, h))["status"] != "IN_QUEUE":
                started.append(h)
    assert started == order
    s = await stats(client)
    assert s["control_headers"]["x-fal-queue-priority"] == {"low": 2, "normal": 1}


async def test_the_new_start_timeout_header_wins_over_the_old_one(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client, _ = await make_client(concurrency_limit=1, time_scale=1.0)
    await submit(client, HIGH)
    both = {"X-Fal-Request-Start-Timeout": "5", "X-Fal-Request-Timeout": "500"}
    h = await _post(client, LOW, **both)
    old_only = await _post(client, {**LOW, "prompt": "b"}, **{"X-Fal-Request-Timeout": "5"})
    clock.advance(6)
    for handle in (h, old_only):
        done = await _status(client, handle)
        assert (done["status"], done["error_type"]) == ("COMPLETED", "request_timeout")
        res = await client.get(str(handle["response_url"]))
        assert res.status_code == 504
        assert res.headers["x-fal-request-timeout-type"] == "user"


async def test_generated_images_expire_as_the_lifecycle_header_asks(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client, _ = await make_client(time_scale=1.0, retention_scale=1.0)
    lifecycle = json.dumps({"expiration_duration_seconds": 600})
    short = await _post(client, LOW, **{"X-Fal-Object-Lifecycle-Preference": lifecycle})
    default = await _post(client, {**LOW, "prompt": "kept"})
    clock.advance(30)  # both done (~4 s each)
    urls = []
    for h in (short, default):
        (image,) = (await client.get(str(h["response_url"]))).json()["images"]
        urls.append(image["url"])
        assert (await client.get(image["url"])).status_code == 200
    clock.advance(600)  # past the short one's expiry, counted from its completion
    assert (await client.get(urls[0])).status_code == 404
    assert (await client.get(urls[1])).status_code == 200  # fal's default: days
    s = await stats(client)
    assert s["control_headers"]["x-fal-object-lifecycle-preference"] == {lifecycle: 1}


async def test_a_fallback_says_who_answered_unless_the_request_disables_it(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client, _ = await make_client(time_scale=0.0, faults="fallback=1")
    rerouted = await _post(client, LOW)
    kept = await _post(client, {**LOW, "prompt": "b"}, **{"x-fal-disable-fallbacks": "true"})
    res = await client.get(str(rerouted["response_url"]))
    assert res.headers["x-fal-fallback-endpoint"] == "emulator/fallback"
    res = await client.get(str(kept["response_url"]))
    assert res.status_code == 200 and "x-fal-fallback-endpoint" not in res.headers
    s = await stats(client)
    assert (s["fallbacks_used"], s["fallbacks_disabled"]) == (1, 1)
    assert s["control_headers"]["x-fal-disable-fallbacks"] == {"true": 1}


async def test_store_io_and_hint_are_counted_per_value(make_client: MakeClient) -> None:
    client, _ = await make_client(time_scale=0.0)
    await _post(client, LOW, **{"X-Fal-Store-IO": "0", "X-Fal-Runner-Hint": "r1"})
    await _post(client, {**LOW, "prompt": "b"}, **{"X-Fal-Store-IO": "0"})
    s = await stats(client)
    assert s["control_headers"]["x-fal-store-io"] == {"0": 2}
    assert s["control_headers"]["x-fal-runner-hint"] == {"r1": 1}
