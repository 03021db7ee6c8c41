"""The end of a run: exit codes, the summary's lines, run.log, the progress line."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from batchgen.commands.progress import Progress, Snapshot, eta_seconds, status_line
from batchgen.fal.auth import FalKey
from batchgen.planning.jobs import JobState
from batchgen.running.events import (
    BudgetReached,
    Failed,
    Found,
    LookedUp,
    Recovered,
    Requeued,
    Retrying,
    Saved,
    Started,
    Stopping,
    StopReason,
    SubmitLost,
    Submitted,
)
from batchgen.running.runlog import RunLog, describe
from batchgen.running.stats import RunStats
from batchgen.running.summary import build_summary, exit_code

S = JobState


@pytest.mark.parametrize(
    ("stop", "failed", "unfinished", "code"),
    [
        (None, 0, 0, 0),
        (None, 2, 0, 1),
        (None, 0, 3, 1),  # left unfinished without a stop: not "all done"
        (StopReason.BUDGET, 0, 5, 3),
        (StopReason.BUDGET, 1, 5, 3),
        (StopReason.INTERRUPTED, 1, 5, 130),
        (StopReason.FATAL, 0, 5, 2),
    ],
)
def test_exit_code(stop: StopReason | None, failed: int, unfinished: int, code: int) -> None:
    assert exit_code(stop=stop, failed=failed, unfinished=unfinished) == code


def test_run_stats_tally() -> None:
    st = RunStats()
    for e in [
        Submitted("a", "r1", False),
        Submitted("b", "r2", True),
        Retrying("a", "submit", "http_429", "m", 0.1, 1),
        Requeued("c", "submit_dropped", "not in fal's history", lost=False),
        Requeued("i", "submit_dropped", "the history cannot tell", False, possible_duplicate=True),
        SubmitLost("c", "submit_dropped", "m"),
        SubmitLost("j", "submit_dropped", "m"),
        LookedUp(2, 1),
        Found("j", "r9"),
        Recovered("k", "r10"),
        Requeued("d", "expired", "m", lost=True),
        Requeued("g", "deadline", "cancelled while it ran", lost=False, possible_duplicate=True),
        Requeued("h", "deadline", "cancelled in fal's queue", lost=False),
        Failed("e", "content_policy_violation", "m"),
        Failed("f", "submit_dropped", "m"),
        Saved("a", 2),
        Started("a"),
    ]:
        st.add(e)
    assert (st.submitted, st.retries, st.requeued, st.lost) == (2, 1, 5, 1)
    # a lost submit fal's history could not rule out may have made a billed request; so may a
    # request cancelled as it ran, but not one cancelled while it waited in the queue, nor a
    # lost submit the history settled (found, or not made by the time it would have ended)
    assert st.possible_duplicates == 2
    assert (st.lost_submits, st.lookups, st.found, st.recovered) == (2, 1, 1, 1)
    assert (st.saved_jobs, st.images) == (1, 2)
    assert st.failed == {"content_policy_violation": 1, "submit_dropped": 1}


def summary(stop: StopReason | None, counts: dict[JobState, int]) -> list[str]:
    s = build_summary(
        counts,
        failures=[("content_policy_violation", 2, "HTTP 422: prompt refused")],
        journal_retries=3,
        possible_duplicates=1,
        lost=1,
        spent=1.234,
        spent_run=0.5,
        stats=RunStats(retries=2),
        wall_seconds=75.0,
        stop=stop,
        resume_hint="batchgen run m.yaml --out out --max-cost 2",
    )
    return s.lines()


def test_summary_lines() -> None:
    lines = summary(None, {S.DOWNLOADED: 8, S.FAILED: 2})
    text = "\n".join(lines)
    assert (
        "done 8, failed 2, unfinished 0 in 1m15s; estimated spend $0.50 this run,"
        " $1.23 for the folder"
    ) in text
    # this run's figures and the folder's, each labelled as such
    assert lines[1] == (
        "this run: submitted 0, retried 2, possible duplicate charges 0, lost results 0"
        " (resubmitted)"
    )
    assert (
        "folder totals (all runs): retried 5, possible duplicate charges 1, lost results 1" in text
    )
    assert "failed 2 × content_policy_violation: HTTP 422: prompt refused" in text
    assert "resume" not in text


def test_summary_says_how_to_continue_after_the_budget() -> None:
    text = "\n".join(summary(StopReason.BUDGET, {S.DOWNLOADED: 3, S.PENDING: 5}))
    assert "stopped at the budget (--max-cost): raise it to continue" in text
    assert "  batchgen run m.yaml --out out --max-cost USD" in text  # the cap, not the old one
    text = "\n".join(summary(StopReason.INTERRUPTED, {S.DOWNLOADED: 3, S.QUEUED: 2}))
    assert "run the same command again to resume" in text


def test_run_log_redacts_the_key_and_stamps_lines(tmp_path: Path) -> None:
    key = FalKey("abc:supersecretvalue")
    log = RunLog(tmp_path, redact=key.redact, clock=lambda: 0.0)
    log.write("server said: bad key abc:supersecretvalue")
    log.on_event(Failed("0123456789abcdef0000", "auth", "echo supersecretvalue"))
    log.on_event(Saved("x", 1))  # routine: not logged
    log.close()
    text = (tmp_path / "run.log").read_text()
    assert "supersecretvalue" not in text
    lines = text.splitlines()
    assert len(lines) == 2
    assert all(line.startswith("1970-01-01T00:00:00.000Z ") for line in lines)
    assert "failed: job 0123456789abcdef auth" in lines[1]


def test_describe_covers_retries_budget_and_stops() -> None:
    line = describe(Retrying(None, "status", "http_500", "HTTP 500", 0.25, 2))
    assert line == "retry: status #2 http_500 (HTTP 500); waiting 0.25 s"
    budget = describe(BudgetReached(0.5, 0.25, 0.15, 0.8))
    assert budget is not None and "would pass --max-cost $0.80" in budget
    assert "finishing paid requests" in str(describe(Stopping(now=False, reason="interrupted")))
    assert "lost" in str(describe(Requeued("0" * 16, "expired", "404", lost=True)))
    assert describe(Started("x")) is None


def snap(**kw: int) -> Snapshot:
    base = {
        "pending": 5,
        "queued": 1,
        "running": 2,
        "in_flight": 3,
        "done": 10,
        "failed": 1,
        "window": 3,
    }
    base.update(kw)
    return Snapshot(spent=0.5, **base)


def test_eta_and_status_line() -> None:
    assert eta_seconds(10, 0, 5.0) is None
    assert eta_seconds(10, 5, 5.0) == 10.0
    line = status_line(snap(), total=16, images=6, done_now=6, elapsed=60.0)
    assert line.startswith("progress: done 10/16, failed 1, queued 1, running 2, in flight 3")
    assert "6.0 images/min" in line and "ETA 1m20s" in line


def test_progress_without_a_terminal_prints_lines() -> None:
    out = io.StringIO()
    p = Progress(snap, total=16, stream=out, bar=False, clock=lambda: 30.0)
    p.on_event(Saved("a", 1))
    p.refresh()
    p.close()
    assert out.getvalue().startswith("progress: done 10/16")


def test_the_lost_submits_line_adds_up() -> None:
    def line(st: RunStats) -> str:
        s = build_summary(
            {S.DOWNLOADED: 9},
            failures=[],
            journal_retries=0,
            possible_duplicates=0,
            lost=0,
            spent=0.0,
            spent_run=0.0,
            stats=st,
            wall_seconds=1.0,
            stop=None,
            resume_hint="",
        )
        (found,) = [x for x in s.lines() if x.startswith("submits without an answer")]
        return found

    all_found = RunStats(lost_submits=3, found=3, lookups=2)
    assert line(all_found) == "submits without an answer 3: 3 found in fal's history (2 look-ups)"
    mixed = RunStats(lost_submits=6, found=2, lookups=1, resent=2, resent_unsure=1)
    assert line(mixed) == (
        "submits without an answer 6: 2 found in fal's history (1 look-up), 1 not there, sent"
        " again, 1 it could not tell of, sent again, 2 left to look for next run"
    )
