"""`batchgen run` through `main(argv)`: exit codes, the output folder, secrets kept out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_run_support import emulator_thread, states, stats, write_manifest

from batchgen.cli import main
from batchgen.journal.writer import JOURNAL_NAME, Journal
from batchgen.outputs.index import read_failures, read_index
from batchgen.planning.jobs import JobState

S = JobState
SECRET = "kid-1234:s3cr3t-value-that-must-not-leak"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "BATCHGEN_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


def test_emulate_clean_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = write_manifest(tmp_path, 6)
    out = tmp_path / "out"
    code = main(["run", str(m), "--emulate", "--out", str(out), "--quiet", "--time-scale", "0.01"])
    assert code == 0
    assert states(out) == {S.DOWNLOADED: 6}
    assert (out / "manifest.yaml").read_bytes() == m.read_bytes()
    assert len(read_index(out)) == 6
    assert (out / "index.html").is_file()
    log = (out / "run.log").read_text()
    assert "plan: 6 new jobs" in log and "exit 0" in log
    err = capsys.readouterr().err
    assert "done 6, failed 0" in err


def test_default_out_is_outputs_manifest_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = write_manifest(tmp_path / "m", 2, name="tiny")
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(m), "--emulate", "--quiet", "--time-scale", "0"]) == 0
    assert states(tmp_path / "outputs" / "tiny") == {S.DOWNLOADED: 2}


def test_missing_key_exits_2_before_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = write_manifest(tmp_path, 2)
    out = tmp_path / "out"
    assert main(["run", str(m), "--out", str(out)]) == 2
    assert "FAL_KEY" in capsys.readouterr().err
    assert not out.exists()  # nothing written, nothing submitted


def test_key_never_written_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAL_KEY", SECRET)
    m = write_manifest(tmp_path, 4)
    out = tmp_path / "out"
    with emulator_thread(time_scale=0.01, faults="submit429=0.3,status500=0.2", seed=2) as url:
        code = main(["run", str(m), "--endpoint", url, "--out", str(out), "--quiet"])
    assert code == 0
    err = capsys.readouterr().err
    for part in (SECRET, "s3cr3t"):
        assert part not in err
        for f in out.rglob("*"):
            if f.is_file():
                assert part.encode() not in f.read_bytes(), f


def test_budget_exit_3_then_continue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = write_manifest(tmp_path, 8)  # $0.01 a job
    out = tmp_path / "out"
    with emulator_thread(time_scale=0.01) as url:
        args = ["run", str(m), "--endpoint", url, "--out", str(out), "--quiet"]
        assert main([*args, "--concurrency", "2", "--max-cost", "0.035"]) == 3
        err = capsys.readouterr().err
        assert "stopped at the budget (--max-cost): raise it to continue" in err
        assert "--concurrency 2 --max-cost USD" in err  # the same command, its cap to raise
        assert states(out) == {S.DOWNLOADED: 3, S.PENDING: 5}
        assert main([*args, "--max-cost", "1"]) == 0
        assert states(out) == {S.DOWNLOADED: 8}
        s = stats(url)
    assert s["submits_accepted"] == 8 and s["duplicate_submits"] == 0


def test_flaky_emulate_ends_with_recorded_failures(tmp_path: Path) -> None:
    m = write_manifest(tmp_path, 30)
    out = tmp_path / "out"
    code = main(
        [
            "run",
            str(m),
            "--emulate",
            "--faults",
            "flaky,content_policy=0.2",
            "--out",
            str(out),
            "--quiet",
            "--time-scale",
            "0.01",
        ]
    )
    st = states(out)
    assert set(st) <= {S.DOWNLOADED, S.FAILED}
    assert st[S.FAILED] >= 1
    assert code == 1  # some jobs failed for good
    assert len(read_failures(out)) == st[S.FAILED]
    assert "failed:" in (out / "run.log").read_text()


def test_retry_failed_flag(tmp_path: Path) -> None:
    m = write_manifest(tmp_path, 4)
    out = tmp_path / "out"
    base = ["run", str(m), "--emulate", "--out", str(out), "--quiet", "--time-scale", "0"]
    assert main([*base, "--faults", "content_policy=1"]) == 1
    assert states(out) == {S.FAILED: 4}
    assert main(base) == 1  # failures are final until asked
    assert main([*base, "--retry-failed"]) == 0
    assert states(out) == {S.DOWNLOADED: 4}


def test_bad_flags_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = write_manifest(tmp_path, 1)
    assert main(["run", str(m), "--emulate", "--concurrency", "zero"]) == 2
    assert "--concurrency" in capsys.readouterr().err
    assert main(["run", str(m), "--endpoint", "http://127.0.0.1:9", "--faults", "flaky"]) == 2


def test_max_image_bytes_caps_each_image(tmp_path: Path) -> None:
    """The flag reaches the downloader: an image one byte over the cap fails its job (recorded,
    nothing left in place), an image exactly at the cap is kept."""
    m = write_manifest(tmp_path, 2)
    free = tmp_path / "free"
    base = ["run", str(m), "--emulate", "--quiet", "--time-scale", "0"]
    assert main([*base, "--out", str(free)]) == 0
    sizes = [r["bytes"] for r in read_index(free)]  # the emulator draws the same bytes again
    assert len(sizes) == 2

    at_cap = tmp_path / "at-cap"
    assert main([*base, "--out", str(at_cap), "--max-image-bytes", str(max(sizes))]) == 0
    assert states(at_cap) == {S.DOWNLOADED: 2}

    under = tmp_path / "under"
    cap = min(sizes) - 1
    assert main([*base, "--out", str(under), "--max-image-bytes", str(cap)]) == 1
    assert states(under) == {S.FAILED: 2}
    failures = read_failures(under)
    assert {f["class"] for f in failures} == {"download_too_large"}
    assert all(str(cap) in f["message"] for f in failures)
    assert read_index(under) == []
    assert [p for p in under.rglob("*") if p.is_file() and "images" in p.parts] == []


def test_seed_picks_which_requests_a_rehearsal_fails(tmp_path: Path) -> None:
    """--seed: the same seed refuses the same jobs (sent in the same order); another seed
    another set."""
    m = write_manifest(tmp_path, 16)
    flags = ["--emulate", "--time-scale", "0", "--faults", "content_policy=0.5", "--quiet"]
    flags += ["--concurrency", "1"]

    def refused(name: str, seed: int) -> set[str]:
        out = tmp_path / name
        assert main(["run", str(m), *flags, "--seed", str(seed), "--out", str(out)]) == 1
        return {row["job_id"] for row in read_failures(out)}

    first = refused("a", 1)
    assert 0 < len(first) < 16
    assert refused("b", 1) == first
    assert refused("c", 2) != first


def test_result_ttl_shorter_than_a_round_trip_loses_every_result(tmp_path: Path) -> None:
    """--result-ttl reaches the in-process emulator: results that expire before they can be
    read, with fal keeping no payloads to read them from instead (--no-store-io), are lost
    work, sent again up to --max-attempts, then failed as lost."""
    m = write_manifest(tmp_path, 2)
    out = tmp_path / "out"
    flags = ["--emulate", "--time-scale", "0", "--quiet", "--max-attempts", "2", "--no-store-io"]
    code = main(["run", str(m), *flags, "--result-ttl", "0.000001", "--out", str(out)])
    assert code == 1
    failures = read_failures(out)
    assert len(failures) == 2
    with Journal.open_readonly(out / JOURNAL_NAME) as j:
        assert all(r.lost >= 1 for r in j.iter_jobs())
        (run,) = j.runs()
    assert run.settings["result_ttl"] == 0.000001
    assert "--result-ttl" in run.settings["resume"]


def test_results_that_expire_at_once_are_read_from_fals_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = write_manifest(tmp_path, 3)
    out = tmp_path / "out"
    flags = ["--emulate", "--time-scale", "0", "--json", "--result-ttl", "0.000001"]
    assert main(["run", str(m), *flags, "--out", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["results_recovered_run"], doc["lost_results_run"], doc["submitted_run"]) == (
        3,
        0,
        3,
    )
    with Journal.open_readonly(out / JOURNAL_NAME) as j:
        assert {(r.state, r.lost, r.submits) for r in j.iter_jobs()} == {(S.DOWNLOADED, 0, 1)}
        assert sum(e[2] == "history" for e in j.events()) == 3


def test_result_ttl_needs_emulate(tmp_path: Path) -> None:
    m = write_manifest(tmp_path, 1)
    code = main(["run", str(m), "--result-ttl", "60", "--out", str(tmp_path / "o")])
    assert code == 2
    assert not (tmp_path / "o").exists()
