"""The output commands give exactly what they gave before they streamed.

The expected files under ``golden/outputs/`` were written by the code that read the whole index
into a list (commit 2f52228), from the deterministic folder of ``test_outputs_support``: CSV and
rebuilt index files byte for byte, parquet row for row (its bytes depend on the row groups and
the pyarrow version), webdataset shards member for member. To write them anew after a
deliberate change of output: ``BATCHGEN_WRITE_GOLDEN=1 pytest tests/test_outputs_golden.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_outputs_support import (
    MANIFEST_SHA,
    VERSION,
    golden_folder,
    golden_rebuild_input,
    mapping_folder,
)

from batchgen.outputs import export as outputs_export
from batchgen.outputs.export import export
from batchgen.outputs.index import FAILURES, METADATA
from batchgen.outputs.rebuild import rebuild_from_rows

GOLDEN = Path(__file__).resolve().parent / "golden" / "outputs"


def check(name: str, got: bytes) -> None:
    path = GOLDEN / name
    if os.environ.get("BATCHGEN_WRITE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(got)
        return
    assert got.decode() == path.read_bytes().decode(), name


@pytest.fixture(params=["lists", "maps"])
def folder(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    out = tmp_path / "out"
    out.mkdir()
    if request.param == "lists":
        golden_folder(out)
    else:
        mapping_folder(out)
    return str(request.param), out


def test_csv(folder: tuple[str, Path]) -> None:
    kind, out = folder
    result = export(out, "csv")
    assert result.rows == (9 if kind == "lists" else 3)
    check(f"{kind}/index.csv", result.paths[0].read_bytes())


@pytest.mark.parametrize("row_group", [None, 2])
def test_parquet(
    folder: tuple[str, Path], row_group: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    kind, out = folder
    if row_group is not None:  # several row groups hold the same rows
        monkeypatch.setattr(outputs_export, "ROW_GROUP", row_group)
    result = export(out, "parquet")
    groups = pq.ParquetFile(result.paths[0]).metadata.num_row_groups
    assert groups == (1 if row_group is None else -(-result.rows // row_group))
    table = pq.read_table(result.paths[0])
    lines = [table.schema.to_string(show_schema_metadata=False), f"rows: {result.rows}"]
    lines += [
        json.dumps(r, default=str, ensure_ascii=False, sort_keys=True) for r in table.to_pylist()
    ]
    check(f"{kind}/parquet.txt", "\n".join(lines).encode() + b"\n")


def test_webdataset(tmp_path: Path) -> None:
    out = tmp_path / "out"
    golden_folder(out)
    result = export(out, "webdataset", shard_size=3)
    lines = [f"rows: {result.rows}", *(f"skipped: {s}" for s in result.skipped)]
    for shard in result.paths:
        lines.append(f"{shard.name}:")
        with tarfile.open(shard) as tar:
            for m in tar:
                data = tar.extractfile(m).read()  # type: ignore[union-attr]
                sha = hashlib.sha256(data).hexdigest()
                lines.append(f"  {m.name} {m.size} {m.mtime} {m.mode:o} {m.type!r} {sha}")
                if m.name.endswith(".json"):
                    lines.append("    " + data.decode())
    check("lists/webdataset.txt", "\n".join(lines).encode() + b"\n")


def test_rebuild(tmp_path: Path) -> None:
    out = tmp_path / "out"
    specs = golden_folder(out)
    jobs, failures = golden_rebuild_input(out, specs)
    report = rebuild_from_rows(
        out, iter(jobs), iter(failures), manifest_sha256=MANIFEST_SHA, version=VERSION
    )
    summary = {
        "rows": report.rows,
        "failures": report.failures,
        "missing": report.missing,
        "changed": report.changed,
        "invalid": report.invalid,
    }
    check("lists/rebuild-report.json", json.dumps(summary, indent=1).encode() + b"\n")
    check("lists/rebuild-metadata.jsonl", (out / METADATA).read_bytes())
    check("lists/rebuild-failures.jsonl", (out / FAILURES).read_bytes())
