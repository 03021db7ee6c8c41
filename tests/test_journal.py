"""The journal's job lifecycle: claims, submits, results, retries, resume queries, tallies."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from test_journal_support import FakeClock, handle, open_journal, spec

from batchgen.errors import JournalError
from batchgen.journal.writer import Journal
from batchgen.planning.jobs import InvalidTransition, JobState

S = JobState


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "out" / "journal.sqlite"


def test_open_creates_a_wal_journal_with_every_table(path: Path) -> None:
    with open_journal(path):
        pass
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    finally:
        conn.close()
    assert {"meta", "runs", "jobs", "events", "uploads"} <= tables
    assert "jobs_state" in indexes


def test_claim_is_fifo_bounded_and_committed_before_it_returns(path: Path) -> None:
    with open_journal(path) as j:
        j.add_jobs([spec(i) for i in range(5)])
        first = j.claim(2)
        assert [r.spec.prompt_id for r in first] == ["p0", "p1"]
        assert all(r.state is S.SUBMITTING and r.submits == 1 for r in first)
        # Another connection sees the claim at once: intent is on disk before the POST.
        with Journal.open_readonly(path) as reader:
            assert reader.counts()[S.SUBMITTING] == 2
        assert [r.spec.prompt_id for r in j.claim(10)] == ["p2", "p3", "p4"]
        assert j.claim(10) == []
        assert j.claim(0) == []


def test_a_job_goes_the_whole_way_and_every_step_is_an_event(path: Path) -> None:
    clock = FakeClock()
    with open_journal(path, clock=clock) as j:
        j.add_jobs([spec(0)], cost_of=lambda s: 0.25)
        (row,) = j.claim(1)
        clock.now += 1
        j.set_submitted(row.job_id, handle("req-1"))
        assert j.in_flight_estimate() == pytest.approx(0.25)
        j.transition(row.job_id, S.RUNNING)
        j.set_result(row.job_id, {"images": [{"url": "http://x/1.png"}]})
        assert j.spent_estimate() == pytest.approx(0.25)
        assert j.in_flight_estimate() == 0
        j.mark_downloaded(row.job_id, [{"path": "images/p0/x_0.png", "sha256": "ab"}])
        done = j.get(row.job_id)
        assert done is not None
        assert done.state is S.DOWNLOADED
        assert done.request_id == "req-1"
        assert done.handle == handle("req-1")
        assert done.submitted_at == clock.now
        assert done.files == [{"path": "images/p0/x_0.png", "sha256": "ab"}]
        assert done.result == {"images": [{"url": "http://x/1.png"}]}
        kinds = [d.split(" ")[0] for _, _, k, d in j.events(row.job_id) if k == "state"]
    assert kinds == [
        "PENDING->SUBMITTING",
        "SUBMITTING->QUEUED",
        "QUEUED->RUNNING",
        "RUNNING->COMPLETED",
        "COMPLETED->DOWNLOADED",
    ]


def test_an_invalid_transition_is_refused_and_changes_nothing(path: Path) -> None:
    with open_journal(path) as j:
        j.add_jobs([spec(0)])
        jid = spec(0).job_id
        before = len(j.events())
        with pytest.raises(InvalidTransition):
            j.set_result(jid, {"images": []})  # PENDING -> COMPLETED skips the submit
        with pytest.raises(JournalError, match="set_submitted"):
            j.transition(jid, S.QUEUED)  # a queued job without its handle could never resume
        with pytest.raises(JournalError, match="no job"):
            j.transition("f" * 64, S.FAILED)
        row = j.get(jid)
        assert row is not None and row.state is S.PENDING
        assert len(j.events()) == before
        assert j.counts()[S.PENDING] == 1


def test_set_submitted_needs_a_request_id(path: Path) -> None:
    with open_journal(path) as j:
        j.add_jobs([spec(0)])
        (row,) = j.claim(1)
        with pytest.raises(JournalError, match="request_id"):
            j.set_submitted(row.job_id, {"status_url": "http://x"})
        assert j.get(row.job_id).state is S.SUBMITTING  # type: ignore[union-attr]


def test_requeue_forgets_the_old_request_and_counts_attempts_and_losses(path: Path) -> None:
    with open_journal(path) as j:
        j.add_jobs([spec(0)], cost_of=lambda s: 0.5)
        (row,) = j.claim(1)
        j.set_submitted(row.job_id, handle("req-1"))
        j.set_result(row.job_id, {"images": []})
        j.requeue(row.job_id, "HTTP 404 result expired", lost=True)
        again = j.get(row.job_id)
        assert again is not None
        assert (again.state, again.attempts, again.lost) == (S.PENDING, 1, 1)
        assert again.request_id is None and again.handle is None and again.result is None
        # The lost result was paid for: it stays in the spend, and the audit keeps its id.
        assert j.spent_estimate() == pytest.approx(0.5)
        assert "req-1" in j.events(row.job_id)[-1][3]
        assert j.attached() == []


def test_a_requeue_of_a_request_that_ran_counts_a_possible_duplicate(path: Path) -> None:
    with open_journal(path) as j:
        j.add_jobs([spec(0), spec(1)], cost_of=lambda s: 0.5)
        ran, queued = j.claim(2, origin="https://queue.fal.run")
        for row, rid in ((ran, "req-ran"), (queued, "req-queued")):
            j.set_submitted(row.job_id, handle(rid))
        j.transition(ran.job_id, S.RUNNING)
        j.requeue(ran.job_id, "deadline: cancelled while running", dup=True)
        j.requeue(queued.job_id, "deadline: cancelled in the queue")
        a, b = j.get(ran.job_id), j.get(queued.job_id)
        assert a is not None and b is not None
        assert (a.possible_duplicates, b.possible_duplicates) == (1, 0)
        assert (a.attempts, a.lost, b.attempts) == (1, 0, 1)
        # The cancelled request may be billed: the budget counts it, the tallies agree, and
        # the server it was made at is kept (a server is owed), unlike the queued one's.
        assert j.spent_estimate() == pytest.approx(0.5) == j.tallies().spent
        assert j.tallies().possible_duplicates == 1
        assert a.origin is not None and b.origin is None
        assert "possible duplicate" in j.events(ran.job_id)[-1][3]


def test_transition_back_to_pending_can_bump_attempts(path: Path) -> None:
    with open_journal(path) as j:
        j.add_jobs([spec(0)])
        (row,) = j.claim(1)
        j.transition(row.job_id, S.PENDING, error_class="http_429", error="slow down")
        j.claim(1)
        j.transition(row.job_id, S.PENDING, error_class="http_429", bump_attempts=True)
        after = j.get(row.job_id)
        assert after is not None and after.attempts == 1 and after.error_class == "http_429"


def test_fail_records_class_and_one_line_message(path: Path) -> None:
    with open_journal(path) as j:
        j.add_jobs([spec(0)])
        (row,) = j.claim(1)
        j.set_submitted(row.job_id, handle("r"))
        j.fail(row.job_id, "content_policy_violation", "refused:\n  the prompt\n" + "x" * 5000)
        failed = j.get(row.job_id)
        assert failed is not None and failed.state is S.FAILED
        assert failed.error_class == "content_policy_violation"
        assert failed.error is not None
        assert failed.error.startswith("refused: the prompt x")
        assert "\n" not in failed.error and len(failed.error) <= 1000


def test_resume_sorts_interrupted_claims_into_sent_or_not_by_the_attempt_record(
    path: Path,
) -> None:
    with open_journal(path) as j:
        j.add_jobs([spec(i) for i in range(4)], cost_of=lambda s: 1.0)
        j.claim(1)
        j.sending(spec(0).job_id, "key-p0")  # the POST for p0 may have left: the process dies
        j.claim(1)
        j.set_submitted(spec(1).job_id, handle("req-p1"))
        j.claim(1)  # p2 claimed, its POST never begun
    with open_journal(path) as j:
        (unknown,) = j.interrupted_submits()
        assert unknown.spec.prompt_id == "p0" and unknown.state is S.UNKNOWN
        (lost,) = j.lost_submits()  # what the look-up in fal's history needs
        assert (lost.job_id, lost.key, lost.endpoint) == (
            spec(0).job_id,
            "key-p0",
            spec(0).endpoint,
        )
        assert lost.known and lost.at is not None
        assert j.get(spec(2).job_id).state is S.PENDING  # nothing was sent for it
        assert [r.request_id for r in j.attached()] == ["req-p1"]
        # an UNKNOWN job is never claimed: it waits for the look-up
        assert [r.spec.prompt_id for r in j.claim(4)] == ["p2", "p3"]
        # The lost submit may be billed: the budget counts it as in flight meanwhile.
        assert j.in_flight_estimate() == pytest.approx(4.0)  # p0, p1, p2, p3
        # found in the history: re-attached, its request id kept, its attempt forgotten
        j.set_submitted(spec(0).job_id, handle("req-p0"), at=lost.at)
        assert j.get(spec(0).job_id).submitted_at == lost.at
        assert j.lost_submits() == [] and j.tallies().possible_duplicates == 0


def test_attached_returns_live_requests_with_their_handles(path: Path) -> None:
    with open_journal(path) as j:
        j.add_jobs([spec(i) for i in range(5)])
        rows = j.claim(5)
        for i, r in enumerate(rows[:4]):
            j.set_submitted(r.job_id, handle(f"req-{i}"))
        j.transition(rows[1].job_id, S.RUNNING)
        j.set_result(rows[2].job_id, {"images": []})
        j.set_result(rows[3].job_id, {"images": []})
        j.mark_downloaded(rows[3].job_id, [])
    with open_journal(path) as j:
        live = j.attached()
        assert [(r.request_id, r.state) for r in live] == [
            ("req-0", S.QUEUED),
            ("req-1", S.RUNNING),
            ("req-2", S.COMPLETED),
        ]
        assert live[0].handle == handle("req-0")
        assert [r.request_id for r in j.in_flight()] == ["req-0", "req-1"]


def test_set_result_on_a_completed_job_keeps_the_result(path: Path) -> None:
    # Status said COMPLETED first; the result arrives in a second call.
    with open_journal(path) as j:
        j.add_jobs([spec(0)])
        (row,) = j.claim(1)
        j.set_submitted(row.job_id, handle("r"))
        j.transition(row.job_id, S.COMPLETED)
        j.set_result(row.job_id, {"images": [{"url": "u"}]})
        got = j.get(row.job_id)
        assert got is not None and got.result == {"images": [{"url": "u"}]}
        assert j.counts()[S.COMPLETED] == 1


def test_mark_downloaded_drops_inline_image_data_but_keeps_the_rest(path: Path) -> None:
    big = "data:image/png;base64," + "A" * 50_000
    with open_journal(path) as j:
        j.add_jobs([spec(0)])
        (row,) = j.claim(1)
        j.set_submitted(row.job_id, handle("r"))
        j.set_result(row.job_id, {"images": [{"url": big, "width": 8}], "seed": 3})
        assert j.get(row.job_id).result["images"][0]["url"] == big  # type: ignore[union-attr]
        j.mark_downloaded(row.job_id, [{"path": "images/a.png"}])
        kept = j.get(row.job_id).result  # type: ignore[union-attr]
    assert kept is not None and kept["seed"] == 3 and kept["images"][0]["width"] == 8
    assert kept["images"][0]["url"].startswith("data:image/png;base64,<")


def test_retry_failed_puts_final_failures_back_with_fresh_attempts(path: Path) -> None:
    with open_journal(path) as j:
        j.add_jobs([spec(i) for i in range(3)])
        rows = j.claim(3)
        j.fail(rows[0].job_id, "validation", "bad size")
        j.requeue(rows[1].job_id, "runner_disconnected")
        (again,) = j.claim(1)
        j.fail(again.job_id, "runner_disconnected", "gave up")
        assert j.counts()[S.FAILED] == 2
        assert j.retry_failed() == 2
        counts = j.counts()
        assert counts[S.FAILED] == 0 and counts[S.PENDING] == 2
        row = j.get(rows[1].job_id)
        assert row is not None and row.attempts == 0 and row.error is None
        assert j.retry_failed() == 0


def test_failures_are_grouped_by_class_with_the_latest_message(path: Path) -> None:
    clock = FakeClock()
    with open_journal(path, clock=clock) as j:
        j.add_jobs([spec(i) for i in range(4)])
        rows = j.claim(4)
        for r, (cls, msg) in zip(
            rows,
            [("validation", "old"), ("http_500", "boom"), ("validation", "new"), (None, None)],
            strict=True,
        ):
            clock.now += 1
            if cls:
                j.fail(r.job_id, cls, msg or "")
            else:
                j.transition(r.job_id, S.FAILED)
        groups = j.failures_by_class()
    assert [(g.error_class, g.count, g.example) for g in groups] == [
        ("validation", 2, "new"),
        ("http_500", 1, "boom"),
        ("unknown", 1, ""),
    ]
    assert groups[0].example_job_id == rows[2].job_id


def test_events_and_uploads(path: Path) -> None:
    clock = FakeClock(100.0)
    with open_journal(path, clock=clock) as j:
        j.event(None, "resume", "re-attached 3 requests")
        j.event("abc", "retry", "HTTP 503\nrunner_disconnected")
        assert j.events()[-2:] == [
            (100.0, None, "resume", "re-attached 3 requests"),
            (100.0, "abc", "retry", "HTTP 503 runner_disconnected"),
        ]
        assert j.upload_get("e3b0") is None
        j.upload_put("e3b0", "http://cdn/x.png", "image/png", 12)
        up = j.upload_get("e3b0")
        assert up is not None and (up.url, up.bytes, up.uploaded_at) == (
            "http://cdn/x.png",
            12,
            100.0,
        )


def test_iter_jobs_streams_in_fifo_order_filtered_by_state(path: Path) -> None:
    with open_journal(path) as j:
        j.add_jobs([spec(i) for i in range(25)])
        j.claim(3)
        ids = [r.spec.prompt_id for r in j.iter_jobs(chunk=4)]
        assert ids == [f"p{i}" for i in range(25)]
        pending = [r.spec.prompt_id for r in j.iter_jobs(S.PENDING, chunk=4)]
        assert pending == [f"p{i}" for i in range(3, 25)]
        assert list(j.iter_jobs(S.FAILED)) == []


def test_close_records_the_end_of_the_run(path: Path) -> None:
    clock = FakeClock(10.0)
    j = open_journal(path, clock=clock)
    clock.now = 20.0
    j.close(exit_code=3)
    j.close()  # idempotent
    with Journal.open_readonly(path) as r:
        (run,) = r.runs()
    assert (run.started_at, run.ended_at, run.exit_code) == (10.0, 20.0, 3)
    with pytest.raises(JournalError, match="closed"):
        j.claim(1)


def test_a_charge_is_never_undone(path: Path) -> None:
    # fal charged for the completion; a download that then fails for good does not refund it.
    with open_journal(path) as j:
        j.add_jobs([spec(0), spec(1)], cost_of=lambda s: 0.5)
        a, b = j.claim(2)
        for r in (a, b):
            j.set_submitted(r.job_id, handle(r.spec.prompt_id))
            j.set_result(r.job_id, {"images": []})
        j.set_result(a.job_id, {"images": []})  # fetched twice, charged once
        j.fail(a.job_id, "truncated", "download kept failing")
        j.mark_downloaded(b.job_id, [])
        j.transition(b.job_id, S.PENDING)  # its files vanished: it will run again
        assert j.spent_estimate() == pytest.approx(1.0)
        assert j.tallies().spent == pytest.approx(1.0)
