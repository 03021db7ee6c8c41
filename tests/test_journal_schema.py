"""The journal's pure rules: what counts as a secret, what is scrubbed, what is billed."""

from __future__ import annotations

from typing import Any

import pytest

from batchgen.journal.schema import (
    JobHead,
    LiveTallies,
    Tallies,
    charges,
    find_secret,
    one_line,
    redact_settings,
    strip_data_uris,
)
from batchgen.planning.jobs import JobState

S = JobState


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"prompt": "x"}, None),
        ({"prompt": "openai_api_key"}, None),  # the name as text is not the field
        ({"openai_api_key": "sk-1"}, "input.openai_api_key"),
        ({"extra": {"openai_api_key": "sk-1"}}, "input.extra.openai_api_key"),
        ({"images": [{"u": 1}, {"openai_api_key": "k"}]}, "input.images[1].openai_api_key"),
    ],
)
def test_find_secret(value: dict[str, Any], where: str | None) -> None:
    assert find_secret(value) == where


@pytest.mark.parametrize(
    ("name", "dropped"),
    [
        ("fal_key", True),
        ("key", True),
        ("FAL_KEY", True),
        ("api_token", True),
        ("openai_api_key", True),
        ("client_secrets", True),
        ("authorization", True),
        ("concurrency", False),
        ("monkey", False),
        ("keyboard_layout", False),
        ("max_cost", False),
    ],
)
def test_redact_settings_drops_credential_names(name: str, dropped: bool) -> None:
    out = redact_settings({name: "v", "nested": {name: "v"}})
    assert (name not in out) is dropped
    assert (name not in out["nested"]) is dropped


def test_strip_data_uris_keeps_urls_and_small_values() -> None:
    big = "data:image/webp;base64," + "Q" * 5000
    small = "data:image/png;base64,AAAA"
    out = strip_data_uris({"images": [{"url": big}, {"url": small}, {"url": "https://x"}], "n": 2})
    assert (
        out["images"][0]["url"] == f"data:image/webp;base64,<{len(big)} characters, saved to disk>"
    )
    assert out["images"][1:] == [{"url": small}, {"url": "https://x"}]
    assert out["n"] == 2


def test_one_line() -> None:
    assert one_line(None) is None
    assert one_line("a\n  b\tc ") == "a b c"
    long = one_line("x" * 5000)
    assert long is not None and len(long) == 1000 and long.endswith("…")


def _head(state: JobState, cost: float = 2.0, dup: int = 0, billed: int = 0) -> JobHead:
    return JobHead(1, state, True, cost, dup, billed, None)


@pytest.mark.parametrize(
    ("old", "new", "lost", "charged"),
    [
        (S.RUNNING, S.COMPLETED, False, 1),
        (S.QUEUED, S.COMPLETED, False, 1),  # completed while we were not looking
        (S.COMPLETED, S.COMPLETED, False, 0),  # fetching the result again is free
        (S.COMPLETED, S.DOWNLOADED, False, 0),
        (S.COMPLETED, S.PENDING, True, 0),  # expired after we saw it complete: charged once
        (S.RUNNING, S.PENDING, True, 1),  # expired before we saw it: still a charge
        (S.DOWNLOADED, S.PENDING, False, 0),
        (S.RUNNING, S.FAILED, False, 0),
        (S.SUBMITTING, S.PENDING, False, 0),
    ],
)
def test_charges(old: JobState, new: JobState, lost: bool, charged: int) -> None:
    assert charges(old, new, lost=lost) == charged


def _tallies(spent: float = 0.0, in_flight: float = 0.0) -> LiveTallies:
    return LiveTallies(
        Tallies(dict.fromkeys(S, 5), dict.fromkeys(S, 0), spent, in_flight, 0.0, 0, 0, 0)
    )


@pytest.mark.parametrize(
    ("old", "new", "in_flight"),
    [
        (S.PENDING, S.SUBMITTING, 2.0),  # a claim commits the money
        (S.SUBMITTING, S.QUEUED, 0.0),
        (S.RUNNING, S.COMPLETED, -2.0),
        (S.RUNNING, S.FAILED, -2.0),
        (S.SUBMITTING, S.PENDING, -2.0),  # refused submit: nothing exists
        (S.UNKNOWN, S.SUBMITTING, 0.0),
    ],
)
def test_live_tallies_move_counts_and_money_in_flight(
    old: JobState, new: JobState, in_flight: float
) -> None:
    t = _tallies()
    t.move(_head(old), new, dup=0, billed=0, origin=None)
    assert t.in_flight == in_flight and t.spent == 0.0
    assert t.counts[old] == 4 and t.counts[new] == 6


def test_spending_only_grows() -> None:
    t = _tallies(spent=2.0)  # one job, completed and downloaded
    t.move(_head(S.DOWNLOADED, billed=1), S.PENDING, dup=0, billed=1, origin=None)  # files vanished
    assert t.spent == pytest.approx(2.0)
    # the rerun is charged
    t.move(_head(S.RUNNING, billed=1), S.COMPLETED, dup=0, billed=2, origin=None)
    assert t.spent == pytest.approx(4.0)
    # a possible duplicate
    t.move(_head(S.UNKNOWN, billed=2), S.SUBMITTING, dup=1, billed=2, origin=None)
    assert t.spent == pytest.approx(6.0)
