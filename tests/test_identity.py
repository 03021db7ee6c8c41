"""A manifest's identity covers every file it reads (manifest/identity.py), end to end through
`batchgen run`: prompts added to a CSV or edited in a JSONL prompts file, and an edited
reference image, are planned by the very next run; the images of prompts the manifest no
longer names are kept, marked stale, and left out of exports and the gallery unless asked."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from PIL import Image
from test_gallery import chromium, find_chromium
from test_gallery_support import gallery_data, read_chunk
from test_run_support import states

from batchgen.cli import main
from batchgen.journal.opening import lock_folder, unlock_folder
from batchgen.journal.writer import JOURNAL_NAME
from batchgen.manifest import load_manifest
from batchgen.outputs.gallery import build_gallery, refresh_gallery
from batchgen.outputs.index import read_index
from batchgen.planning.jobs import JobState

S = JobState
REPO = Path(__file__).resolve().parent.parent
STALE_ONE = "1 image from prompts no longer in the manifest is kept, marked stale"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "BATCHGEN_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


def run(m: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """`batchgen run` in a rehearsal; its stderr (the announcement), after a clean exit."""
    code = main(["run", str(m), "--emulate", "--out", str(out), "--time-scale", "0"])
    err = capsys.readouterr().err
    assert code == 0, err
    return err


def submits(out: Path) -> int:
    """Every POST the folder's jobs made, as the journal counts them."""
    with sqlite3.connect(out / JOURNAL_NAME) as c:
        return int(c.execute("SELECT total(submits) FROM jobs").fetchone()[0])


def stale_ids(out: Path) -> set[str]:
    with sqlite3.connect(out / JOURNAL_NAME) as c:
        return {r[0] for r in c.execute("SELECT job_id FROM jobs WHERE in_manifest = 0")}


def yaml_manifest(folder: Path, prompts_file: str, *, repeat: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    m = folder / "m.yaml"
    m.write_text(
        "name: t\n"
        "defaults: {quality: low, output_format: jpeg, image_size: landscape_4_3}\n"
        f"repeat: {repeat}\n"
        f"prompts_file: {prompts_file}\n"
    )
    return m


def write_csv(path: Path, prompts: list[tuple[str, str]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "prompt"])
        w.writerows(prompts)


def exported(out: Path, dest: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> list[str]:
    """The job ids a CSV export holds, and its stdout checked for a clean exit."""
    assert main(["export", str(out), "--format", "csv", "--dest", str(dest), *flags]) == 0
    with dest.open(encoding="utf-8-sig", newline="") as f:
        return [row["job_id"] for row in csv.DictReader(f)]


def test_csv_prompts_added_then_edited(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = [(f"p{i}", f"a lighthouse, picture {i}") for i in range(6)]
    prompts[2] = ("fox", "a red fox in the snow")
    m = yaml_manifest(tmp_path / "m", "prompts.csv")
    write_csv(tmp_path / "m" / "prompts.csv", prompts)
    out = tmp_path / "out"
    run(m, out, capsys)
    assert submits(out) == 6 and states(out) == {S.DOWNLOADED: 6}

    # Four prompts appended: the same command submits exactly those four, at once.
    prompts += [(f"new{i}", f"a tram at night, picture {i}") for i in range(4)]
    write_csv(tmp_path / "m" / "prompts.csv", prompts)
    err = run(m, out, capsys)
    assert "4 jobs to submit (4 images)" in err and "already: 6 done" in err
    assert submits(out) == 10 and states(out) == {S.DOWNLOADED: 10}
    assert "marked stale" not in err

    # One prompt edited: one new job; the old one's image is kept, marked stale.
    before = {r["job_id"]: r for r in read_index(out)}
    (old,) = [j for j, r in before.items() if r["prompt"] == "a red fox in the snow"]
    prompts[2] = ("fox", "a grey fox in the snow")
    write_csv(tmp_path / "m" / "prompts.csv", prompts)
    err = run(m, out, capsys)
    assert "1 job to submit (1 image)" in err and STALE_ONE in err
    assert submits(out) == 11 and states(out) == {S.DOWNLOADED: 10}
    assert stale_ids(out) == {old}
    assert (out / before[old]["file_name"]).is_file()  # kept in the folder
    assert "1 in the journal but no longer in the manifest" in (out / "run.log").read_text()

    # The folder holds the manifest and its CSV as run, and the rows name their identity.
    identity = load_manifest(m).sha256
    assert identity != hashlib.sha256(m.read_bytes()).hexdigest()
    assert (out / "manifest.yaml").read_bytes() == m.read_bytes()
    copy = out / ".manifest" / "files" / "prompts.csv"
    assert copy.read_bytes() == (tmp_path / "m" / "prompts.csv").read_bytes()
    record = json.loads((out / ".manifest" / "files.json").read_text())
    assert record["identity"] == identity
    assert record["files"] == {"prompts.csv": hashlib.sha256(copy.read_bytes()).hexdigest()}
    (grey,) = [r for r in read_index(out) if r["prompt"] == "a grey fox in the snow"]
    assert grey["manifest_sha256"] == identity

    # Exports leave the stale image out unless asked; so does the gallery.
    ids = exported(out, tmp_path / "a.csv", capsys)
    assert len(ids) == 10 and old not in ids
    assert "left out 1 stale image" in capsys.readouterr().out
    ids = exported(out, tmp_path / "b.csv", capsys, "--include-stale")
    assert len(ids) == 11 and old in ids
    _, _, records = read_chunk(out / ".gallery" / "r-000000.js")  # the run's own build
    assert len(records) == 10 and before[old]["file_name"] not in {r[0] for r in records}
    assert "<b>1</b> stale" in (out / "index.html").read_text()
    assert main(["gallery", str(out), "--include-stale"]) == 0
    _, _, records = read_chunk(out / ".gallery" / "r-000000.js")
    assert len(records) == 11

    # Nothing changed: nothing is planned anew, nothing submitted.
    err = run(m, out, capsys)
    assert "nothing to submit" in err and STALE_ONE in err and submits(out) == 11


def test_jsonl_prompts_file_edit_replans(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [{"id": f"p{i}", "prompt": f"a glacier, picture {i}"} for i in range(3)]
    m = yaml_manifest(tmp_path / "m", "more/prompts.jsonl")
    jsonl = tmp_path / "m" / "more" / "prompts.jsonl"
    jsonl.parent.mkdir()
    jsonl.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "out"
    run(m, out, capsys)
    assert submits(out) == 3

    lines[1]["prompt"] = "a glacier at dusk"
    jsonl.write_text("".join(json.dumps(x) + "\n" for x in lines))
    err = run(m, out, capsys)
    assert "1 job to submit (1 image)" in err and STALE_ONE in err
    assert submits(out) == 4 and len(stale_ids(out)) == 1
    copy = out / ".manifest" / "files" / "more" / "prompts.jsonl"
    assert copy.read_bytes() == jsonl.read_bytes()


def test_edited_reference_image_replans(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(REPO / "manifests" / "edit.yaml", folder / "edit.yaml")
    shutil.copytree(REPO / "manifests" / "refs", folder / "refs")
    m = folder / "edit.yaml"
    out = tmp_path / "out"
    run(m, out, capsys)
    assert submits(out) == 5 and states(out) == {S.DOWNLOADED: 5}
    swatch = folder / "refs" / "swatch.png"
    assert (out / ".manifest" / "files" / "refs" / "swatch.png").read_bytes() == (
        swatch.read_bytes()
    )

    # The swatch is in two jobs (two prompts with [room, swatch]): both are new jobs now.
    with Image.open(swatch) as im:
        size = im.size
    Image.new("RGB", size, "#20a050").save(swatch, "PNG")
    err = run(m, out, capsys)
    assert "2 jobs to submit" in err
    assert "2 images from prompts no longer in the manifest are kept, marked stale" in err
    assert submits(out) == 7 and len(stale_ids(out)) == 2
    assert (out / ".manifest" / "files" / "refs" / "swatch.png").read_bytes() == (
        swatch.read_bytes()
    )
    rows = read_index(out)
    assert {r["manifest_sha256"] for r in rows[-2:]} == {load_manifest(m).sha256}


def test_gallery_cards_tell_the_takes_of_a_repeat_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = yaml_manifest(tmp_path / "m", "prompts.csv", repeat=3)
    write_csv(tmp_path / "m" / "prompts.csv", [("red-fox", "a red fox")])
    out = tmp_path / "out"
    run(m, out, capsys)
    _, _, records = read_chunk(out / ".gallery" / "r-000000.js")
    assert sorted((r[5], r[12], r[6]) for r in records) == [
        ("red-fox", 0, 0),
        ("red-fox", 1, 0),
        ("red-fox", 2, 0),
    ]


@pytest.mark.browser
@pytest.mark.slow
def test_cards_show_the_take_in_chromium(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    find_chromium(os.environ)  # no browser: a skip here, a failure under CI=true
    m = yaml_manifest(tmp_path / "m", "prompts.csv", repeat=3)
    write_csv(tmp_path / "m" / "prompts.csv", [("red-fox", "a red fox")])
    out = tmp_path / "out"
    run(m, out, capsys)
    dom, console = chromium((out / "index.html").resolve().as_uri(), tmp_path / "profile")
    assert console == []
    labels = sorted(re.findall(r"red-fox take \d #\d", dom))
    assert labels == ["red-fox take 0 #0", "red-fox take 1 #0", "red-fox take 2 #0"]


def test_export_while_a_run_writes_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = yaml_manifest(tmp_path / "m", "prompts.csv")
    write_csv(tmp_path / "m" / "prompts.csv", [("a", "a red fox")])
    out = tmp_path / "out"
    run(m, out, capsys)
    assert main(["export", str(out), "--format", "csv"]) == 0
    assert capsys.readouterr().err == ""
    lock = lock_folder(out / JOURNAL_NAME)  # as a run holds it
    try:
        assert main(["export", str(out), "--format", "csv"]) == 0
    finally:
        unlock_folder(lock, out / JOURNAL_NAME)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("batchgen: warning: a batchgen run (pid ")
    assert "is writing to" in err[0] and "only the images saved so far" in err[0]


def test_a_refresh_leaves_stale_images_out_as_a_full_build_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = [(f"p{i}", f"a tea house, picture {i}") for i in range(7)]
    m = yaml_manifest(tmp_path / "m", "prompts.csv")
    write_csv(tmp_path / "m" / "prompts.csv", prompts)
    out = tmp_path / "out"
    run(m, out, capsys)
    prompts[1] = ("p1", "a tea house in the rain")
    prompts[5] = ("p5", "a tea house at night")
    write_csv(tmp_path / "m" / "prompts.csv", prompts)
    run(m, out, capsys)
    assert len(stale_ids(out)) == 2
    index = out / "metadata.jsonl"
    lines = index.read_bytes().splitlines(keepends=True)
    assert len(lines) == 9
    # A build of the first rows, then a refresh that reads the rest (chunks of 2 rows).
    index.write_bytes(b"".join(lines[:4]))  # the same file: a refresh may resume
    first = build_gallery(out, chunk_rows=2)
    with index.open("ab") as f:
        f.writelines(lines[4:])
    report = refresh_gallery(out, chunk_rows=2)
    assert report.refreshed and report.rows_read < 7
    assert (first.stale, report.stale, report.images) == (
        sum(json.loads(x)["job_id"] in stale_ids(out) for x in lines[:4]),
        2,
        7,
    )
    refreshed = gallery_data(out)
    build_gallery(out, chunk_rows=2)
    assert gallery_data(out) == refreshed
