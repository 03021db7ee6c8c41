"""Export an output folder's index: parquet, spreadsheet-safe CSV, or webdataset tar shards.

Everything is written under ``out/exports/`` unless the user names another place, always to a
``.part`` first and renamed into place, so a reader never sees half an export. The webdataset
export copies image bytes, so it checks each file against its index checksum and skips (and
reports) any that is missing or changed rather than shipping a bad sample.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from batchgen.errors import UsageError
from batchgen.outputs.download import sha256_file
from batchgen.outputs.index import INDEX_FIELDS, read_index

EXPORTS = "exports"
FORMATS = ("parquet", "csv", "webdataset")
_SHARD = re.compile(r"shard-\d{6}\.tar")
# A spreadsheet runs a cell starting with one of these as a formula ("CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass
class ExportResult:
    paths: list[Path] = field(default_factory=list)
    rows: int = 0
    skipped: list[str] = field(default_factory=list)  # file names missing or changed on disk


def default_dest(out_dir: Path, fmt: str) -> Path:
    return (
        out_dir
        / EXPORTS
        / {"parquet": "index.parquet", "csv": "index.csv", "webdataset": "webdataset"}[fmt]
    )


def export(
    out_dir: Path, fmt: str, dest: Path | None = None, *, shard_size: int = 1000
) -> ExportResult:
    """Export ``out_dir``'s index as ``fmt`` to ``dest`` (default: under ``out/exports``)."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r} (one of {', '.join(FORMATS)})")
    rows = read_index(out_dir)
    target = dest if dest is not None else default_dest(out_dir, fmt)
    if fmt == "parquet":
        return export_parquet(rows, target)
    if fmt == "csv":
        return export_csv(rows, target)
    return export_webdataset(out_dir, rows, target, shard_size=shard_size)


def _atomic_write(dest: Path, write: Callable[[Path], None]) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        write(tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


# ---- parquet --------------------------------------------------------------------------------


def _timestamp(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def export_parquet(rows: Sequence[Mapping[str, Any]], dest: Path) -> ExportResult:
    """One parquet file with the index columns; vars as a string map, tags as a list of names
    or a string map, times as UTC."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        # `batchgen[parquet]` only resolves for an installed distribution; from a checkout the
        # extra is spelled `.[parquet]`, and plain pyarrow works from both.
        raise UsageError(
            "parquet export needs pyarrow: pip install pyarrow"
            " (or, in a checkout of batchgen, pip install -e '.[parquet]')"
        ) from None
    text, i32, i64, f64 = pa.string(), pa.int32(), pa.int64(), pa.float64()
    smap, ts = pa.map_(pa.string(), pa.string()), pa.timestamp("ms", tz="UTC")
    ref = pa.struct([("path", text), ("url", text), ("sha256", text)])
    types: dict[str, Any] = {
        "image_index": i32,
        "variant": i32,
        "width": i32,
        "height": i32,
        "bytes": i64,
        "vars": smap,
        "tags": smap,
        "submitted_at": ts,
        "completed_at": ts,
        "downloaded_at": ts,
        "inference_time": f64,
        "cost_estimate": f64,
        "cost_actual": f64,
        "references": pa.list_(ref),
        "mask": ref,
    }
    convert: dict[str, Callable[[Any], Any]] = {
        "vars": lambda v: [(str(k), str(x)) for k, x in v.items()] if isinstance(v, dict) else None,
        "submitted_at": _timestamp,
        "completed_at": _timestamp,
        "downloaded_at": _timestamp,
        "usage": lambda v: None if v is None else json.dumps(v, sort_keys=True),
    }
    # Tags are a list of names unless the manifest gave mappings (then every row has one).
    if rows and all(isinstance(r.get("tags"), list) for r in rows):
        types["tags"] = pa.list_(text)
        convert["tags"] = lambda v: [str(t) for t in v]
    else:
        pairs = convert["vars"]
        convert["tags"] = lambda v: [(str(t), "") for t in v] if isinstance(v, list) else pairs(v)
    schema = pa.schema([(name, types.get(name, text)) for name in INDEX_FIELDS])
    columns = {
        name: [convert.get(name, lambda v: v)(r.get(name)) for r in rows] for name in INDEX_FIELDS
    }
    table = pa.Table.from_pydict(columns, schema=schema)
    _atomic_write(dest, lambda tmp: pq.write_table(table, tmp))
    return ExportResult(paths=[dest], rows=len(rows))


# ---- CSV ------------------------------------------------------------------------------------


def csv_cell(value: Any) -> str | int | float:
    """A value as a CSV cell a spreadsheet shows as text: formulas are defused with a quote."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return value
    text = (
        value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    )
    return "'" + text if text.startswith(_FORMULA_START) else text


def export_csv(rows: Sequence[Mapping[str, Any]], dest: Path) -> ExportResult:
    """A CSV of the index (UTF-8 with a BOM so Excel reads prompts right)."""

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8-sig", newline="") as f:
            w = csv.writer(f)
            w.writerow(INDEX_FIELDS)
            for r in rows:
                w.writerow([csv_cell(r.get(name)) for name in INDEX_FIELDS])

    _atomic_write(dest, write)
    return ExportResult(paths=[dest], rows=len(rows))


# ---- webdataset -----------------------------------------------------------------------------


def sample_key(row: Mapping[str, Any]) -> str:
    """A webdataset key: no dots (the loader splits key from extension at the first one)."""
    return f"{row['job_id']}_{int(row.get('image_index') or 0)}"


def _verified(
    out_dir: Path, rows: Sequence[Mapping[str, Any]], skipped: list[str]
) -> Iterator[tuple[Mapping[str, Any], Path]]:
    images = (out_dir / "images").resolve()
    for r in rows:
        path = (out_dir / str(r["file_name"])).resolve()
        # The index is data: a row naming a file outside images/ is never read into a shard.
        if not path.is_relative_to(images) or not path.is_file():
            skipped.append(str(r["file_name"]))
            continue
        if sha256_file(path)[1] != r.get("sha256"):
            skipped.append(str(r["file_name"]))
            continue
        yield r, path


def _mtime(row: Mapping[str, Any], path: Path) -> float:
    """When the image was saved: the row's ``downloaded_at`` (so the same index exports the
    same shards byte for byte), else the file's own mtime. Never 0, which tar shows as 1970."""
    try:
        when = _timestamp(row.get("downloaded_at"))
    except ValueError:  # the index is data: a mangled time falls back to the file's
        when = None
    return when.timestamp() if when is not None else path.stat().st_mtime


def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, int(mtime)
    tar.addfile(info, io.BytesIO(data))


def _write_shard(tmp: Path, *, batch: Sequence[tuple[Mapping[str, Any], Path]]) -> None:
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for row, path in batch:
            key = sample_key(row)
            ext = path.suffix.lstrip(".").lower() or "img"
            mtime = _mtime(row, path)
            _add(tar, f"{key}.{ext}", path.read_bytes(), mtime)
            meta = json.dumps(row, ensure_ascii=False, sort_keys=True).encode()
            _add(tar, f"{key}.json", meta, mtime)


def export_webdataset(
    out_dir: Path, rows: Sequence[Mapping[str, Any]], dest: Path, *, shard_size: int = 1000
) -> ExportResult:
    """Tar shards ``shard-000000.tar``… of ``shard_size`` samples: ``{key}.{ext}`` + ``{key}.json``.

    Shards from an earlier, larger export into the same folder are removed so that a loader
    globbing ``shard-*.tar`` never reads stale samples.
    """
    if shard_size < 1:
        raise UsageError("--shard-size must be at least 1")
    dest.mkdir(parents=True, exist_ok=True)
    result = ExportResult()
    samples = list(_verified(out_dir, rows, result.skipped))
    for start in range(0, len(samples), shard_size):
        shard = dest / f"shard-{start // shard_size:06d}.tar"
        batch = samples[start : start + shard_size]
        _atomic_write(shard, functools.partial(_write_shard, batch=batch))
        result.paths.append(shard)
    for old in dest.iterdir():
        if _SHARD.fullmatch(old.name) and old not in result.paths:
            old.unlink()
    result.rows = len(samples)
    return result
