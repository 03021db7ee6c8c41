"""The metadata index: every field of docs/outputs.md's index row, line-atomic appends, and a
verifying rebuild."""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
from collections.abc import Iterator
from pathlib import Path

import pyarrow.json as pajson
import pytest
from PIL import Image

from batchgen import __version__
from batchgen.outputs.checks import inspect_image, mime_of, sha256_file
from batchgen.outputs.download import Downloaded
from batchgen.outputs.index import (
    FAILURES,
    INDEX_FIELDS,
    METADATA,
    append_failure,
    append_rows,
    cut_torn_tail,
    failure_row,
    index_row,
    read_failures,
    read_index,
    rewrite_rows,
    write_manifest_copy,
)
from batchgen.outputs.rebuild import CompletedJob, rebuild_from_rows
from batchgen.planning.jobs import JobSpec, job_id
from batchgen.planning.paths import image_path, template_fields

EP = "openai/gpt-image-2"


def spec_for(prompt: str, **inp: object) -> JobSpec:
    body = {"prompt": prompt, **inp}
    return JobSpec(
        job_id=job_id(EP, body, 0),
        endpoint=EP,
        input=body,
        prompt_id="pid",
        prompt=prompt,
        vars={"animal": "owl"},
        tags={"set": "A"},
    )


def place_image(out: Path, spec: JobSpec, n: int, color: str = "red") -> Downloaded:
    dest = image_path(out, spec.output_template, template_fields(spec, n))
    dest.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, "PNG")
    dest.write_bytes(buf.getvalue())
    size, digest = sha256_file(dest)
    w, h, fmt = inspect_image(dest)
    return Downloaded(dest, digest, size, w, h, mime_of(fmt))


def test_row_has_every_field_and_a_relative_file_name(tmp_path: Path) -> None:
    spec = spec_for("an owl", quality="low", image_size={"width": 1024, "height": 1536})
    d = place_image(tmp_path, spec, 0)
    row = index_row(
        spec,
        0,
        d,
        out_dir=tmp_path,
        manifest_sha256="m" * 64,
        request_id="r1",
        submitted_at=0.0,
        completed_at=1.5,
        downloaded_at=2.0,
        inference_time=1.2,
        cost_estimate=0.01,
    )
    assert tuple(row) == INDEX_FIELDS
    assert row["file_name"] == f"images/pid/{spec.short_id}_0.png"
    assert (tmp_path / row["file_name"]).read_bytes() == d.path.read_bytes()
    assert row["requested_size"] == "1024x1536" and (row["width"], row["height"]) == (40, 30)
    assert row["quality"] == "low" and row["output_format"] == "png"  # png: the default
    assert row["submitted_at"] == "1970-01-01T00:00:00.000Z"
    assert row["manifest_sha256"] == "m" * 64 and row["batchgen_version"] == __version__
    assert row["vars"] == {"animal": "owl"} and row["tags"] == {"set": "A"}


def test_appended_rows_read_back_and_load_as_one_table(tmp_path: Path) -> None:
    rows = []
    for i, prompt in enumerate(["a", 'quote " and\nnewline', "東京"]):
        spec = spec_for(prompt)
        rows.append(
            index_row(
                spec,
                0,
                place_image(tmp_path, spec, 0),
                out_dir=tmp_path,
                manifest_sha256="m",
                downloaded_at=float(i),
            )
        )
    append_rows(tmp_path, rows[:1])
    append_rows(tmp_path, rows[1:])
    lines = (tmp_path / METADATA).read_bytes().splitlines()
    assert len(lines) == 3
    assert read_index(tmp_path) == rows
    # One schema for every row: the way ImageFolder and `export` read it.
    table = pajson.read_json(io.BytesIO((tmp_path / METADATA).read_bytes()))
    assert table.num_rows == 3 and table.column_names == list(INDEX_FIELDS)


def test_a_torn_last_line_is_skipped_and_cut_off_at_the_next_start(tmp_path: Path) -> None:
    spec = spec_for("a")
    row = index_row(spec, 0, place_image(tmp_path, spec, 0), out_dir=tmp_path, manifest_sha256="m")
    other = row | {"image_index": 1, "file_name": "images/other.png"}
    append_rows(tmp_path, [row])
    with (tmp_path / METADATA).open("ab") as f:
        f.write(b'{"file_name": "images/torn')  # a crash in the middle of a write
    # Readers skip it; an append (a library caller, no run start) begins a fresh line.
    assert [r["file_name"] for r in read_index(tmp_path)] == [row["file_name"]]
    append_rows(tmp_path, [other])
    assert [r["file_name"] for r in read_index(tmp_path)] == [row["file_name"], "images/other.png"]

    # A run's start cuts a torn tail off before it appends: every line is a whole row, as
    # ImageFolder's JSON loader needs.
    (tmp_path / METADATA).unlink()
    append_rows(tmp_path, [row])
    with (tmp_path / METADATA).open("ab") as f:
        f.write(b'{"file_name": "images/torn')
    assert cut_torn_tail(tmp_path / METADATA)
    assert not cut_torn_tail(tmp_path / METADATA)  # whole: nothing to cut
    append_rows(tmp_path, [other])
    table = pajson.read_json(io.BytesIO((tmp_path / METADATA).read_bytes()))
    assert table.num_rows == 2


def _append_many(out: str, worker: int) -> None:
    for i in range(200):
        row = {"file_name": f"images/{worker}-{i}.png", "prompt": "x" * (i * 37 % 3000)}
        append_rows(Path(out), [row])


def test_concurrent_appenders_never_interleave_rows(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    # Racing appenders may leave a blank line between rows (readers skip it), never a mixed one.
    lines = [line for line in (tmp_path / METADATA).read_bytes().splitlines() if line]
    assert len(lines) == 600
    assert len({json.loads(line)["file_name"] for line in lines}) == 600


def test_failures_rows(tmp_path: Path) -> None:
    spec = spec_for("forbidden thing")
    row = failure_row(spec, error_class="content_policy_violation", message="refused", attempts=1)
    append_failure(tmp_path, row)
    assert read_failures(tmp_path) == [row]
    assert {
        k: row[k] for k in ("job_id", "prompt_id", "prompt", "class", "message", "attempts")
    } == {
        "job_id": spec.job_id,
        "prompt_id": "pid",
        "prompt": "forbidden thing",
        "class": "content_policy_violation",
        "message": "refused",
        "attempts": 1,
    }


def test_rebuild_verifies_files_and_reports_missing_or_changed(tmp_path: Path) -> None:
    good, changed, gone = spec_for("good"), spec_for("changed"), spec_for("gone")
    jobs = []
    for spec in (good, changed, gone):
        d0 = place_image(tmp_path, spec, 0)
        jobs.append(
            CompletedJob(
                spec=spec,
                num_images=1,
                request_id="r-" + spec.prompt,
                sha256={0: d0.sha256},
                cost_estimate=0.01,
            )
        )
    place_image(tmp_path, changed, 0, color="blue")
    image_path(tmp_path, gone.output_template, template_fields(gone, 0)).unlink()
    fail = failure_row(spec_for("bad"), error_class="validation", message="m", attempts=1)
    (tmp_path / METADATA).write_text("garbage that the rebuild replaces\n")

    report = rebuild_from_rows(tmp_path, jobs, [fail], manifest_sha256="m" * 64)

    name = lambda s: f"images/pid/{s.short_id}_0.png"  # noqa: E731
    assert report.missing == [name(gone)] and report.changed == [name(changed)]
    assert not report.ok and (report.rows, report.failures) == (2, 1)
    rows = read_index(tmp_path)
    assert [r["file_name"] for r in rows] == [name(good), name(changed)]
    for r in rows:  # every row's checksum is its file's
        assert r["sha256"] == hashlib.sha256((tmp_path / r["file_name"]).read_bytes()).hexdigest()
    assert read_failures(tmp_path) == [fail]
    assert not (tmp_path / (METADATA + ".part")).exists()
    assert not (tmp_path / (FAILURES + ".part")).exists()


def test_manifest_copy(tmp_path: Path) -> None:
    src = tmp_path / "demo.YAML"
    src.write_text("name: demo\n")
    (tmp_path / "out").mkdir()
    copy = write_manifest_copy(tmp_path / "out", src)
    assert copy == tmp_path / "out" / "manifest.yaml" and copy.read_text() == "name: demo\n"


def test_a_rewrite_whose_rows_fail_half_way_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / METADATA
    path.write_text('{"file_name": "images/a.png"}\n')

    def rows() -> Iterator[dict[str, object]]:
        yield {"file_name": "images/b.png"}
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        rewrite_rows(path, rows())
    assert path.read_text() == '{"file_name": "images/a.png"}\n'
    assert [p.name for p in tmp_path.iterdir()] == [METADATA]


def test_a_rebuild_that_fails_leaves_the_index_and_no_scratch_file(tmp_path: Path) -> None:
    spec = spec_for("an owl")
    place_image(tmp_path, spec, 0)
    (tmp_path / METADATA).write_text('{"file_name": "images/old.png"}\n')

    def jobs() -> Iterator[CompletedJob]:
        yield CompletedJob(spec=spec, num_images=1)
        raise OSError("journal gone")

    with pytest.raises(OSError, match="journal gone"):
        rebuild_from_rows(tmp_path, jobs(), manifest_sha256="m" * 64)
    assert (tmp_path / METADATA).read_text() == '{"file_name": "images/old.png"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", METADATA]
