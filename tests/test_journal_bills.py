"""The journal's record of what fal billed (schema 3): the request trail read back from the
events, the bills table, its migration, and the one write outside a run."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from test_journal_support import handle, open_journal, spec

from batchgen.errors import JournalError
from batchgen.journal.bills import StoredBill, record_bills
from batchgen.journal.writer import Journal
from batchgen.planning.jobs import JobState

S = JobState
FAL = {"target": "fal", "endpoint": None}


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "out" / "journal.sqlite"


def test_the_trail_names_every_request_and_those_the_folder_counts_paid(path: Path) -> None:
    with open_journal(path, settings=FAL) as j:
        j.add_jobs([spec(i) for i in range(4)], cost_of=lambda s: 0.01)
        done, lost, failed, unknown = j.claim(4)
        j.set_submitted(done.job_id, handle("r-done"))
        j.set_result(done.job_id, {"images": []})
        j.mark_downloaded(done.job_id, [])
        j.set_submitted(lost.job_id, handle("r-lost"))
        j.transition(lost.job_id, S.RUNNING)
        j.requeue(lost.job_id, "result expired", lost=True)  # completed unseen: paid
        j.set_submitted(failed.job_id, handle("r-failed"))
        j.requeue(failed.job_id, "runner_disconnected")  # not paid: fal bills no 5xx
        assert {r.job_id for r in j.claim(2)} == {lost.job_id, failed.job_id}
        j.set_submitted(failed.job_id, handle("r-failed-2"))
        j.transition(unknown.job_id, S.UNKNOWN)  # no request id ever came
        trail = j.request_trail()
    assert trail.owners == {
        "r-done": done.job_id,
        "r-lost": lost.job_id,
        "r-failed": failed.job_id,
        "r-failed-2": failed.job_id,
    }
    assert trail.paid == {"r-done", "r-lost"}
    assert set(trail.origins.values()) == {"fal"}


def test_each_request_takes_the_origin_of_the_run_that_made_it(path: Path) -> None:
    with open_journal(path, settings={"target": "emulate", "endpoint": None}) as j:
        j.add_jobs([spec(0)])
        (row,) = j.claim(1)
        j.set_submitted(row.job_id, handle("r-rehearsal"))
        j.transition(row.job_id, S.PENDING)
    url = "http://127.0.0.1:9"
    with open_journal(path, settings={"target": "endpoint", "endpoint": url}) as j:
        (row,) = j.claim(1)
        j.set_submitted(row.job_id, handle("r-real"))
    with Journal.open_readonly(path) as r:
        trail = r.request_trail()
    assert trail.origins == {"r-rehearsal": "emulator", "r-real": f"endpoint:{url}"}


def bill(rid: str, n: int = 0, cost: float = 0.01, job: str | None = None) -> StoredBill:
    return StoredBill(rid, n, job, "openai/gpt-image-2", "2026-01-01T00:00:00+00:00", cost)


def test_bills_are_upserted_with_one_event_per_fetch(path: Path) -> None:
    with open_journal(path):
        pass
    record_bills(path, "fal", [bill("r-1", job="j1"), bill("r-2")], "billed $0.02", now=5.0)
    record_bills(path, "fal", [bill("r-1", cost=0.03, job="j1")], "billed $0.03", now=6.0)
    record_bills(path, "http://127.0.0.1:9", [bill("r-9")], "elsewhere", now=7.0)
    with Journal.open_readonly(path) as r:
        assert r.bills("fal") == [bill("r-1", cost=0.03, job="j1"), bill("r-2")]
        assert [b.request_id for b in r.bills()] == ["r-1", "r-2", "r-9"]
        events = [(e[2], e[3]) for e in r.events() if e[2] == "reconcile"]
    assert events == [
        ("reconcile", "billed $0.02"),
        ("reconcile", "billed $0.03"),
        ("reconcile", "elsewhere"),
    ]


def _as_schema_2(path: Path) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("DROP TABLE bills")
        conn.execute("ALTER TABLE jobs DROP COLUMN attempt_at")
        conn.execute("ALTER TABLE jobs DROP COLUMN sent_key")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    conn.close()


def test_a_schema_2_journal_is_read_as_it_is_and_migrated_by_the_first_write(
    path: Path,
) -> None:
    with open_journal(path):
        pass
    _as_schema_2(path)
    with Journal.open_readonly(path) as r:  # `status` on an old folder writes nothing
        assert r.bills() == []
    assert sqlite3.connect(path).execute("SELECT value FROM meta").fetchone() == ("2",)
    record_bills(path, "fal", [bill("r-1")], "billed", now=1.0)
    with Journal.open_readonly(path) as r:
        assert r.bills() == [bill("r-1")]
        assert ("migrate", "journal schema 2 -> 4") in {(e[2], e[3]) for e in r.events()}
    _as_schema_2(path)
    with open_journal(path) as j:  # a run migrates it too
        assert j.bills() == []


def test_bills_are_not_written_while_a_run_holds_the_folder(path: Path) -> None:
    with open_journal(path), pytest.raises(JournalError, match="another batchgen process"):
        record_bills(path, "fal", [bill("r-1")], "billed")
    with Journal.open_readonly(path) as r:
        assert r.bills() == []


def test_bills_need_an_existing_journal(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="no journal"):
        record_bills(tmp_path / "journal.sqlite", "fal", [], "nothing")
    assert not (tmp_path / "journal.sqlite").exists()
