"""Export an output folder's index: parquet, spreadsheet-safe CSV, webdataset tar shards, or
training captions (outputs/captions.py).

Everything is written under ``out/exports/`` unless the user names another place, always to a
``.part`` first and renamed into place, so a reader never sees half an export. The webdataset
export copies image bytes, so it checks each file against its index checksum and skips (and
reports) any that is missing or changed rather than shipping a bad sample.

Every format streams the index (:func:`~batchgen.outputs.scan.iter_index`): memory stays flat
however many rows there are (parquet holds one row group, webdataset one sample at a time).
Every format carries a ``review`` column, each image's mark (outputs/marks.py: ``picked``,
``rejected`` or empty), and leaves out what ``exclude_rejected`` / ``only_picked`` say: the
marks are few and read once, so that is a dict look-up a row.
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import json
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from batchgen.errors import UsageError
from batchgen.journal.stale import StaleJobs, folder_stale
from batchgen.journal.writer import JOURNAL_NAME
from batchgen.outputs.captions import check_dest, export_captions
from batchgen.outputs.checks import sha256_file
from batchgen.outputs.exportkit import ExportResult, atomic_write, sample_key
from batchgen.outputs.index import INDEX_FIELDS
from batchgen.outputs.marks import keeps, read_marks, review_of
from batchgen.outputs.scan import iter_index

Rows = Iterable[Mapping[str, Any]]
EXPORTS = "exports"
FORMATS = ("parquet", "csv", "webdataset", "captions")
# The columns of every export: the index's and each image's mark.
EXPORT_FIELDS = (*INDEX_FIELDS, "review")
_SHARD = re.compile(r"shard-\d{6}\.tar")
# A spreadsheet runs a cell starting with one of these as a formula ("CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# Rows per parquet row group: what the writer holds at once (about 45 MB of Python values for
# 1 KB rows, bench/outputs.py); big enough that readers get long runs per column.
ROW_GROUP = 10_000


def default_dest(out_dir: Path, fmt: str) -> Path:
    return (
        out_dir
        / EXPORTS
        / {
            "parquet": "index.parquet",
            "csv": "index.csv",
            "webdataset": "webdataset",
        }[fmt]
    )


def export(
    out_dir: Path,
    fmt: str,
    dest: Path | None = None,
    *,
    shard_size: int = 1000,
    include_stale: bool = False,
    exclude_rejected: bool = False,
    only_picked: bool = False,
) -> ExportResult:
    """Export ``out_dir``'s index as ``fmt`` to ``dest`` (default: under ``out/exports``).
    Stale images (of jobs the manifest no longer names, as the folder's journal says) are left
    out unless ``include_stale``; rejected ones with ``exclude_rejected``, all but the picked
    ones with ``only_picked``. Each row gets its ``review``."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r} (one of {', '.join(FORMATS)})")
    if fmt == "captions":
        target = check_dest(Path(out_dir), dest)  # named, outside the folder, before reading
    else:
        target = dest if dest is not None else default_dest(out_dir, fmt)
    stale = StaleJobs() if include_stale else folder_stale(Path(out_dir) / JOURNAL_NAME)
    marks = read_marks(out_dir)
    filtering = exclude_rejected or only_picked
    left_out = [0, 0]

    def rows() -> Iterator[dict[str, Any]]:
        left_out[:] = [0, 0]  # parquet may read the rows twice (its tags' type)
        for r in iter_index(out_dir):
            if stale and r.get("job_id") in stale:
                left_out[0] += 1
                continue
            name = r.get("file_name")
            mark = marks.get(name) if marks and isinstance(name, str) else None
            if filtering and not keeps(
                mark, exclude_rejected=exclude_rejected, only_picked=only_picked
            ):
                left_out[1] += 1
                continue
            r["review"] = review_of(mark)
            yield r

    if fmt == "parquet":
        result = export_parquet(rows, target)
    elif fmt == "csv":
        result = export_csv(rows(), target)
    elif fmt == "webdataset":
        result = export_webdataset(out_dir, rows(), target, shard_size=shard_size)
    else:
        result = export_captions(out_dir, rows(), target)
    result.stale, result.unmarked = left_out
    return result


# ---- parquet --------------------------------------------------------------------------------


def _timestamp(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def _pyarrow() -> tuple[Any, Any]:
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
    return pa, pq


def _parquet_schema(pa: Any, tag_lists: bool) -> tuple[Any, dict[str, Callable[[Any], Any]]]:
    """The schema of the index columns and the conversion of each value that needs one."""
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
        "blank": pa.bool_(),
    }
    convert: dict[str, Callable[[Any], Any]] = {
        "vars": lambda v: [(str(k), str(x)) for k, x in v.items()] if isinstance(v, dict) else None,
        "submitted_at": _timestamp,
        "completed_at": _timestamp,
        "downloaded_at": _timestamp,
        "usage": lambda v: None if v is None else json.dumps(v, sort_keys=True),
    }
    if tag_lists:
        types["tags"] = pa.list_(text)
        convert["tags"] = lambda v: [str(t) for t in v]
    else:
        pairs = convert["vars"]
        convert["tags"] = lambda v: [(str(t), "") for t in v] if isinstance(v, list) else pairs(v)
    return pa.schema([(name, types.get(name, text)) for name in EXPORT_FIELDS]), convert


def _write_parquet(tmp: Path, rows: Rows, *, tag_lists: bool, row_group: int) -> int | None:
    """Write ``rows`` a row group at a time; the number written, or None when ``tag_lists``
    and some row's tags are not a list (or there is no row: then tags are typed as maps)."""
    pa, pq = _pyarrow()
    schema, convert = _parquet_schema(pa, tag_lists)
    same: Callable[[Any], Any] = lambda v: v  # noqa: E731
    fields = [(name, convert.get(name, same)) for name in EXPORT_FIELDS]
    # Each row goes into the column lists at once and is dropped: a row group holds the values,
    # not the values and every row's dict too (a third less memory).
    columns: dict[str, list[Any]] = {name: [] for name in EXPORT_FIELDS}
    n = 0
    with pq.ParquetWriter(tmp, schema) as writer:
        for r in rows:
            if tag_lists and not isinstance(r.get("tags"), list):
                return None
            for name, conv in fields:
                columns[name].append(conv(r.get(name)))
            n += 1
            if n % row_group == 0:
                writer.write_table(pa.Table.from_pydict(columns, schema=schema))
                columns = {name: [] for name in EXPORT_FIELDS}
        if tag_lists and n == 0:
            return None
        if n % row_group or n == 0:  # an empty index still gets its (empty) row group
            writer.write_table(pa.Table.from_pydict(columns, schema=schema))
    return n


def export_parquet(
    rows: Sequence[Mapping[str, Any]] | Callable[[], Rows],
    dest: Path,
    *,
    row_group: int | None = None,
) -> ExportResult:
    """One parquet file with the index columns; vars as a string map, tags as a list of names
    or a string map, times as UTC. Written ``row_group`` rows at a time (default
    ``ROW_GROUP``). ``rows`` is a sequence or a function that gives the rows anew."""
    _pyarrow()  # says how to install it before anything is written
    source = rows if callable(rows) else lambda: rows
    size = row_group or ROW_GROUP

    # Tags are a list of names unless the manifest gave mappings (then every row has one), and
    # which it is shows only at the end. So the rows are written with list tags while they are
    # lists and, at the first that is not, anew with map tags: one pass over most folders,
    # two when a mapping appears late (rare: with mappings, every row has one).
    def write(tmp: Path) -> int:
        n = _write_parquet(tmp, source(), tag_lists=True, row_group=size)
        if n is None:
            n = _write_parquet(tmp, source(), tag_lists=False, row_group=size)
        assert n is not None  # map tags take any row
        return n

    return ExportResult(paths=[dest], rows=atomic_write(dest, write))


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


def export_csv(rows: Rows, dest: Path) -> ExportResult:
    """A CSV of the index (UTF-8 with a BOM so Excel reads prompts right), row by row."""

    def write(tmp: Path) -> int:
        n = 0
        with tmp.open("w", encoding="utf-8-sig", newline="") as f:
            w = csv.writer(f)
            w.writerow(EXPORT_FIELDS)
            for r in rows:
                w.writerow([csv_cell(r.get(name)) for name in EXPORT_FIELDS])
                n += 1
        return n

    return ExportResult(paths=[dest], rows=atomic_write(dest, write))


# ---- webdataset -----------------------------------------------------------------------------


def _verified(
    out_dir: Path, rows: Rows, result: ExportResult
) -> Iterator[tuple[Mapping[str, Any], Path]]:
    images = (out_dir / "images").resolve()
    for r in rows:
        path = (out_dir / str(r["file_name"])).resolve()
        # The index is data: a row naming a file outside images/ is never read into a shard.
        if not path.is_relative_to(images) or not path.is_file():
            result.skip(str(r["file_name"]))
            continue
        if sha256_file(path)[1] != r.get("sha256"):
            result.skip(str(r["file_name"]))
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


def _write_shard(tmp: Path, *, batch: Iterable[tuple[Mapping[str, Any], Path]]) -> int:
    n = 0
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for row, path in batch:
            n += 1
            key = sample_key(row)
            ext = path.suffix.lstrip(".").lower() or "img"
            mtime = _mtime(row, path)
            _add(tar, f"{key}.{ext}", path.read_bytes(), mtime)
            meta = json.dumps(row, ensure_ascii=False, sort_keys=True).encode()
            _add(tar, f"{key}.json", meta, mtime)
    return n


def export_webdataset(
    out_dir: Path, rows: Rows, dest: Path, *, shard_size: int = 1000
) -> ExportResult:
    """Tar shards ``shard-000000.tar``… of ``shard_size`` samples: ``{key}.{ext}`` + ``{key}.json``.

    Shards from an earlier, larger export into the same folder are removed so that a loader
    globbing ``shard-*.tar`` never reads stale samples.
    """
    if shard_size < 1:
        raise UsageError("--shard-size must be at least 1")
    dest.mkdir(parents=True, exist_ok=True)
    result = ExportResult()
    samples = _verified(out_dir, rows, result)
    # One sample at a time, whatever the shard size: a shard is begun by its first verified
    # sample and takes the next ones from the same iterator.
    for first in samples:
        shard = dest / f"shard-{len(result.paths):06d}.tar"
        batch = itertools.chain([first], itertools.islice(samples, shard_size - 1))
        result.rows += atomic_write(shard, functools.partial(_write_shard, batch=batch))
        result.paths.append(shard)
    written = set(result.paths)
    for old in dest.iterdir():
        if _SHARD.fullmatch(old.name) and old not in written:
            old.unlink()
    return result
