"""`batchgen index OUT [--rebuild]`: the index files rewritten from the journal, files verified."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_run_support import write_manifest

from batchgen.cli import main
from batchgen.journal.writer import JOURNAL_NAME, Journal
from batchgen.outputs import rebuild
from batchgen.outputs.index import FAILURES, METADATA, read_failures, read_index

# What a rebuild cannot know from the journal once the index is gone: the download time (the
# file's mtime stands in) and fal's inference time (reported by the status, never stored).
STABLE = ("downloaded_at", "inference_time")


def _run(tmp_path: Path, jobs: int, *extra: str) -> Path:
    m = write_manifest(tmp_path, jobs)
    out = tmp_path / "out"
    args = ["run", str(m), "--emulate", "--out", str(out), "--quiet", "--time-scale", "0"]
    main([*args, *extra])
    return out


def _comparable(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    return sorted(
        ({k: v for k, v in r.items() if k not in STABLE} for r in rows),
        key=lambda r: str(r["file_name"]),
    )


def test_rebuild_restores_a_lost_index_exactly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _run(tmp_path, 8, "--faults", "content_policy=0.3")
    before, failures = read_index(out), read_failures(out)
    assert before and failures  # some of each, so both files are exercised
    (out / METADATA).unlink()
    (out / FAILURES).write_text("garbage\n")
    capsys.readouterr()

    assert main(["index", str(out), "--rebuild"]) == 0
    after = _comparable(read_index(out))
    for a, b in zip(after, _comparable(before), strict=True):
        assert {k: (a[k], b[k]) for k in a if a[k] != b[k]} == {}
    assert [(f["job_id"], f["class"]) for f in read_failures(out)] == [
        (f["job_id"], f["class"]) for f in failures
    ]
    assert f"{len(before)} images" in capsys.readouterr().out


def test_rebuild_reports_missing_and_changed_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _run(tmp_path, 4)
    rows = sorted(read_index(out), key=lambda r: str(r["file_name"]))
    gone, edited = rows[0]["file_name"], rows[1]["file_name"]
    (out / str(gone)).unlink()
    with open(out / str(edited), "ab") as f:
        f.write(b"tampered")  # still decodes, checksum differs
    capsys.readouterr()

    assert main(["index", str(out), "--rebuild"]) == 1
    err = capsys.readouterr().err
    assert "1 missing:" in err and str(gone) in err
    assert "1 changed since download" in err and str(edited) in err
    names = {r["file_name"] for r in read_index(out)}
    assert gone not in names and edited in names and len(names) == 3
    for r in read_index(out):  # every row describes the file as it is now
        data = (out / str(r["file_name"])).read_bytes()
        assert r["bytes"] == len(data)


def test_rebuild_refuses_while_a_run_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _run(tmp_path, 2)
    index_before = (out / METADATA).read_bytes()
    with Journal.open(
        out / JOURNAL_NAME,
        manifest_sha256=read_index(out)[0]["manifest_sha256"],
        version="0.1.0",
        settings={},
    ):
        assert main(["index", str(out), "--rebuild"]) == 2
    assert f"(pid {os.getpid()}) is writing" in capsys.readouterr().err
    assert (out / METADATA).read_bytes() == index_before


def test_rebuild_is_implied(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rebuilding is all `index` does: `index OUT` alone rebuilds, as `--rebuild` does."""
    out = _run(tmp_path, 3)
    (out / METADATA).unlink()
    capsys.readouterr()
    assert main(["index", str(out)]) == 0
    assert len(read_index(out)) == 3
    assert "3 images" in capsys.readouterr().out
    assert main(["index", str(out), "--rebuild"]) == 0  # still accepted


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["index", str(tmp_path / "nowhere"), "--rebuild"]) == 2
    assert main(["index", str(tmp_path)]) == 2  # not an output folder
    err = capsys.readouterr().err
    assert "no journal" in err and "Traceback" not in err
    json.dumps(err)  # one readable text, no objects


def test_a_rebuild_counts_past_the_names_it_keeps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder whose images are all gone is reported by count: the names kept are capped."""
    monkeypatch.setattr(rebuild, "MAX_LISTED", 1)
    out = _run(tmp_path, 4)
    for row in read_index(out)[:3]:
        (out / str(row["file_name"])).unlink()
    capsys.readouterr()
    assert main(["index", str(out)]) == 1
    err = capsys.readouterr().err
    assert "3 missing:" in err and "... and 2 more" in err
    assert rebuild.rebuild_index(out).counts == {"missing": 3, "changed": 0, "invalid": 0}
