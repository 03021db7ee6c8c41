"""fal's history as the safety net of a run, end to end against `batchgen emulator` on
loopback (it outlives the runs, as fal does): a submit whose answer was lost is found there,
not paid for again; a result the queue forgot is read from it; what it cannot tell is sent
again and counted, with one notice; and `batchgen reconcile` then agrees with the bill."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from test_crash import _wait_for_requests_in_flight
from test_run_signals import REPO, command, env
from test_run_support import emulator_thread, states, stats, write_manifest
from test_scheduler_support import Rig

from batchgen.cli import main
from batchgen.journal.writer import JOURNAL_NAME, Journal
from batchgen.planning.jobs import JobState
from batchgen.running.events import Failed, Found, HistoryUnavailable, Recovered, SubmitLost

S = JobState
ADMIN = "admin-history-test"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "BATCHGEN_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


def test_a_quarter_of_submit_answers_dropped_pays_for_nothing_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAL_KEY", ADMIN)  # the emulator's admin key: reconcile reads the bill
    m = write_manifest(tmp_path, 60)
    out = tmp_path / "out"
    with emulator_thread(time_scale=0.01, faults="submitdrop=0.25", seed=3) as url:
        assert main(["run", str(m), "--endpoint", url, "--out", str(out), "--quiet"]) == 0
        s = stats(url)
        err = capsys.readouterr().err
        assert s["submits_dropped"] >= 8  # a quarter of 60, give or take the dice
        # every input reached the server once: each lost answer's request was found
        assert (s["submits_accepted"], s["duplicate_submits"], s["billed_requests"]) == (60, 0, 60)
        dropped = s["submits_dropped"]
        assert f"submits without an answer {dropped}: {dropped} found in fal's history" in err
        assert "possible duplicate charges 0" in err
        assert states(out) == {S.DOWNLOADED: 60}
        log = (out / "run.log").read_text()
        assert log.count(" found: job ") == dropped
        assert main(["reconcile", str(out), "--json"]) == 0
        bill = json.loads(capsys.readouterr().out)
    assert bill["billed_requests"] == 60 and bill["unknown_requests"] == []
    assert bill["billed_usd"] == pytest.approx(s["billed_usd"])
    assert bill["estimated_usd"] == pytest.approx(bill["billed_usd"])
    assert bill["billed_twice"] == [] and bill["possible_duplicates"] == 0
    assert ADMIN not in log


@pytest.mark.timeout(120)
def test_killed_left_until_results_expired_then_resumed_sends_nothing_again(
    tmp_path: Path,
) -> None:
    m = write_manifest(tmp_path, 40)
    out = tmp_path / "out"
    ttl = 1.0
    with emulator_thread(time_scale=0.05, concurrency_limit=8, result_ttl_s=ttl) as url:
        cmd = command(m, url, out, "--concurrency", "8")
        proc = subprocess.Popen(cmd, env=env(), cwd=REPO, stderr=subprocess.DEVNULL)
        _wait_for_requests_in_flight(out, proc)
        time.sleep(0.5)
        proc.kill()
        proc.wait()
        before = stats(url)
        left = states(out)
        assert left[S.QUEUED] + left[S.RUNNING] + left[S.COMPLETED] >= 2
        time.sleep(ttl + 2.0)  # every request the killed run made has ended and expired
        assert stats(url)["requests_kept"] == 0
        final = subprocess.run(cmd, env=env(), cwd=REPO, capture_output=True, timeout=90)
        after = stats(url)
    assert final.returncode == 0, final.stderr.decode()
    assert states(out) == {S.DOWNLOADED: 40}
    # what the server had made before the kill was read back, not made again
    assert after["duplicate_submits"] == 0
    assert after["submits_accepted"] == 40 >= before["submits_accepted"]
    with Journal.open_readonly(out / JOURNAL_NAME) as j:
        assert sum(r.lost for r in j.iter_jobs()) == 0
        read = [e for e in j.events() if e[2] == "history"]
    assert read  # the expired results came from fal's history
    assert "results read from fal's history" in final.stderr.decode()


async def test_a_history_that_keeps_no_inputs_sends_again_counted_with_one_notice(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, 12, emulator={"faults": "submitdrop=0.4", "seed": 2})
    r = await rig.run(concurrency="4", no_store_io=True, max_attempts=6)
    s = rig.stats()
    lost = r.of(SubmitLost)
    assert len(lost) == s["submits_dropped"] >= 2
    assert r.of(Found) == []
    (notice,) = r.of(HistoryUnavailable)  # said once, however many it concerns
    assert "--no-store-io" in notice.why
    # sent again without knowing: each resend counted as a possible duplicate charge, and each
    # was one (the emulator made every dropped one); a job out of attempts is failed, not sent
    failed = [e for e in r.of(Failed) if e.reason == "submit_dropped"]
    assert len(lost) == r.sched.stats.possible_duplicates + len(failed)
    assert r.sched.stats.possible_duplicates == s["duplicate_submits"]
    with rig.journal() as j:
        assert j.tallies().possible_duplicates == s["duplicate_submits"]


async def test_a_lost_answer_is_waited_for_while_its_request_still_runs(tmp_path: Path) -> None:
    # A slow request (high quality, a real pace) whose answer is lost is not listed until it
    # ends: the look-up keeps looking instead of sending it again.
    rig = Rig(tmp_path, 1, emulator={"faults": "submitdrop=1", "seed": 1, "time_scale": 0.05})
    r = await rig.run(concurrency="1")
    s = rig.stats()
    assert (s["submits_accepted"], s["duplicate_submits"]) == (1, 0)
    assert len(r.of(Found)) == 1 and r.sched.stats.lookups >= 2
    assert set(rig.states()) == {S.DOWNLOADED}


async def test_an_expired_result_without_a_stored_payload_is_made_again_as_lost(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, 2, emulator={"result_ttl_s": 1e-6})
    r = await rig.run(concurrency="2", no_store_io=True, max_attempts=3)
    assert r.of(Recovered) == []
    with rig.journal() as j:
        assert all(row.lost >= 1 for row in j.iter_jobs())
