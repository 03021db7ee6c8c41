"""`batchgen run --replace-rejected`: one new take of each rejected image, paid for once, kept
through re-runs, re-plans, the budget and a kill, counted by the emulator on loopback."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from test_gallery import card_files, chromium, complete, find_chromium
from test_gallery_support import read_chunk
from test_run_signals import REPO, command, env
from test_run_support import emulator_thread, states, stats, write_manifest

from batchgen.cli import main
from batchgen.journal.writer import JOURNAL_NAME, Journal
from batchgen.outputs.index import read_index
from batchgen.outputs.marks import Mark, Marks, read_marks
from batchgen.planning.jobs import JobState

S = JobState


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "BATCHGEN_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


def _reject(out: Path, n: int, *, skip: int = 0) -> list[dict[str, object]]:
    """Mark ``n`` of the folder's first images (by file name) rejected; their index rows."""
    rows = sorted(read_index(out), key=lambda r: str(r["file_name"]))[skip : skip + n]
    with Marks.open(out) as marks:
        marks.set(
            [(str(r["file_name"]), str(r["job_id"])) for r in rows], Mark.REJECTED, source="test"
        )
    return rows


def _takes(out: Path) -> list[dict[str, object]]:
    return [r for r in read_index(out) if r.get("replaces")]


def test_three_rejected_images_pay_for_three_takes_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = write_manifest(tmp_path, 8)  # $0.01 a job
    out = tmp_path / "out"
    with emulator_thread(time_scale=0.01) as url:
        args = ["run", str(m), "--endpoint", url, "--out", str(out)]
        assert main(args) == 0
        assert stats(url)["submits_accepted"] == 8
        rejected = _reject(out, 3)
        capsys.readouterr()

        assert main([*args, "--replace-rejected"]) == 0
        err = capsys.readouterr().err
        assert "3 rejected images to replace: 3 new takes, ~$0.03" in err
        assert "3 jobs to submit (3 images)" in err
        assert stats(url)["submits_accepted"] == 11
        assert states(out) == {S.DOWNLOADED: 11}

        # the rejected images stay, on disk and marked; each has one take beside it
        marks = read_marks(out)
        for r in rejected:
            assert (out / str(r["file_name"])).is_file()
            assert marks[str(r["file_name"])] is Mark.REJECTED
        takes = {str(t["replaces"]): t for t in _takes(out)}
        assert set(takes) == {str(r["file_name"]) for r in rejected}
        for r in rejected:
            t = takes[str(r["file_name"])]
            assert t["job_id"] != r["job_id"] and (out / str(t["file_name"])).is_file()
            assert (t["variant"], t["prompt"], t["prompt_id"]) == (1, r["prompt"], r["prompt_id"])
        with Journal.open_readonly(out / JOURNAL_NAME) as j:
            specs = {row.job_id: row.spec for row in j.iter_jobs()}
        for r in rejected:
            spec = specs[str(takes[str(r["file_name"])]["job_id"])]
            assert spec.replaces["file_name"] == r["file_name"]
            assert spec.replaces["job_id"] == spec.replaces["root"] == r["job_id"]
            assert dict(spec.input) == dict(specs[str(r["job_id"])].input)  # the same request

        # a plain re-run, and a second --replace-rejected, submit nothing
        assert main(args) == 0
        assert "nothing to submit" in capsys.readouterr().err
        assert main([*args, "--replace-rejected"]) == 0
        err = capsys.readouterr().err
        assert "3 rejected images: no new take (3 replaced before)" in err
        assert "nothing to submit" in err
        assert stats(url)["submits_accepted"] == 11

        # a take rejected in its turn gets one more take, of the same request
        first = takes[str(rejected[0]["file_name"])]
        with Marks.open(out) as marks:
            marks.set(
                [(str(first["file_name"]), str(first["job_id"]))], Mark.REJECTED, source="test"
            )
        assert main([*args, "--replace-rejected"]) == 0
        assert "4 rejected images to replace: 1 new take, ~$0.01 (3 replaced before)" in (
            capsys.readouterr().err
        )
        s = stats(url)
    # a take is the same request again: the emulator sees its input once more, by design
    per_input = sorted(Counter(s["submits_per_input"]).values())
    assert (s["submits_accepted"], per_input) == (12, [1, 1, 1, 1, 1, 2, 2, 3])
    again = [t for t in _takes(out) if t["replaces"] == first["file_name"]]
    assert len(again) == 1 and again[0]["variant"] == 2
    assert len(read_index(out)) == 12
    # the gallery: each take says what it replaces, and the takes sort sits it beside it
    cards = _takes_side_by_side(out)
    replacing = [(i, c) for i, c in enumerate(cards) if c[13]]
    assert len(replacing) == 4
    for i, card in replacing:
        assert cards[i - 1][0] == card[13]


def _takes_side_by_side(out: Path) -> list[list[Any]]:
    """The gallery's cards in the order of its "takes side by side" sort."""
    _, _, records = read_chunk(out / ".gallery" / "r-000000.js")
    _, _, summary = read_chunk(out / ".gallery" / "s-000000.js")
    keys = [summary["dict"]["take"][c] for c in summary["cols"]["take"]]
    return [records[i] for i in sorted(range(len(records)), key=keys.__getitem__)]


def test_a_repeated_combination_takes_the_next_free_variant(tmp_path: Path) -> None:
    m = tmp_path / "r.yaml"
    m.write_text(
        "name: r\nrepeat: 3\ndefaults:\n  quality: low\n  output_format: jpeg\n"
        "  image_size: square_hd\nprompts:\n  - id: p\n    prompt: a lighthouse\n"
    )
    out = tmp_path / "out"
    base = ["run", str(m), "--emulate", "--time-scale", "0", "--out", str(out), "--quiet"]
    assert main(base) == 0
    rows = sorted(read_index(out), key=lambda r: int(r["variant"]))
    with Marks.open(out) as marks:  # takes 0 and 1 of the same request
        marks.set([(r["file_name"], r["job_id"]) for r in rows[:2]], Mark.REJECTED, source="test")
    assert main([*base, "--replace-rejected"]) == 0
    assert sorted(int(t["variant"]) for t in _takes(out)) == [3, 4]
    assert states(out) == {S.DOWNLOADED: 5}


def test_max_cost_below_the_takes_stops_them_as_the_budget_does_then_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = write_manifest(tmp_path, 8)
    out = tmp_path / "out"
    with emulator_thread(time_scale=0.01) as url:
        args = ["run", str(m), "--endpoint", url, "--out", str(out), "--quiet"]
        assert main(args) == 0
        _reject(out, 3)
        capsys.readouterr()
        # $0.08 spent: a cap of $0.095 leaves room for one $0.01 take of the three
        cmd = [*args, "--concurrency", "1", "--replace-rejected", "--max-cost", "0.095"]
        assert main(cmd) == 3
        assert "stopped at the budget (--max-cost)" in capsys.readouterr().err
        assert states(out) == {S.DOWNLOADED: 9, S.PENDING: 2}
        assert stats(url)["submits_accepted"] == 9
        # the takes are the folder's jobs now: a plain run (no flag) finishes them
        assert main([*args, "--max-cost", "1"]) == 0
        assert states(out) == {S.DOWNLOADED: 11}
        s = stats(url)
    assert (s["submits_accepted"], s["duplicate_submits"]) == (11, 3)  # 3 takes, 3 inputs again
    assert len(_takes(out)) == 3


def test_an_edited_manifest_keeps_the_takes_of_its_jobs_and_drops_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = write_manifest(tmp_path, 4)
    out = tmp_path / "out"
    base = ["run", str(m), "--emulate", "--time-scale", "0", "--out", str(out), "--quiet"]
    assert main(base) == 0
    rejected = _reject(out, 4)
    assert main([*base, "--replace-rejected"]) == 0
    assert states(out) == {S.DOWNLOADED: 8}

    write_manifest(tmp_path, 5)  # one more prompt: re-planned, the takes still the folder's
    assert main(base) == 0
    assert states(out) == {S.DOWNLOADED: 9}
    with sqlite3.connect(out / JOURNAL_NAME) as c:
        assert c.execute("SELECT count(*) FROM jobs WHERE in_manifest = 0").fetchone() == (0,)

    # two prompts dropped: their jobs and the takes of their images are stale, no others
    kept = {f"test picture number {i}" for i in range(2)}
    m.write_text(m.read_text().replace("[0, 1, 2, 3, 4]", "[0, 1]"))
    assert main(base) == 0
    with sqlite3.connect(out / JOURNAL_NAME) as c:
        flags = dict(c.execute("SELECT job_id, in_manifest FROM jobs"))
    takes = {str(t["replaces"]): str(t["job_id"]) for t in _takes(out)}
    for r in rejected:
        assert flags[takes[str(r["file_name"])]] == (r["prompt"] in kept), r["prompt"]
    # a stale take rejected is left as it is; a kept one rejected gets its take
    by_job = {str(t["job_id"]): str(t["file_name"]) for t in _takes(out)}
    gone = next(r for r in rejected if r["prompt"] not in kept)
    here = next(r for r in rejected if r["prompt"] in kept)
    stale, live = (takes[str(r["file_name"])] for r in (gone, here))
    with Marks.open(out) as marks:
        marks.set([(by_job[j], j) for j in (stale, live)], Mark.REJECTED, source="test")
    capsys.readouterr()
    assert main([*base[:-1], "--replace-rejected"]) == 0
    assert (
        "6 rejected images to replace: 1 new take, ~$0.01 (4 replaced before,"
        " 1 not of the manifest's jobs, left as they are)"
    ) in capsys.readouterr().err
    assert states(out) == {S.DOWNLOADED: 5}  # the manifest's 2 jobs, their 2 takes, 1 more


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_killed_while_replacing_then_resumed_keeps_the_takes(tmp_path: Path) -> None:
    m = write_manifest(tmp_path, 6)
    out = tmp_path / "out"
    with emulator_thread(time_scale=0.05, concurrency_limit=8) as url:
        assert main(["run", str(m), "--endpoint", url, "--out", str(out), "--quiet"]) == 0
        _reject(out, 3)
        cmd = command(m, url, out, "--concurrency", "2", "--replace-rejected")
        proc = subprocess.Popen(cmd, env=env(), cwd=REPO, stderr=subprocess.DEVNULL)
        while proc.poll() is None:
            now = _states_or_nothing(out)
            if now[S.QUEUED] + now[S.RUNNING] >= 1:
                break
            time.sleep(0.005)
        proc.kill()
        proc.wait()
        assert sum(states(out).values()) == 9  # the takes were journaled before any submit
        # resumed by the plain command: the takes are remembered, not made again
        final = subprocess.run(command(m, url, out), env=env(), cwd=REPO, capture_output=True)
        s = stats(url)
    assert final.returncode == 0, final.stderr.decode()
    assert states(out) == {S.DOWNLOADED: 9}
    with Journal.open_readonly(out / JOURNAL_NAME) as j:
        dup = sum(r.possible_duplicates for r in j.iter_jobs())
    assert 9 <= s["submits_accepted"] <= 9 + dup and s["duplicate_submits"] <= 3 + dup
    assert len(_takes(out)) == 3


def _states_or_nothing(out: Path) -> Counter[JobState]:
    try:
        return states(out)
    except Exception:  # busy, or not there yet: look again
        return Counter()


@pytest.mark.browser
@pytest.mark.slow
def test_the_gallery_shows_a_take_beside_the_image_it_replaces(tmp_path: Path) -> None:
    find_chromium(os.environ)  # no browser: a skip here, a failure under CI=true
    m = write_manifest(tmp_path, 6)
    out = tmp_path / "out"
    base = ["run", str(m), "--emulate", "--time-scale", "0", "--out", str(out), "--quiet"]
    assert main(base) == 0
    rejected = _reject(out, 2, skip=1)
    assert main([*base, "--replace-rejected"]) == 0
    takes = {str(t["file_name"]): str(t["replaces"]) for t in _takes(out)}
    profile = tmp_path / "chromium-profile"
    page = (out / "index.html").resolve().as_uri()
    dom, console = chromium(f"{page}#sort=take", profile)
    shutil.rmtree(profile, ignore_errors=True)
    assert console == [] and complete(dom)
    files = card_files(dom)
    assert len(files) == 8 and len(takes) == 2
    for take, replaced in takes.items():
        assert files[files.index(take) - 1] == replaced  # the take right after the rejected one
    for r in rejected:
        assert f"replaces {str(r['file_name']).rsplit('/', 1)[-1]}" in dom
