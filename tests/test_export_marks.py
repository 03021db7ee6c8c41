"""Exports and marks, end to end: every format carries `review`; `--exclude rejected` and
`--only picked` leave images out; the captions export (outputs/captions.py) hard-links each
image beside a `.txt` of its prompt, honours marks and stale rules, and writes only in DIR."""

from __future__ import annotations

import csv
import errno
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from test_mark_cli import made, manifest, mark, run

from batchgen.cli import main
from batchgen.outputs.index import append_rows, read_index

KEY = "{job_id}_{image_index}"


def export(out: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["export", str(out), *args])
    got = capsys.readouterr()
    return code, got.out + got.err


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def marked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, list[Any]]:
    """A folder of 6 images: the first rejected, the second picked."""
    out, rows = made(tmp_path, capsys)
    assert mark(out, capsys, "--reject", rows[0]["file_name"])[0] == 0
    assert mark(out, capsys, "--pick", rows[1]["file_name"])[0] == 0
    return out, rows


def test_every_format_carries_the_review_and_honours_the_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, rows = marked(tmp_path, capsys)
    names = [r["file_name"] for r in rows]
    want = {names[0]: "rejected", names[1]: "picked"}
    dest = tmp_path / "x.csv"
    assert export(out, capsys, "--format", "csv", "--dest", str(dest))[0] == 0
    assert {r["file_name"]: r["review"] for r in csv_rows(dest)} == {
        n: want.get(n, "") for n in names
    }
    code, said = export(
        out, capsys, "--format", "csv", "--dest", str(dest), "--exclude", "rejected"
    )
    assert code == 0 and "left out 1 image marked rejected" in said
    assert [r["file_name"] for r in csv_rows(dest)] == names[1:]
    code, said = export(out, capsys, "--format", "csv", "--dest", str(dest), "--only", "picked")
    assert code == 0 and "left out 5 images not marked picked" in said
    assert [(r["file_name"], r["review"]) for r in csv_rows(dest)] == [(names[1], "picked")]

    pq_dest = tmp_path / "x.parquet"
    assert export(out, capsys, "--format", "parquet", "--dest", str(pq_dest))[0] == 0
    table = pq.read_table(pq_dest).to_pydict()
    assert dict(zip(table["file_name"], table["review"], strict=True)) == {
        n: want.get(n, "") for n in names
    }
    args = ("--format", "parquet", "--dest", str(pq_dest), "--exclude", "rejected")
    assert export(out, capsys, *args)[0] == 0
    assert pq.read_table(pq_dest).column("file_name").to_pylist() == names[1:]

    wds = tmp_path / "wds"
    args = ("--format", "webdataset", "--dest", str(wds), "--exclude", "rejected")
    assert export(out, capsys, *args)[0] == 0
    with tarfile.open(wds / "shard-000000.tar") as tar:
        metas = [json.load(tar.extractfile(m)) for m in tar if m.name.endswith(".json")]  # type: ignore[arg-type]
    assert {m["file_name"]: m["review"] for m in metas} == {n: want.get(n, "") for n in names[1:]}


def test_captions_link_each_image_beside_its_prompt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, rows = marked(tmp_path, capsys)
    dest = tmp_path / "train" / "10_demo"
    code, said = export(out, capsys, "--format", "captions", "--dest", str(dest))
    assert code == 0 and "6 images hard-linked, 0 copied" in said, said
    for r in rows:
        image, text = dest / (KEY.format(**r) + ".jpg"), dest / (KEY.format(**r) + ".txt")
        source = (out / r["file_name"]).stat()
        assert image.stat().st_ino == source.st_ino and source.st_nlink == 2  # a hard link
        assert text.read_text(encoding="utf-8") == r["prompt"]
    lines = [json.loads(x) for x in (dest / "metadata.jsonl").read_text().splitlines()]
    assert lines == [{"file_name": KEY.format(**r) + ".jpg", "text": r["prompt"]} for r in rows]
    assert len(list(dest.iterdir())) == 13

    # Again without the rejected image: its files go, so a trainer globbing DIR never sees it.
    args = ("--format", "captions", "--dest", str(dest), "--exclude", "rejected")
    assert export(out, capsys, *args)[0] == 0
    gone = KEY.format(**rows[0])
    assert not list(dest.glob(gone + ".*")) and len(list(dest.iterdir())) == 11
    args = ("--format", "captions", "--dest", str(dest), "--only", "picked")
    assert export(out, capsys, *args)[0] == 0
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        [KEY.format(**rows[1]) + ".jpg", KEY.format(**rows[1]) + ".txt", "metadata.jsonl"]
    )
    assert (out / rows[0]["file_name"]).is_file()  # the folder's own images stay


def test_captions_copy_where_the_filesystem_cannot_link(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, rows = made(tmp_path, capsys)

    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    dest = tmp_path / "copy"
    code, said = export(out, capsys, "--format", "captions", "--dest", str(dest))
    assert code == 0 and "0 images hard-linked, 6 copied" in said
    for r in rows:
        image = dest / (KEY.format(**r) + ".jpg")
        assert image.stat().st_nlink == 1
        assert image.read_bytes() == (out / r["file_name"]).read_bytes()


def test_captions_refuse_a_dest_in_the_folder_and_write_nothing_outside_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, rows = made(tmp_path, capsys)
    for bad in (out / "images" / "train", out / "images", out, out / "exports" / "captions"):
        code, said = export(out, capsys, "--format", "captions", "--dest", str(bad))
        assert code == 2 and len(said.strip().splitlines()) == 1, said
    code, said = export(out, capsys, "--format", "captions")
    assert code == 2 and "needs --dest DIR" in said
    assert not (out / "images" / "train").exists() and not (out / "exports").exists()
    # The index is data: rows naming files outside images/ or with a climbing job id are
    # skipped, never linked, never written outside DIR.
    evil = [
        dict(rows[0], file_name="../outside.jpg", job_id="e" * 64),
        dict(rows[1], job_id="../../escape"),
    ]
    (tmp_path / "outside.jpg").write_bytes(b"x")
    append_rows(out, evil)
    dest = tmp_path / "d"
    code, said = export(out, capsys, "--format", "captions", "--dest", str(dest))
    assert code == 1 and "skipped 2 images" in said, said
    assert len(list(dest.iterdir())) == 2 * (len(read_index(out)) - 2) + 1
    assert not (tmp_path / "escape.txt").exists() and not list(tmp_path.glob("*escape*"))


def test_captions_leave_stale_images_out_unless_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = made(tmp_path, capsys)
    run(manifest(tmp_path / "m", ("a fox", "an owl")), out, capsys)  # "a hare" is stale now
    dest = tmp_path / "d"
    code, said = export(out, capsys, "--format", "captions", "--dest", str(dest))
    assert code == 0 and "4 rows exported" in said and "left out 2 stale images" in said
    code, said = export(out, capsys, "--format", "captions", "--dest", str(dest), "--include-stale")
    assert code == 0 and "6 rows exported" in said
    assert len(list(dest.glob("*.txt"))) == 6
