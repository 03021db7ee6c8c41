"""BYOK requests in the emulator: usage on success, 422s for a bad key, the echoed input."""

from __future__ import annotations

import io
from typing import Any

import pytest
from conftest import MakeClient
from emu_helpers import FakeClock, stats, submit
from PIL import Image

from batchgen.fal import data_uri
from batchgen.planning.pricing import token_cost

KEY = "sk-test-0123456789abcdef"
BYOK_ID = "/openai/gpt-image-2/byok"


async def outcome(client: Any, clock: FakeClock, body: dict[str, Any], path: str) -> Any:
    sub = await submit(client, body, path)
    clock.advance(1.0)  # at time_scale 0.001 every request has finished, none has expired
    return await client.get(sub["response_url"])


async def test_a_request_carrying_a_key_gets_usage_priced_near_the_estimate(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client, _ = await make_client(time_scale=0.001)
    body = {"prompt": "a red fox in the snow", "image_size": "landscape_4_3", "quality": "high"}
    r = await outcome(client, clock, {**body, "openai_api_key": KEY}, "/openai/gpt-image-2")
    assert r.status_code == 200
    usage = r.json()["usage"]
    # 1024x768 high is $0.15 in fal's table: 5,000 image tokens at $30 per million.
    assert usage["output_tokens"] == 5000
    assert usage["input_tokens_details"] == {"text_tokens": 6, "image_tokens": 0}
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert token_cost(usage) == pytest.approx(0.15 + 6 * 5e-6)
    # the same request again: the same counts (deterministic, no seed involved)
    again = await outcome(client, clock, {**body, "openai_api_key": KEY}, "/openai/gpt-image-2")
    assert again.json()["usage"] == usage


async def test_usage_grows_with_images_and_reference_inputs(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client, _ = await make_client(time_scale=0.001)
    png = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(png, "PNG")
    ref = data_uri(png.getvalue(), "image/png")  # the edit endpoint takes only what it can read
    body = {
        "prompt": "x" * 40,
        "image_urls": [ref, ref],
        "image_size": "square_hd",
        "quality": "low",
        "num_images": 3,
        "openai_api_key": KEY,
    }
    r = await outcome(client, clock, body, "/openai/gpt-image-2/edit")
    usage = r.json()["usage"]
    assert usage["output_tokens"] == 3 * 333  # $0.01 per low image
    assert usage["input_tokens_details"] == {"text_tokens": 10, "image_tokens": 2 * 765}


async def test_plain_requests_carry_no_usage(make_client: MakeClient, clock: FakeClock) -> None:
    client, _ = await make_client(time_scale=0.001)
    r = await outcome(client, clock, {"prompt": "a fox"}, "/openai/gpt-image-2")
    assert r.status_code == 200 and "usage" not in r.json()


@pytest.mark.parametrize("key", [None, "", "   "])
async def test_a_byok_endpoint_without_a_key_is_a_422_detail_list(
    make_client: MakeClient, clock: FakeClock, key: str | None
) -> None:
    client, _ = await make_client(time_scale=0.001)
    body: dict[str, Any] = {"prompt": "a fox"}
    if key is not None:
        body["openai_api_key"] = key
    r = await outcome(client, clock, body, BYOK_ID)
    assert r.status_code == 422
    (item,) = r.json()["detail"]
    assert item["loc"] == ["body", "openai_api_key"]
    assert "required" in item["msg"]


async def test_a_byok_endpoint_follows_its_base_rules_and_echoes_the_body(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client, _ = await make_client(time_scale=0.001)
    body = {"prompt": "a fox", "quality": "ultra", "openai_api_key": KEY}
    r = await outcome(client, clock, body, BYOK_ID)
    assert r.status_code == 422
    (item,) = r.json()["detail"]
    assert item["loc"] == ["body", "quality"]
    # the worst case batchgen must survive: the key comes back inside the error body
    assert item["input"] == body
    ok = await outcome(client, clock, {**body, "quality": "low"}, BYOK_ID)
    assert ok.status_code == 200 and ok.json()["usage"]["output_tokens"] == 333


async def test_a_key_openai_would_refuse_is_quoted_back_in_full(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client, _ = await make_client(time_scale=0.001)
    r = await outcome(
        client, clock, {"prompt": "a fox", "openai_api_key": "not-a-key-123"}, BYOK_ID
    )
    assert r.status_code == 422
    assert "Incorrect API key provided: not-a-key-123" in r.text


async def test_the_stats_route_never_shows_the_key(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client, _ = await make_client(time_scale=0.001)
    await outcome(client, clock, {"prompt": "a fox", "openai_api_key": KEY}, BYOK_ID)
    s = await stats(client)
    assert s["submits_accepted"] == 1
    assert KEY not in str(s)
