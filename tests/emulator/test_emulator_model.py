"""The pure queue model: invariants under any sequence of submits, cancels and time."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from batchgen.emulator.model import Outcome, Phase, QueueModel

BODY = {"prompt": "p", "quality": "low", "image_size": "square_hd"}

ops = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.sampled_from(["low", "medium", "high"])),
        st.tuples(st.just("submit_by"), st.floats(min_value=0.5, max_value=60)),
        st.tuples(st.just("cancel"), st.integers(min_value=0, max_value=40)),
        st.tuples(st.just("wait"), st.floats(min_value=0, max_value=40)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(limit=st.integers(min_value=1, max_value=4), script=ops)
def test_limit_fifo_and_work_conservation(limit: int, script: list[tuple[str, object]]) -> None:
    model = QueueModel(concurrency_limit=limit)
    now = 0.0
    ids: list[str] = []
    for op, arg in script:
        if op == "submit":
            ids.append(model.submit("o/a", "o/a", {**BODY, "quality": arg}, now).id)
        elif op == "submit_by":
            ids.append(model.submit("o/a", "o/a", BODY, now, start_timeout=float(str(arg))).id)
        elif op == "cancel" and ids:
            model.cancel(ids[int(str(arg)) % len(ids)], now)
        else:
            now += float(str(arg))
        model.advance(now)
        reqs = list(model.requests.values())
        running = [r for r in reqs if r.phase is Phase.RUNNING]
        queued = [r for r in reqs if r.phase is Phase.QUEUED]
        assert len(running) == model.stats()["in_progress"] <= limit
        # Nobody is still waiting past their start deadline, nor started after it.
        assert all(r.start_by is None or now < r.start_by for r in queued)
        assert all(r.start_by is None or r.started_at <= r.start_by for r in running)  # type: ignore[operator]
        # Work-conserving: nobody waits while a slot is free.
        assert not queued or len(running) == limit
        # FIFO: positions are 0..n-1 in submit order.
        positions = [model.view(r.id, now).position for r in sorted(queued, key=lambda r: r.qseq)]  # type: ignore[union-attr]
        assert positions == list(range(len(queued)))
    # Starts happen in submit order, never before submission, never past the limit at once.
    started = [r for r in model.requests.values() if r.started_at is not None]
    by_ticket = sorted(started, key=lambda r: r.qseq)
    assert [r.started_at for r in by_ticket] == sorted(r.started_at for r in by_ticket)  # type: ignore[type-var]
    assert all(r.started_at >= r.submitted_at for r in started)  # type: ignore[operator]
    timed_out = [r for r in model.requests.values() if r.outcome is Outcome.START_TIMEOUT]
    assert all(r.started_at is None for r in timed_out)
    for r in started:
        at = r.started_at
        overlapping = [
            o
            for o in started
            if o.started_at <= at < (o.completed_at if o.completed_at is not None else float("inf"))  # type: ignore[operator]
        ]
        assert len(overlapping) <= limit


def test_cancelled_queued_request_never_runs() -> None:
    model = QueueModel(concurrency_limit=1)
    model.submit("o/a", "o/a", BODY, 0.0)
    queued = model.submit("o/a", "o/a", BODY, 0.0)
    assert model.cancel(queued.id, 1.0) == "CANCELLATION_REQUESTED"
    model.advance(10_000.0)
    assert queued.started_at is None
    assert queued.outcome is Outcome.CANCELLED
    assert model.cancel(queued.id, 10_000.0) in {"ALREADY_COMPLETED", "NOT_FOUND"}


def test_same_seed_same_run_times() -> None:
    a = [QueueModel(seed=5).submit("o/a", "o/a", BODY, 0.0).run_time for _ in range(3)]
    b = QueueModel(seed=5)
    c = QueueModel(seed=6)
    assert b.submit("o/a", "o/a", BODY, 0.0).run_time == a[0]
    assert c.submit("o/a", "o/a", BODY, 0.0).run_time != a[0]


def test_bigger_and_better_images_take_longer() -> None:
    model = QueueModel(seed=1)
    low = model.submit("o/a", "o/a", {**BODY, "quality": "low"}, 0.0).run_time
    high = model.submit("o/a", "o/a", {**BODY, "quality": "high"}, 0.0).run_time
    big = {"prompt": "p", "quality": "high", "image_size": {"width": 3840, "height": 2160}}
    huge = model.submit("o/a", "o/a", big, 0.0).run_time
    assert low < high < huge
