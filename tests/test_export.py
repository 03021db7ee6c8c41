"""Exports: parquet with typed columns, CSV a spreadsheet cannot execute, verified tar shards."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
import tarfile
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from batchgen.cli import main
from batchgen.errors import UsageError
from batchgen.outputs import export as outputs_export
from batchgen.outputs import exportkit
from batchgen.outputs.checks import inspect_image, mime_of, sha256_file
from batchgen.outputs.download import Downloaded
from batchgen.outputs.export import EXPORT_FIELDS, csv_cell, export
from batchgen.outputs.index import append_rows, index_row, read_index
from batchgen.planning.jobs import JobSpec, job_id
from batchgen.planning.paths import image_path, template_fields

EP = "openai/gpt-image-2"
PROMPTS = [
    '=HYPERLINK("http://evil","x")',
    "+1+1",
    "-2",
    "@SUM(A1)",
    "\tcmd",
    "\rcr",
    "a plain owl",
    'line one\nline two, "quoted"',
]


def make_output(out: Path, prompts: list[str] = PROMPTS) -> list[dict[str, object]]:
    for i, prompt in enumerate(prompts):
        inp = {"prompt": prompt, "quality": "low", "output_format": "jpeg" if i % 2 else "png"}
        spec = JobSpec(
            job_id=job_id(EP, inp, 0),
            endpoint=EP,
            input=inp,
            prompt_id=f"p{i % 3}",
            prompt=prompt,
            vars={"i": str(i)},
            tags={"set": "=A"},
        )
        dest = image_path(out, spec.output_template, template_fields(spec, 0))
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32 + i, 24), (i * 30, 80, 120)).save(dest, "JPEG" if i % 2 else "PNG")
        size, digest = sha256_file(dest)
        w, h, fmt = inspect_image(dest)
        row = index_row(
            spec,
            0,
            Downloaded(dest, digest, size, w, h, mime_of(fmt)),
            out_dir=out,
            manifest_sha256="m" * 64,
            submitted_at=1.0,
            cost_estimate=0.01,
            usage={"total_tokens": 7} if i == 0 else None,
        )
        append_rows(out, [row])
    return read_index(out)


def test_parquet_has_the_index_columns_typed(tmp_path: Path) -> None:
    rows = make_output(tmp_path)
    result = export(tmp_path, "parquet")
    assert result.paths == [tmp_path / "exports" / "index.parquet"]
    table = pq.read_table(result.paths[0])
    assert table.column_names == list(EXPORT_FIELDS) and table.num_rows == len(rows)
    assert table.schema.field("vars").type == pa.map_(pa.string(), pa.string())
    assert table.schema.field("submitted_at").type == pa.timestamp("ms", tz="UTC")
    got = table.to_pylist()
    assert [r["sha256"] for r in got] == [r["sha256"] for r in rows]
    assert got[0]["prompt"] == PROMPTS[0] and got[0]["tags"] == [("set", "=A")]
    assert json.loads(got[0]["usage"]) == {"total_tokens": 7} and got[1]["usage"] is None


def test_parquet_without_pyarrow_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_output(tmp_path, ["a"])
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    # The hint must work from a checkout too, where `batchgen[parquet]` names nothing pip knows.
    with pytest.raises(UsageError, match=r"pip install pyarrow"):
        export(tmp_path, "parquet")
    assert main(["export", str(tmp_path), "--format", "parquet"]) == 2
    assert not (tmp_path / "exports").exists()


def test_csv_defuses_formulas_and_round_trips_text(tmp_path: Path) -> None:
    make_output(tmp_path)
    (dest,) = export(tmp_path, "csv", tmp_path / "x.csv").paths
    assert dest.read_bytes().startswith(b"\xef\xbb\xbf")  # BOM: Excel reads UTF-8
    with dest.open(encoding="utf-8-sig", newline="") as f:
        header, *body = list(csv.reader(f))
    assert header == list(EXPORT_FIELDS)
    prompts = [dict(zip(header, r, strict=True))["prompt"] for r in body]
    assert prompts[:6] == ["'" + p for p in PROMPTS[:6]]
    assert prompts[6:] == PROMPTS[6:]
    for r in body:
        for cell in r:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    first = dict(zip(header, body[0], strict=True))
    assert first["width"] == "32" and first["cost_estimate"] == "0.01"
    assert first["tags"] == '{"set": "=A"}' and first["request_id"] == ""


@pytest.mark.parametrize(
    ("value", "cell"), [(None, ""), (-3, -3), (True, "true"), ("-x", "'-x"), ({"a": 1}, '{"a": 1}')]
)
def test_csv_cells(value: object, cell: object) -> None:
    assert csv_cell(value) == cell


def test_webdataset_shards_hold_verified_samples(tmp_path: Path) -> None:
    rows = make_output(tmp_path)
    changed = tmp_path / str(rows[3]["file_name"])
    changed.write_bytes(changed.read_bytes() + b"tampered")
    bad = dict(rows[0], file_name="images/../../../etc/passwd", job_id="f" * 64)
    append_rows(tmp_path, [bad])

    result = export(tmp_path, "webdataset", shard_size=3)
    shards = sorted((tmp_path / "exports" / "webdataset").glob("shard-*.tar"))
    assert result.paths == shards and len(shards) == 3  # 7 good samples in threes
    assert sorted(result.skipped) == sorted([rows[3]["file_name"], bad["file_name"]])
    by_sha = {r["sha256"]: r for r in rows}
    keys = []
    for shard in shards:
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]
        for name, data in members.items():
            key, ext = name.split(".", 1)
            if ext == "json":
                meta = json.loads(data)
                image = next(
                    v
                    for k, v in members.items()
                    if k.startswith(key + ".") and not k.endswith(".json")
                )
                assert hashlib.sha256(image).hexdigest() == meta["sha256"]
                assert by_sha[meta["sha256"]]["file_name"] == meta["file_name"]
                keys.append(key)
    assert len(keys) == 7 == len(set(keys))

    # A re-export with bigger shards leaves no stale shard behind; the CLI reports the skips.
    assert main(["export", str(tmp_path), "--format", "webdataset", "--shard-size", "100"]) == 1
    assert [p.name for p in (tmp_path / "exports" / "webdataset").iterdir()] == ["shard-000000.tar"]


def test_webdataset_members_are_dated_by_the_download(tmp_path: Path) -> None:
    rows = make_output(tmp_path, ["an owl", "a fox"])
    os.utime(tmp_path / str(rows[1]["file_name"]), (1e9, 1e9))  # 2001: the row's time wins
    first = export(tmp_path, "webdataset").paths
    with tarfile.open(first[0]) as tar:
        mtimes = {m.name.split(".", 1)[0]: m.mtime for m in tar}
    # Seconds from downloaded_at (written "...Z"): a tar viewer shows 2020s dates, not 1970.
    want = {
        f"{r['job_id']}_0": int(datetime.fromisoformat(str(r["downloaded_at"])).timestamp())
        for r in rows
    }
    assert mtimes == want and min(want.values()) > 1_600_000_000
    # The same index exports the same bytes (the reason the dates were once zeroed).
    before = first[0].read_bytes()
    assert export(tmp_path, "webdataset").paths[0].read_bytes() == before


def test_export_command_refuses_a_folder_without_an_index(tmp_path: Path) -> None:
    assert main(["export", str(tmp_path), "--format", "csv"]) == 2


def test_parquet_tags_become_maps_when_a_late_row_has_a_mapping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows are written with list tags until one is a mapping; then the file is written again
    with map tags from the first row, whatever the row groups written so far."""
    monkeypatch.setattr(outputs_export, "ROW_GROUP", 2)
    rows = [dict(r, tags=["dawn"]) for r in make_output(tmp_path, ["an owl", "a fox", "a tram"])]
    late = dict(rows[-1], file_name="images/late.png", tags={"set": "B"})
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*rows, late]))
    (dest,) = export(tmp_path, "parquet").paths
    table = pq.read_table(dest)
    assert table.schema.field("tags").type == pa.map_(pa.string(), pa.string())
    assert table.num_rows == 4 and pq.ParquetFile(dest).metadata.num_row_groups == 2
    assert table.column("tags").to_pylist() == [[("dawn", "")]] * 3 + [[("set", "B")]]


def test_an_empty_index_exports_the_columns(tmp_path: Path) -> None:
    (tmp_path / "metadata.jsonl").write_bytes(b"")
    result = export(tmp_path, "parquet")
    table = pq.read_table(result.paths[0])
    assert result.rows == table.num_rows == 0 and table.column_names == list(EXPORT_FIELDS)
    assert export(tmp_path, "csv").rows == 0 and export(tmp_path, "webdataset").paths == []


def test_webdataset_counts_past_the_skipped_names_it_keeps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(exportkit, "MAX_SKIPPED_LISTED", 1)
    rows = make_output(tmp_path, ["an owl", "a fox", "a tram"])
    for r in rows[:2]:
        (tmp_path / str(r["file_name"])).unlink()
    result = export(tmp_path, "webdataset")
    assert (result.rows, result.skipped_count, result.skipped) == (1, 2, [rows[0]["file_name"]])
    assert main(["export", str(tmp_path), "--format", "webdataset"]) == 1
    printed = capsys.readouterr().out
    assert "skipped 2 images" in printed and "... and 1 more" in printed
