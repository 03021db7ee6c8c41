"""The journal's pure rules: what counts as a secret, what is scrubbed, what is billed."""

from __future__ import annotations

from typing import Any

import pytest

from batchgen.jobs import JobState
from batchgen.journal_schema import (
    JobHead,
    LiveTallies,
    Tallies,
    find_secret,
    one_line,
    redact_settings,
    strip_data_uris,
)

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


def _head(state: JobState, cost: float = 2.0, dup: int = 0, lost: int = 0) -> JobHead:
    return JobHead(1, state, True, cost, dup, lost, None)


@pytest.mark.parametrize(
    ("old", "new", "spent", "in_flight"),
    [
        (S.PENDING, S.SUBMITTING, 0.0, 2.0),  # a claim commits the money
        (S.SUBMITTING, S.QUEUED, 0.0, 0.0),
        (S.RUNNING, S.COMPLETED, 2.0, -2.0),  # finished on fal: billed
        (S.COMPLETED, S.DOWNLOADED, 0.0, 0.0),
        (S.RUNNING, S.FAILED, 0.0, -2.0),  # a failed run is not counted as billed
        (S.SUBMITTING, S.PENDING, 0.0, -2.0),  # refused submit: nothing exists
        (S.DOWNLOADED, S.PENDING, -2.0, 0.0),
    ],
)
def test_live_tallies_follow_the_money(
    old: JobState, new: JobState, spent: float, in_flight: float
) -> None:
    t = LiveTallies(Tallies(dict.fromkeys(S, 5), dict.fromkeys(S, 0), 0.0, 0.0, 0.0, 0, 0, 0))
    t.move(_head(old), new, dup=0, lost=0)
    assert (t.spent, t.in_flight) == (spent, in_flight)
    assert t.counts[old] == 4 and t.counts[new] == 6


def test_a_lost_result_or_a_possible_duplicate_is_paid_again() -> None:
    zero = dict.fromkeys(S, 1)
    # One completed job (2.0 spent) whose result expired: it stays paid for, and the rerun
    # that completes costs a second time.
    t = LiveTallies(Tallies(zero, dict.fromkeys(S, 0), 2.0, 0.0, 0.0, 0, 0, 0))
    t.move(_head(S.COMPLETED), S.PENDING, dup=0, lost=1)
    assert t.spent == pytest.approx(2.0)
    t.move(_head(S.RUNNING, lost=1), S.COMPLETED, dup=0, lost=1)
    assert t.spent == pytest.approx(4.0)
    # Resubmitting an UNKNOWN submit counts the first one as possibly billed.
    t.move(_head(S.UNKNOWN), S.SUBMITTING, dup=1, lost=0)
    assert t.spent == pytest.approx(6.0)
