"""A saved image deleted or broken is repaired by the next run (docs/outputs.md, Repair), end
to end against `batchgen emulator` on loopback (it outlives the runs, as fal does, so its own
counters say whether anything was submitted again): fetched again from the stored result
while fal still has the media, made again (counted as lost) once it has not; `status` says
so before the repair and not after; `--verify` finds what keeps the size."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from test_run_support import emulator_thread, states, stats, write_manifest

from batchgen.cli import main
from batchgen.journal.writer import JOURNAL_NAME, Journal
from batchgen.outputs.checks import sha256_file
from batchgen.outputs.index import METADATA, read_rows
from batchgen.planning.jobs import JobState

S = JobState


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "BATCHGEN_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FAL_KEY", "key-repair-test")


def _recorded(out: Path) -> dict[str, str]:
    """file name -> the sha256 the journal recorded at download."""
    with Journal.open_readonly(out / JOURNAL_NAME) as j:
        return {
            f["file_name"]: f["sha256"]
            for r in j.iter_jobs(S.DOWNLOADED)
            for f in (r.files if isinstance(r.files, list) else [])
        }


def _lost(out: Path) -> int:
    with Journal.open_readonly(out / JOURNAL_NAME) as j:
        return sum(r.lost for r in j.iter_jobs())


def _status(out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, dict[str, object]]:
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert main(["status", str(out), "--json"]) == 0
    return text, json.loads(capsys.readouterr().out)


def _whole(out: Path, n: int) -> None:
    """n images, each in the index once, each file the one the journal recorded."""
    rows = list(read_rows(out / METADATA))
    names = [r["file_name"] for r in rows]
    assert len(names) == len(set(names)) == n
    recorded = _recorded(out)
    assert set(recorded) == set(names)
    for r in rows:
        assert sha256_file(out / r["file_name"])[1] == recorded[r["file_name"]] == r["sha256"]


def _run(m: Path, url: str, out: Path, *extra: str) -> int:
    return main(["run", str(m), "--endpoint", url, "--out", str(out), "--quiet", *extra])


def test_a_deleted_and_a_broken_image_are_fetched_again_without_a_submit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m, out = write_manifest(tmp_path, 6), tmp_path / "out"
    # results (and their media) kept an hour: fetched from the stored URLs themselves
    with emulator_thread(time_scale=0.001, retention_scale=1.0) as url:
        assert _run(m, url, out) == 0
        capsys.readouterr()
        names = sorted(_recorded(out))
        (out / names[0]).unlink()
        (out / names[1]).write_bytes(b"junk")
        # `batchgen index` sees both and drops their rows (the user's report); status too
        assert main(["index", str(out)]) == 1
        text, doc = _status(out, capsys)
        assert "2 downloaded images missing or broken on disk: run again to repair" in text
        assert "every job is downloaded" not in text
        assert doc["broken_files"] == 2
        before = stats(url)["submits_accepted"]
        assert _run(m, url, out) == 0
        err = capsys.readouterr().err
        after = stats(url)["submits_accepted"]
    assert after == before == 6  # fetched from the stored results, nothing sent again
    assert "2 saved images missing or broken on disk: fetched again from their results" in err
    assert "read from fal's history" not in err
    assert states(out) == {S.DOWNLOADED: 6} and _lost(out) == 0
    _whole(out, 6)
    text, doc = _status(out, capsys)
    assert "missing or broken" not in text and "finished: every job is downloaded" in text
    assert doc["broken_files"] == 0
    assert "saved images missing or broken" in (out / "run.log").read_text()


def test_verify_finds_a_same_size_change_the_cheap_check_misses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m, out = write_manifest(tmp_path, 3), tmp_path / "out"
    with emulator_thread(time_scale=0.001) as url:
        assert _run(m, url, out) == 0
        name = sorted(_recorded(out))[0]
        path = out / name
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one byte flipped: the same size
        path.write_bytes(bytes(data))
        assert _run(m, url, out) == 0  # the cheap check: nothing seen, nothing done
        assert path.read_bytes() == bytes(data)
        capsys.readouterr()
        assert _run(m, url, out, "--verify") == 0
        err = capsys.readouterr().err
        submits = stats(url)["submits_accepted"]
    assert "1 saved image missing or broken on disk: fetched again" in err
    assert submits == 3
    _whole(out, 3)


@pytest.mark.timeout(120)
def test_media_gone_the_job_is_made_again_and_counted_lost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m, out = write_manifest(tmp_path, 3), tmp_path / "out"
    # --media-expiry 600 s and the queue's results kept 1 s: the images are gone after 1.2 s
    config = {"time_scale": 0.001, "retention_scale": 0.002, "result_ttl_s": 1.0}
    with emulator_thread(**config) as url:
        assert _run(m, url, out, "--media-expiry", "600") == 0
        (out / sorted(_recorded(out))[0]).unlink()
        time.sleep(2.0)
        capsys.readouterr()
        assert _run(m, url, out, "--media-expiry", "600") == 0
        err = capsys.readouterr().err
        submits = stats(url)["submits_accepted"]
    assert "1 saved image missing or broken on disk: fetched again" in err
    assert submits == 4  # the one whose media were gone was made again...
    assert _lost(out) == 1  # ...and counted as a lost result
    assert "lost results 1" in err
    assert states(out) == {S.DOWNLOADED: 3}
    _whole(out, 3)


def test_a_rehearsal_s_broken_images_are_made_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m, out = write_manifest(tmp_path, 4), tmp_path / "out"
    args = ["run", str(m), "--emulate", "--time-scale", "0", "--out", str(out), "--quiet"]
    assert main(args) == 0
    names = sorted(_recorded(out))
    (out / names[0]).unlink()
    (out / names[1]).write_bytes(b"x" * 10)
    capsys.readouterr()
    assert main(args) == 0
    assert "2 saved images missing or broken on disk: made again" in capsys.readouterr().err
    assert states(out) == {S.DOWNLOADED: 4}
    _whole(out, 4)


@pytest.mark.parametrize("emulate", [False, True])
def test_one_image_of_two_one_row_per_image_after(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], emulate: bool
) -> None:
    m, out = write_manifest(tmp_path, 2), tmp_path / "out"
    m.write_text(m.read_text().replace("  quality: low\n", "  quality: low\n  num_images: 2\n"))
    with emulator_thread(time_scale=0.001) as url:
        where = ["--emulate", "--time-scale", "0"] if emulate else ["--endpoint", url]
        args = ["run", str(m), *where, "--out", str(out), "--quiet"]
        assert main(args) == 0
        _whole(out, 4)
        (out / sorted(_recorded(out))[0]).unlink()
        assert main(args) == 0
        submits = stats(url)["submits_accepted"]
    assert "1 saved image missing or broken on disk" in capsys.readouterr().err
    assert submits == (0 if emulate else 2)
    _whole(out, 4)


def test_status_leaves_the_files_of_a_huge_folder_unchecked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    m, out = write_manifest(tmp_path, 2), tmp_path / "out"
    assert main(["run", str(m), "--emulate", "--time-scale", "0", "--out", str(out)]) == 0
    (out / sorted(_recorded(out))[0]).unlink()
    monkeypatch.setattr("batchgen.outputs.status.CHECK_FILES_MAX_JOBS", 1)
    capsys.readouterr()
    text, doc = _status(out, capsys)
    assert doc["broken_files"] is None and "missing or broken" not in text
