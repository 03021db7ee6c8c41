"""The pure pacing rules: the window controller, the budget gate and the watch choice."""

from __future__ import annotations

import random
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchgen.running.window import (
    POLL_MAX_S,
    POLL_MIN_S,
    PROBE_ROUNDS,
    AutoWindow,
    FixedWindow,
    Observation,
    RunTimes,
    WatchMode,
    WatchPlan,
    budget_allows,
    make_window,
    plan_watch,
    poll_delay,
)

ran = Observation(position=None, in_flight=0)


def at(in_flight: int, position: int | None = None) -> Observation:
    return Observation(position=position, in_flight=in_flight)


@pytest.mark.parametrize(
    ("start", "ceiling", "obs", "size", "new_ceiling"),
    [
        # slow start: a full window of immediate starts grows one per start
        (2, None, at(2), 3, None),
        (39, None, at(39), 40, None),
        (40, None, at(40), 40, None),  # clamped at hi
        # a start while the window was not full says nothing
        (5, None, at(3), 5, None),
        # a wait at position p with n in flight: at most n - p - 1 run
        (8, None, at(8, 0), 7, 7),
        (8, None, at(8, 2), 5, 5),
        (8, None, at(3, 0), 2, 2),
        (3, None, at(2, 5), 1, 1),  # clamped at lo
        # an overestimate never grows the window
        (4, None, at(20, 0), 4, 4),
        # below the ceiling: grow back freely
        (3, 5, at(3), 4, 5),
        # at the ceiling: stay
        (5, 5, at(5), 5, 5),
        # ran at once above the ceiling: the limit went up
        (6, 5, at(6), 7, None),
        # `ahead` (ours still in flight, submitted earlier) is sharper than in_flight
        (8, None, Observation(0, 8, True, ahead=3), 3, 3),
        (8, None, Observation(1, 8, True, ahead=6), 5, 5),
        # a late look that finds it running is no evidence either way
        (3, None, Observation(None, 3, prompt=False), 3, None),
        (3, 5, Observation(None, 9, prompt=False), 3, 5),
        # ...but a late look that finds it waiting still is
        (8, None, Observation(2, 8, prompt=False), 5, 5),
    ],
)
def test_auto_window_steps(
    start: int, ceiling: int | None, obs: Observation, size: int, new_ceiling: int | None
) -> None:
    w = AutoWindow(size=start, ceiling=ceiling)
    assert w.observe(obs) == size
    assert w.size == size
    assert w.ceiling == new_ceiling


def test_auto_window_probes_above_ceiling_after_long_streak() -> None:
    w = AutoWindow(size=4, ceiling=4)
    for _ in range(PROBE_ROUNDS * 4 - 1):
        assert w.observe(at(4)) == 4
    assert w.observe(at(4)) == 5  # the probe
    assert w.ceiling == 4  # still the settled value until the probe answers
    assert w.observe(at(5, 0)) == 4  # the probe waited: back to the limit
    assert w.ceiling == 4


def test_auto_window_wants_every_first_status_at_once() -> None:
    assert AutoWindow().wants_prompt_check()
    assert not FixedWindow(3).wants_prompt_check()


def test_fixed_window_ignores_observations() -> None:
    w = FixedWindow(7)
    assert w.observe(at(7)) == 7
    assert w.observe(at(7, 3)) == 7
    with pytest.raises(ValueError):
        FixedWindow(0)


def test_make_window() -> None:
    assert isinstance(make_window(None), AutoWindow)
    assert make_window(3).size == 3
    assert make_window(None, hi=1).size == 1


def simulate(limit: int, hi: int, steps: int, seed: int) -> list[int]:
    """A tiny fal account: at most ``limit`` run, the rest queue FIFO. Each step the client
    fills its window, every new request is observed at submit, then random runners finish."""
    rng = random.Random(seed)
    w = AutoWindow(hi=hi)
    running: set[int] = set()
    queued: deque[int] = deque()
    next_id = 0
    sizes = []
    for _ in range(steps):
        while len(running) + len(queued) < w.size:
            rid, next_id = next_id, next_id + 1
            n = len(running) + len(queued) + 1
            if len(running) < limit:
                running.add(rid)
                w.observe(Observation(None, n, ahead=n - 1))
            else:
                queued.append(rid)
                w.observe(Observation(len(queued) - 1, n, ahead=n - 1))
            assert len(running) <= limit
        for rid in list(running):
            if rng.random() < 0.3:
                running.discard(rid)
        while queued and len(running) < limit:
            running.add(queued.popleft())
        sizes.append(w.size)
    return sizes


@settings(max_examples=60, deadline=None)
@given(limit=st.integers(1, 45), seed=st.integers(0, 1000))
def test_auto_window_settles_at_the_hidden_limit(limit: int, seed: int) -> None:
    sizes = simulate(limit, hi=40, steps=400, seed=seed)
    target = min(limit, 40)
    tail = sizes[200:]
    # settled: at the limit nearly always, one above only while probing
    assert all(target <= s <= target + 1 for s in tail)
    assert sum(s == target for s in tail) >= 0.9 * len(tail)


@pytest.mark.parametrize(
    ("spent", "in_flight", "job", "cap", "ok"),
    [
        (0.0, 0.0, 0.15, None, True),
        (0.0, 0.0, 0.15, 0.15, True),  # exactly at the cap
        (0.1 + 0.2, 0.0, 0.7, 1.0, True),  # float noise must not refuse
        (0.5, 0.4, 0.15, 1.0, False),  # in flight counts
        (1.0, 0.0, 0.01, 1.0, False),
        (0.0, 0.0, 0.0, 0.0, True),  # unpriced jobs always fit
    ],
)
def test_budget_allows(
    spent: float, in_flight: float, job: float, cap: float | None, ok: bool
) -> None:
    assert budget_allows(spent=spent, in_flight=in_flight, job=job, cap=cap) is ok


@pytest.mark.parametrize(
    ("mode", "expected", "plan"),
    [
        (WatchMode.POLL, 0.1, WatchPlan(WatchMode.POLL, None)),
        (WatchMode.STREAM, None, WatchPlan(WatchMode.STREAM, None)),  # nothing known yet
        (WatchMode.STREAM, 0.05, WatchPlan(WatchMode.STREAM, 0.05)),  # quick: check once
        (WatchMode.STREAM, 30.0, WatchPlan(WatchMode.STREAM, None)),  # slow: stream
    ],
)
def test_plan_watch(mode: WatchMode, expected: float | None, plan: WatchPlan) -> None:
    assert plan_watch(mode, expected) == plan


def test_poll_delay_first_poll_near_expected_completion() -> None:
    assert poll_delay(0, 2.0, 0.0) == 2.0
    assert poll_delay(0, 2.0, 1.5) == pytest.approx(0.5)
    assert poll_delay(0, 0.01, 0.0) == POLL_MIN_S  # never faster than the floor


@given(expected=st.one_of(st.none(), st.floats(0.0, 600.0)), elapsed=st.floats(0.0, 600.0))
def test_poll_delays_grow_and_stay_bounded(expected: float | None, elapsed: float) -> None:
    delays = [poll_delay(i, expected, elapsed) for i in range(1, 30)]
    assert all(POLL_MIN_S <= d <= POLL_MAX_S for d in delays)
    assert delays == sorted(delays)


def test_polls_per_job_at_two_seconds() -> None:
    """A 2 s request polled on this schedule needs few status requests (fal-client: ~20)."""
    run, t, polls = 2.0, 0.0, 0
    while t < run:
        t += poll_delay(polls, run * 0.9, t)
        polls += 1
    assert polls <= 4


def test_run_times_median() -> None:
    r = RunTimes(keep=3)
    assert r.expected() is None
    for x in (1.0, 100.0, 2.0, 3.0):
        r.add(x)
    assert r.expected() == 3.0  # 1.0 fell out; median of 100, 2, 3
