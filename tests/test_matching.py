"""The matcher (fal/matching.py): which lost submit re-attaches to which request of fal's
history. Pure: every case is data in, pairs out; the last one goes through the emulator's
history to check ``entry_of`` reads what the platform client gives."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
from hypothesis import given
from hypothesis import strategies as st

from batchgen.emulator import EmulatorConfig, create_app
from batchgen.fal import Endpoints
from batchgen.fal.auth import FalKey
from batchgen.fal.matching import (
    CLOCK_SKEW_S,
    HistoryEntry,
    LostSubmit,
    entry_of,
    input_key,
    match,
)
from batchgen.fal.platform import PlatformClient, RequestItem

FOX = input_key({"prompt": "a red fox", "quality": "low"})
OWL = input_key({"prompt": "a snowy owl", "quality": "low"})
T = 1_800_000_000.0  # an attempt's time


def entry(rid: str, key: str | None = FOX, at: float | None = T + 1) -> HistoryEntry:
    return HistoryEntry(rid, key, at)


def test_the_key_order_and_the_openai_key_do_not_change_the_input_key() -> None:
    a = {"prompt": "x", "quality": "low", "openai_api_key": "sk-one"}
    b = {"quality": "low", "prompt": "x"}
    assert input_key(a) == input_key(b)
    assert "sk-one" not in input_key(a)
    assert input_key({**b, "quality": "high"}) != input_key(b)


def test_a_lost_submit_finds_its_request_by_input() -> None:
    lost = [LostSubmit("job-fox", FOX, T), LostSubmit("job-owl", OWL, T)]
    got = match(lost, [entry("r-owl", OWL), entry("r-fox", FOX)], owned=set())
    assert got.pairs == {"job-fox": "r-fox", "job-owl": "r-owl"}
    assert got.unmatched == [] and got.spare == []


def test_identical_inputs_share_the_unowned_requests_as_a_multiset() -> None:
    """repeat: 3, two of them lost: the two unowned requests go to the two lost jobs, one
    each, and the request the third job owns is never given away."""
    lost = [LostSubmit("job-b", FOX, T), LostSubmit("job-a", FOX, T + 0.5)]
    history = [entry("r-owned", at=T + 0.2), entry("r-1", at=T + 0.1), entry("r-2", at=T + 0.6)]
    got = match(lost, history, owned={"r-owned"})
    assert got.pairs == {"job-b": "r-1", "job-a": "r-2"}  # in the order they were made
    assert sorted(got.pairs.values()) == ["r-1", "r-2"]


def test_more_lost_jobs_than_requests_leaves_some_unmatched() -> None:
    lost = [LostSubmit(f"job-{i}", FOX, T + i) for i in range(3)]
    got = match(lost, [entry("r-1", at=T + 0.5)], owned=set())
    assert got.pairs == {"job-0": "r-1"} and got.unmatched == ["job-1", "job-2"]


def test_more_requests_than_lost_jobs_leaves_spares_billed_twice() -> None:
    """A dropped submit retried once more before the folder learnt anything: two requests for
    one job; the second is a duplicate nobody collects."""
    got = match([LostSubmit("job", FOX, T)], [entry("r-1"), entry("r-2", at=T + 9)], set())
    assert got.pairs == {"job": "r-1"} and got.spare == ["r-2"]


def test_an_entry_sent_before_the_attempt_is_not_its_request() -> None:
    old = entry("r-old", at=T - CLOCK_SKEW_S - 1)  # yesterday's run of the same manifest
    within = entry("r-skewed", at=T - CLOCK_SKEW_S + 1)  # fal's clock a little behind ours
    got = match([LostSubmit("job", FOX, T)], [old], set())
    assert got.pairs == {} and got.unmatched == ["job"] and got.spare == []
    assert match([LostSubmit("job", FOX, T)], [old, within], set()).pairs == {"job": "r-skewed"}
    assert match([LostSubmit("job", FOX, T)], [within], set(), skew_s=0).pairs == {}


def test_the_time_rule_does_not_waste_a_request_on_the_wrong_job() -> None:
    """Job early can take either request, job late only the later one: both are matched."""
    lost = [LostSubmit("late", FOX, T + 500), LostSubmit("early", FOX, T)]
    history = [entry("r-late", at=T + 501), entry("r-early", at=T + 1)]
    assert match(lost, history, set()).pairs == {"early": "r-early", "late": "r-late"}


def test_entries_that_cannot_be_proved_match_nothing() -> None:
    no_input = entry("r-1", key=None)  # payloads not stored (X-Fal-Store-IO: 0)
    no_time = entry("r-2", at=None)
    got = match([LostSubmit("job", FOX, T)], [no_input, no_time], set())
    assert got.pairs == {} and got.unmatched == ["job"]


def test_an_owned_request_is_never_given_to_another_job() -> None:
    got = match([LostSubmit("job", FOX, T)], [entry("r-1")], owned={"r-1"})
    assert got.pairs == {} and got.spare == []


def test_endpoints_must_agree_when_both_are_named() -> None:
    lost = [LostSubmit("job", FOX, T, endpoint="openai/gpt-image-2/edit")]
    other = HistoryEntry("r-1", FOX, T + 1, endpoint="openai/gpt-image-2")
    same = HistoryEntry("r-2", FOX, T + 2, endpoint="openai/gpt-image-2/edit")
    assert match(lost, [other], set()).pairs == {}
    assert match(lost, [other, same], set()).pairs == {"job": "r-2"}


def test_a_job_lost_twice_takes_one_request_the_other_is_spare() -> None:
    """Its attempts may carry different inputs (a reference uploaded again has a new URL)."""
    lost = [LostSubmit("job", FOX, T), LostSubmit("job", OWL, T + 5)]
    got = match(lost, [entry("r-fox"), entry("r-owl", OWL, T + 6)], set())
    assert list(got.pairs) == ["job"] and len(got.spare) == 1


def test_the_history_listing_an_entry_twice_counts_it_once() -> None:
    lost = [LostSubmit("a", FOX, T), LostSubmit("b", FOX, T)]
    got = match(lost, [entry("r-1"), entry("r-1")], set())
    assert len(got.pairs) == 1 and len(got.unmatched) == 1


@given(
    jobs=st.lists(st.floats(0, 1000), max_size=8),
    requests=st.lists(st.floats(-200, 1200), max_size=8),
)
def test_matching_is_one_to_one_respects_time_and_is_as_large_as_possible(
    jobs: list[float], requests: list[float]
) -> None:
    lost = [LostSubmit(f"j{i}", FOX, T + at) for i, at in enumerate(jobs)]
    history = [entry(f"r{i}", at=T + at) for i, at in enumerate(requests)]
    got = match(lost, history, set())
    when = {e.request_id: e.at for e in history}
    start = {a.job_id: a.at for a in lost}
    assert len(set(got.pairs.values())) == len(got.pairs)
    assert all(when[r] >= start[j] - CLOCK_SKEW_S for j, r in got.pairs.items())  # type: ignore[operator]
    # The most any assignment could match, by augmenting paths (Kuhn): another algorithm.
    owner: dict[int, int] = {}

    def augment(j: int, seen: set[int]) -> bool:
        for r, at in enumerate(requests):
            if at >= jobs[j] - CLOCK_SKEW_S and r not in seen:
                seen.add(r)
                if r not in owner or augment(owner[r], seen):
                    owner[r] = j
                    return True
        return False

    best = sum(augment(j, set()) for j in range(len(jobs)))
    assert len(got.pairs) == best


async def test_entries_from_the_emulators_history_match_what_was_sent() -> None:
    clock = [1000.0]
    app = create_app(EmulatorConfig(time_scale=0.001, clock=lambda: clock[0]))
    transport = httpx.ASGITransport(app=app)
    body = {"prompt": "a red fox", "quality": "low", "openai_api_key": "sk-user-key-0123"}
    async with httpx.AsyncClient(transport=transport, base_url="http://emulator") as http:
        attempt = datetime.now(UTC).timestamp()
        rid = (
            await http.post("/openai/gpt-image-2", json=body, headers={"Authorization": "Key k"})
        ).json()["request_id"]
        clock[0] += 1.0
        platform = PlatformClient(
            http, key=FalKey("k"), base_url=Endpoints.single("http://emulator").platform
        )
        items: list[RequestItem] = [
            i async for i in platform.requests_by_endpoint(["openai/gpt-image-2"], payloads=True)
        ]
    lost = [LostSubmit("job", input_key({"quality": "low", "prompt": "a red fox"}), attempt)]
    assert match(lost, [entry_of(i) for i in items], owned=set()).pairs == {"job": rid}
