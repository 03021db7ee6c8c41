"""Planning into the journal: incremental re-plans, dropped jobs, batches, exact tallies."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_journal_support import handle, open_journal, spec

import batchgen.journal.loading
from batchgen.journal.writer import AddReport, Journal
from batchgen.planning.jobs import TRANSITIONS, JobState

S = JobState


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "out" / "journal.sqlite"


def test_re_planning_adds_new_keeps_finished_and_reports_dropped(path: Path) -> None:
    with open_journal(path, sha="a" * 64) as j:
        assert j.add_jobs([spec(i) for i in range(4)]) == AddReport(4, 0, 0)
        done, paid, *_ = j.claim(4)
        j.set_submitted(done.job_id, handle("req-done"))
        j.set_result(done.job_id, {"images": []})
        j.mark_downloaded(done.job_id, [])
        j.set_submitted(paid.job_id, handle("req-paid"))
    # The user edits the manifest: p1 and p3 are gone, p4 and p5 are new.
    edited = [spec(0), spec(2), spec(4), spec(5)]
    with open_journal(path, sha="b" * 64, allow_manifest_change=True) as j:
        report = j.add_jobs(edited)
        assert report == AddReport(2, 2, 2)
        assert j.get(done.job_id).state is S.DOWNLOADED  # type: ignore[union-attr]
        # Dropped jobs are never claimed, but one already paid for is still re-attached.
        j.interrupted_submits()
        claimed = [r.spec.prompt_id for r in j.claim(10)]
        assert claimed == ["p2", "p4", "p5"]
        assert [r.request_id for r in j.attached()] == ["req-paid"]
        assert j.counts()[S.DOWNLOADED] == 1
        assert sum(j.counts().values()) == 4
        assert sum(j.tallies().not_in_manifest.values()) == 2
    # Going back to the first manifest brings the dropped jobs back as they were.
    with open_journal(path, sha="a" * 64, allow_manifest_change=True) as j:
        assert j.add_jobs([spec(i) for i in range(4)]) == AddReport(0, 4, 2)
        assert j.get(spec(3).job_id).in_manifest  # type: ignore[union-attr]
        assert not j.get(spec(5).job_id).in_manifest  # type: ignore[union-attr]


def test_the_same_plan_twice_changes_nothing(path: Path) -> None:
    with open_journal(path) as j:
        j.add_jobs([spec(i) for i in range(3)])
        (row,) = j.claim(1)
        before = j.get(row.job_id)
        assert j.add_jobs([spec(i) for i in range(3)]) == AddReport(0, 3, 0)
        assert j.get(row.job_id) == before
        assert j.add_jobs([spec(0), spec(0), spec(1), spec(2)]).new == 0


def test_plans_larger_than_a_batch_load_completely_in_order(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batchgen.journal.loading, "BATCH", 7)
    with open_journal(path) as j:
        assert j.add_jobs((spec(i) for i in range(50)), cost_of=lambda s: 0.01).new == 50
        assert [r.spec.prompt_id for r in j.claim(50)] == [f"p{i}" for i in range(50)]
    with open_journal(path, sha="c" * 64, allow_manifest_change=True) as j:
        report = j.add_jobs(spec(i) for i in range(10, 60))
    assert report == AddReport(10, 40, 10)


def test_costs_are_stored_per_job(path: Path) -> None:
    with open_journal(path) as j:
        j.add_jobs([spec(i) for i in range(3)], cost_of=lambda s: 0.1 * (1 + int(s.prompt_id[1])))
        assert [r.cost for r in j.iter_jobs()] == pytest.approx([0.1, 0.2, 0.3])


# ---- the writer's in-memory tallies equal a fresh count of the table, whatever happens ----

OPS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "claim",
                "submit",
                "run",
                "result",
                "download",
                "fail",
                "requeue",
                "lost",
                "dup",
                "unknown",
                "retry_failed",
                "interrupted",
            ]
        ),
        st.integers(0, 2),
    ),
    max_size=40,
)


def _apply(j: Journal, op: str, i: int) -> None:
    row = j.get(spec(i).job_id)
    assert row is not None
    state = row.state

    def allowed(new: JobState) -> bool:
        return new in TRANSITIONS[state]

    if op == "claim":
        j.claim(i + 1)
    elif op == "submit" and state is S.SUBMITTING:
        j.set_submitted(row.job_id, handle(f"r{i}"))
    elif op == "run" and state is S.QUEUED:
        j.transition(row.job_id, S.RUNNING)
    elif op == "result" and state in (S.QUEUED, S.RUNNING, S.COMPLETED):
        j.set_result(row.job_id, {"images": []})
    elif op == "download" and state is S.COMPLETED:
        j.mark_downloaded(row.job_id, [])
    elif op == "fail" and allowed(S.FAILED):
        j.fail(row.job_id, "x", "y")
    elif op in ("requeue", "lost", "dup") and allowed(S.PENDING):
        j.requeue(row.job_id, "again", lost=op == "lost", dup=op == "dup")
    elif op == "unknown" and state is S.SUBMITTING:
        j.transition(row.job_id, S.UNKNOWN)
    elif op == "retry_failed":
        j.retry_failed()
    elif op == "interrupted":
        j.interrupted_submits()


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS)
def test_in_memory_tallies_match_the_table(tmp_path: Path, ops: list[tuple[str, int]]) -> None:
    p = tmp_path / f"{abs(hash(tuple(ops)))}" / "journal.sqlite"
    with open_journal(p) as j:
        j.add_jobs([spec(i) for i in range(6)], cost_of=lambda s: 0.5 + int(s.prompt_id[1]))
        for op, i in ops:
            _apply(j, op, i)
        fresh = j.tallies()
        assert j.counts() == fresh.counts
        assert j.spent_estimate() == pytest.approx(fresh.spent)
        assert j.in_flight_estimate() == pytest.approx(fresh.in_flight)
        assert sum(j.counts().values()) == 6
