"""Each fault does what a client must survive, and leaves the stats that prove it."""

from __future__ import annotations

import httpx
import pytest
from conftest import MakeClient
from emu_helpers import T2I, FakeClock, stats, submit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchgen.emulator import PROFILES, FaultSpec, parse_faults
from batchgen.emulator.faults import EVIL_NAMES, FILE_URL, FaultDice
from batchgen.errors import UsageError

LOW = {"prompt": "a lighthouse", "quality": "low", "image_size": "square_hd"}


def test_parse_pairs_and_profiles() -> None:
    assert parse_faults("none") == FaultSpec()
    assert parse_faults("") == FaultSpec()
    assert parse_faults("flaky") == PROFILES["flaky"]
    spec = parse_faults(
        "submit429=0.05,submitdrop=0.02,status500=0.02,runner_error=0.02,"
        "content_policy=0.01,truncate=0.02,slow_media=0.01"
    )
    assert spec == PROFILES["flaky"]
    assert parse_faults("hostile, truncate=1").truncate == 1.0
    assert parse_faults("hostile, truncate=1").submit429 == PROFILES["hostile"].submit429


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("bogus", "neither a profile"),
        ("submit429=2", "between 0 and 1"),
        ("submit429=x", "not a number"),
        ("nosuch=0.1", "unknown fault 'nosuch'"),
        ("submit429=0.1,flaky", "neither a profile"),
    ],
)
def test_parse_errors_name_the_bad_part(text: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        parse_faults(text)


def test_dice_are_seeded_and_independent_per_kind() -> None:
    a = FaultDice(FaultSpec(submit429=0.5, truncate=0.5), seed=7)
    b = FaultDice(FaultSpec(submit429=0.5), seed=7)
    rolls_a = [a.roll("submit429") for _ in range(50)]
    for _ in range(50):
        a.roll("truncate")
    assert rolls_a == [b.roll("submit429") for _ in range(50)]
    assert 10 < sum(rolls_a) < 40
    c = FaultDice(FaultSpec(submit429=0.5), seed=8)
    assert rolls_a != [c.roll("submit429") for _ in range(50)]


async def test_submit429_refuses_without_creating_a_job(make_client: MakeClient) -> None:
    client, _ = await make_client(faults="submit429=1")
    r = await client.post(T2I, json=LOW)
    assert r.status_code == 429
    s = await stats(client)
    assert (s["submits_accepted"], s["submits_refused_429"]) == (0, 1)


async def test_submit503_is_an_nginx_ingress_error(make_client: MakeClient) -> None:
    client, _ = await make_client(faults="submit503=1")
    r = await client.post(T2I, json=LOW)
    assert r.status_code == 503
    assert "nginx" in r.text
    assert "x-fal-request-id" not in r.headers
    assert (await stats(client))["submits_accepted"] == 0


async def test_submitdrop_creates_the_job_then_fails_at_transport_level(
    make_client: MakeClient,
) -> None:
    client, app = await make_client(time_scale=0, faults="submitdrop=1")
    with pytest.raises(httpx.TransportError):
        await client.post(T2I, json=LOW)
    s = await stats(client)
    assert (s["submits_accepted"], s["submits_dropped"]) == (1, 1)
    (req,) = app.state.emulator.requests.values()  # the job exists and runs, paid for
    assert req.input == LOW


async def test_status500_is_plain_json(make_client: MakeClient) -> None:
    client, _ = await make_client(faults="status500=1")
    h = await submit(client, LOW)
    r = await client.get(h["status_url"])
    assert r.status_code == 500
    assert r.json() == {"detail": "Internal server error"}


async def test_status503_is_an_ingress_error(make_client: MakeClient) -> None:
    client, _ = await make_client(faults="status503=1")
    h = await submit(client, LOW)
    r = await client.get(h["status_url"])
    assert (r.status_code, "nginx" in r.text) == (503, True)


async def test_runner_error_completes_with_error_and_5xx_result(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client, _ = await make_client(faults="runner_error=1")
    h = await submit(client, LOW)
    clock.advance(60)
    status = (await client.get(h["status_url"])).json()
    assert status["status"] == "COMPLETED"
    assert status["error"] and status["error_type"]
    r = await client.get(h["response_url"])
    assert 500 <= r.status_code < 600
    assert r.json() == {"detail": status["error"], "error_type": status["error_type"]}
    assert r.headers["x-fal-error-type"] == status["error_type"]


async def test_content_policy_is_a_422_with_its_type(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client, _ = await make_client(faults="content_policy=1")
    h = await submit(client, LOW)
    clock.advance(60)
    r = await client.get(h["response_url"])
    assert r.status_code == 422
    (item,) = r.json()["detail"]
    assert item["type"] == "content_policy_violation"
    assert item["loc"] == ["body", "prompt"]


async def test_policy_retryable_adds_the_header_to_the_refusal_only(
    make_client: MakeClient, clock: FakeClock
) -> None:
    # The header a client must not believe: a refused input is refused again.
    client, _ = await make_client(faults="content_policy=1,policy_retryable=1")
    h = await submit(client, LOW)
    clock.advance(60)
    r = await client.get(h["response_url"])
    assert (r.status_code, r.headers["x-fal-retryable"]) == (422, "true")
    assert r.json()["detail"][0]["type"] == "content_policy_violation"
    assert (await stats(client))["refusals_retryable"] == 1
    ok, _ = await make_client(time_scale=0, faults="policy_retryable=1")
    r = await ok.get((await submit(ok, LOW))["response_url"])
    assert r.status_code == 200 and "x-fal-retryable" not in r.headers


async def test_evil_name_and_file_url_tamper_with_the_result_only(
    make_client: MakeClient,
) -> None:
    client, _ = await make_client(time_scale=0, faults="evil_name=1,file_url=1")
    names, urls = [], []
    for i in range(4):
        h = await submit(client, {**LOW, "prompt": f"p{i}"})
        body = (await client.get(h["response_url"])).json()
        again = (await client.get(h["response_url"])).json()
        assert again == body  # decided once per request: every read says the same
        (image,) = body["images"]
        names.append(image["file_name"])
        urls.append(image["url"])
        assert image["width"] and image["content_type"] == "image/png"  # otherwise a result
    assert names == [*EVIL_NAMES, *EVIL_NAMES]
    assert set(urls) == {FILE_URL}
    s = await stats(client)
    assert (s["results_evil_name"], s["results_file_url"]) == (4, 4)


def test_hostile_profile_tampers_with_names_urls_and_headers() -> None:
    hostile = PROFILES["hostile"]
    assert hostile.evil_name > 0 and hostile.file_url > 0 and hostile.policy_retryable > 0


async def test_truncate_sends_fewer_bytes_than_promised(make_client: MakeClient) -> None:
    client, _ = await make_client(time_scale=0, faults="truncate=1")
    h = await submit(client, LOW)
    image = (await client.get(h["response_url"])).json()["images"][0]
    r = await client.get(image["url"])
    assert int(r.headers["content-length"]) == image["file_size"]
    assert 0 < len(r.content) < image["file_size"]
    assert (await stats(client))["media_truncated"] == 1


async def test_slow_media_trickles_over_the_injected_sleep(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client, _ = await make_client(time_scale=0, faults="slow_media=1", slow_media_s=8.0)
    h = await submit(client, LOW)
    image = (await client.get(h["response_url"])).json()["images"][0]
    before = clock()
    r = await client.get(image["url"])
    assert len(r.content) == image["file_size"]  # complete, only slow
    assert clock() - before == pytest.approx(8.0)


async def test_fault_rates_roughly_match_the_spec(make_client: MakeClient) -> None:
    client, _ = await make_client(time_scale=0, faults="submit429=0.2", seed=3)
    codes = [(await client.post(T2I, json=LOW)).status_code for _ in range(300)]
    assert 35 <= codes.count(429) <= 85
    assert codes.count(200) == (await stats(client))["submits_accepted"]


probability = st.sampled_from([0.0, 0.3, 1.0])


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    p429=probability,
    p503=probability,
    pdrop=probability,
    seed=st.integers(min_value=0, max_value=1000),
)
async def test_every_submit_is_accounted_for(
    make_client: MakeClient, p429: float, p503: float, pdrop: float, seed: int
) -> None:
    spec = FaultSpec(submit429=p429, submit503=p503, submitdrop=pdrop)
    client, app = await make_client(time_scale=0, faults=spec, seed=seed)
    answered = dropped = 0
    for i in range(12):
        try:
            r = await client.post(T2I, json={**LOW, "prompt": f"p{i}"})
        except httpx.TransportError:
            dropped += 1
        else:
            answered += r.status_code == 200
    s = await stats(client)
    refused = s["submits_refused_429"] + s["submits_refused_503"]
    assert s["submit_attempts"] == 12 == s["submits_accepted"] + refused
    assert s["submits_dropped"] == dropped
    # Every accepted job exists, whether or not its submitter heard back.
    assert len(app.state.emulator.requests) == s["submits_accepted"] == answered + dropped
