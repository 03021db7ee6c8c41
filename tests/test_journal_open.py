"""Opening a journal: versions, manifests, secrets, one writer, readers during a run."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from test_journal_support import handle, open_journal, spec

from batchgen.errors import JournalError
from batchgen.journal.writer import Journal, ManifestChanged, writer_pid
from batchgen.planning.jobs import JobSpec, JobState, job_id

S = JobState


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "out" / "journal.sqlite"


def test_a_journal_of_another_schema_version_is_refused_clearly(path: Path) -> None:
    with open_journal(path):
        pass
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(JournalError, match=r"schema 99; this batchgen \(0\.1\.0\) reads schema 4"):
        open_journal(path)
    with pytest.raises(JournalError, match="schema 99"):
        Journal.open_readonly(path)
    # The refusal leaves the folder usable by the right version: the lock was released.
    assert writer_pid(path) is None


def test_files_that_are_not_journals_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "a" / "journal.sqlite"
    garbage.parent.mkdir()
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(JournalError, match="not a batchgen journal"):
        open_journal(garbage)
    other = tmp_path / "b" / "journal.sqlite"
    other.parent.mkdir()
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(JournalError, match="not a batchgen journal"):
        open_journal(other)


def test_a_different_manifest_in_the_same_folder_is_refused_unless_allowed(
    path: Path, tmp_path: Path
) -> None:
    cats, dogs = str(tmp_path / "cats.yaml"), str(tmp_path / "dogs.yaml")
    with open_journal(path, sha="a" * 64, manifest_path=cats) as j:
        j.add_jobs([spec(0)])
    with pytest.raises(ManifestChanged) as err:
        open_journal(path, sha="b" * 64, manifest_path=dogs)
    assert f"another manifest ({cats}, sha256 aaaaaaaaaaaa)" in str(err.value)
    assert dogs in str(err.value)
    assert err.value.recorded_path == cats
    assert err.value.exit_code == 2
    with open_journal(path, sha="b" * 64, manifest_path=dogs, allow_manifest_change=True) as j:
        assert j.needs_plan
    # The new manifest is now the folder's: reopening it needs no permission.
    with open_journal(path, sha="b" * 64, manifest_path=dogs) as j:
        assert j.needs_plan  # the allowed run above never planned
        j.add_jobs([spec(0)])
    with open_journal(path, sha="b" * 64, manifest_path=dogs) as j:
        assert not j.needs_plan


def test_editing_the_same_manifest_file_re_plans_without_asking(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with open_journal(path, sha="a" * 64, manifest_path="cats.yaml") as j:
        j.add_jobs([spec(0)])
    # Run again from another folder, by another relative path to the same file.
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    with open_journal(path, sha="e" * 64, manifest_path="../cats.yaml") as j:
        assert j.needs_plan
        assert j.add_jobs([spec(0), spec(1)]).new == 1
        (run,) = j.runs()[-1:]
        assert run.manifest_path == str(tmp_path / "cats.yaml")
        assert "manifest changed: sha256 aaaaaaaaaaaa -> eeeeeeeeeeee" in j.events()[-2][3]


def test_a_new_batchgen_version_re_plans(path: Path) -> None:
    with open_journal(path) as j:
        j.add_jobs([spec(0)])
    with open_journal(path, version="0.2.0") as j:
        assert j.needs_plan
    runs = Journal.open_readonly(path)
    try:
        assert [r.version for r in runs.runs()] == ["0.1.0", "0.2.0"]
    finally:
        runs.close()


def test_a_job_with_a_secret_is_refused_and_never_written(path: Path) -> None:
    key = "sk-live-do-not-store-1234"
    inp = {"prompt": "x", "openai_api_key": key}
    bad = JobSpec(job_id=job_id("e", inp, 0), endpoint="e", input=inp, byok=True)
    with open_journal(path) as j:
        with pytest.raises(JournalError, match=r"input\.openai_api_key") as err:
            j.add_jobs([spec(0), bad])
        assert key not in str(err.value)
    for f in path.parent.iterdir():
        assert key.encode() not in f.read_bytes()


def test_settings_are_recorded_without_credentials(path: Path) -> None:
    settings = {"concurrency": 8, "fal_key": "fal-secret", "auth": {"api_token": "t0k"}}
    with open_journal(path, settings=settings):
        pass
    with Journal.open_readonly(path) as r:
        (run,) = r.runs()
    assert run.settings == {"concurrency": 8, "auth": {}}
    for f in path.parent.iterdir():
        assert b"fal-secret" not in f.read_bytes() and b"t0k" not in f.read_bytes()


def test_only_one_writer_per_folder(path: Path) -> None:
    import os

    with open_journal(path):
        assert writer_pid(path) == os.getpid()
        with pytest.raises(JournalError, match=f"another batchgen process \\(pid {os.getpid()}\\)"):
            open_journal(path)
    assert writer_pid(path) is None
    with open_journal(path):  # released on close
        pass


def test_a_reader_sees_commits_while_the_writer_keeps_going(path: Path) -> None:
    with open_journal(path) as j:
        j.add_jobs([spec(i) for i in range(3)])
        with Journal.open_readonly(path) as reader:
            (row,) = j.claim(1)
            j.set_submitted(row.job_id, handle("req-live"))
            assert [r.request_id for r in reader.in_flight()] == ["req-live"]
            assert reader.counts()[S.PENDING] == 2
            j.claim(2)  # the reader holds no lock that blocks the writer
            assert reader.counts()[S.SUBMITTING] == 2
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                reader._db().execute("DELETE FROM jobs")


def test_a_reader_opens_a_cleanly_closed_journal(path: Path) -> None:
    with open_journal(path) as j:
        j.add_jobs([spec(0)])
    # After the last writer closes, SQLite checkpoints and removes the -wal and -shm files.
    with Journal.open_readonly(path) as r:
        assert r.counts()[S.PENDING] == 1


def test_no_journal_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="no journal at"):
        Journal.open_readonly(tmp_path / "journal.sqlite")


def test_the_public_api_other_modules_build_on() -> None:
    """docs/interfaces.md pins these; a change here must change every caller with it."""
    import inspect

    def params(f: object) -> list[str]:
        return [
            f"{p.name}{'=' if p.default is not p.empty else ''}"
            for p in inspect.signature(f).parameters.values()  # type: ignore[arg-type]
        ]

    assert params(Journal.open)[:4] == ["path", "manifest_sha256", "version", "settings"]
    assert {"clock=", "manifest_path=", "allow_manifest_change="} <= set(params(Journal.open))
    assert params(Journal.add_jobs) == ["self", "specs", "cost_of="]
    assert params(Journal.claim) == ["self", "limit", "origin="]
    assert params(Journal.set_submitted) == ["self", "job_id", "handle", "origin=", "sync=", "at="]
    assert params(Journal.sync_wal) == ["self"]
    assert params(Journal.transition) == [
        "self",
        "job_id",
        "new",
        "error_class=",
        "error=",
        "bump_attempts=",
    ]
    assert params(Journal.requeue) == ["self", "job_id", "reason", "lost=", "dup="]
    assert params(Journal.fail) == ["self", "job_id", "error_class", "message"]
    assert params(Journal.event) == ["self", "job_id", "kind", "detail"]
    others = "set_result mark_downloaded retry_failed attached interrupted_submits counts"
    others += " spent_estimate in_flight_estimate failures_by_class upload_get upload_put"
    for name in (others + " close open_readonly iter_jobs tallies get").split():
        assert callable(getattr(Journal, name))


def test_a_reader_snapshot_is_one_consistent_moment(path: Path) -> None:
    with open_journal(path) as j, Journal.open_readonly(path) as reader:
        j.add_jobs([spec(i) for i in range(3)])
        with reader.snapshot():
            before = reader.counts()
            j.claim(2)  # the writer is not blocked by the open snapshot
            assert reader.counts() == before
        assert reader.counts()[S.SUBMITTING] == 2


def _as_schema_1(path: Path) -> None:
    """Turn a journal into what batchgen wrote before schema 2 (no origin columns)."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("ALTER TABLE jobs DROP COLUMN origin")
        conn.execute("ALTER TABLE jobs DROP COLUMN attempt_at")
        conn.execute("ALTER TABLE jobs DROP COLUMN sent_key")
        conn.execute("ALTER TABLE uploads DROP COLUMN origin")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.close()


def test_a_schema_1_journal_is_read_as_it_is_and_migrated_by_the_next_run(path: Path) -> None:
    settings = {"target": "emulate", "endpoint": None}
    with open_journal(path, settings=settings) as j:
        j.add_jobs([spec(i) for i in range(3)], cost_of=lambda s: 0.25)
        done, waiting, _ = j.claim(3)
        j.set_submitted(done.job_id, handle("req-0"))
        j.set_result(done.job_id, {"images": []})
        j.mark_downloaded(done.job_id, [])
        j.transition(waiting.job_id, S.PENDING)  # nothing was paid for it
        j.upload_put("e3b0", "http://127.0.0.1:1/files/x.png", "image/png", 12)
    _as_schema_1(path)
    # `batchgen status` reads an old folder without writing to it.
    with Journal.open_readonly(path) as r:
        assert r.counts()[S.DOWNLOADED] == 1 and r.get(done.job_id).origin is None  # type: ignore[union-attr]
    assert sqlite3.connect(path).execute("SELECT value FROM meta").fetchone() == ("1",)
    # The next run migrates in place: work done is given the folder's last origin.
    with open_journal(path, settings=settings) as j:
        assert j.get(done.job_id).origin == "emulator"  # type: ignore[union-attr]
        assert j.get(waiting.job_id).origin is None  # type: ignore[union-attr]
        assert j.upload_get("e3b0").origin == "emulator"  # type: ignore[union-attr]
        assert j.tallies().rehearsal == pytest.approx(0.25) and j.tallies().spent == 0
        assert ("migrate", "journal schema 1 -> 4") in {(e[2], e[3]) for e in j.events()}


def test_a_schema_3_lost_submit_is_migrated_as_sent_with_no_record_of_what(path: Path) -> None:
    """A journal an older batchgen left with a POST that may have gone out: the look-up in
    fal's history cannot match it (nothing says what was sent), so it is sent again and
    counted, as that version would have done."""
    with open_journal(path) as j:
        j.add_jobs([spec(i) for i in range(2)])
        lost, _ = j.claim(2)
        j.transition(lost.job_id, S.UNKNOWN)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("ALTER TABLE jobs DROP COLUMN attempt_at")
        conn.execute("ALTER TABLE jobs DROP COLUMN sent_key")
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    conn.close()
    with Journal.open_readonly(path) as r:  # `status` reads it as it is
        assert r.counts()[S.UNKNOWN] == 1
    with open_journal(path) as j:
        (unknown,) = j.interrupted_submits()  # the SUBMITTING one: sent, for all it knows
        rows = {r.job_id: r for r in j.lost_submits()}
        assert set(rows) == {lost.job_id, unknown.job_id}
        assert not any(r.known for r in rows.values())
