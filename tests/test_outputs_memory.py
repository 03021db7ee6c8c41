"""Every output command holds as much memory for ten times the rows: it streams.

Measured with tracemalloc (Python's own allocations: rows, dicts, lists, the Bloom filter) on
synthetic folders of SMALL and BIG rows (``test_outputs_support.synthetic_rows``: distinct file
names, hard links to a few tiny images). Reading everything into a list costs about 4 KB a row,
so the list-based code this replaced peaked about ten times higher on BIG than on SMALL; the
streamed code may grow by a small fraction only. ``bench/outputs.py`` measures whole processes
at up to a million rows.
"""

from __future__ import annotations

import gc
import sqlite3
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from test_outputs_support import (
    MANIFEST_SHA,
    VERSION,
    line,
    synthetic_jobs,
    synthetic_rows,
    synthetic_spec,
)

from batchgen.journal.writer import JOURNAL_NAME, Journal
from batchgen.outputs import export as outputs_export
from batchgen.outputs.export import export
from batchgen.outputs.index import METADATA
from batchgen.outputs.rebuild import rebuild_from_rows
from batchgen.outputs.scan import iter_index
from batchgen.outputs.status import MAX_IN_FLIGHT_SHOWN, build_report

SMALL, BIG = 300, 3_000
# Peak on BIG within this factor of the peak on SMALL, plus an allowance: for iter_index, what
# rightly scales a little (the Bloom filter is sized from the file: 2 bytes a row); for the
# commands, a one-off transient of CPython's: pathlib interns every path component it parses,
# and the interpreter's table of interned strings is now and then rebuilt as names come and go
# (about 2 MB here, at some point of a run whatever its rows).
FACTOR = 1.25


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    made = {}
    for n in (SMALL, BIG):
        out = tmp_path_factory.mktemp(f"rows{n}")
        with (out / METADATA).open("wb") as f:
            f.writelines(line(r) for r in synthetic_rows(out, n))
        made[n] = out
    return made


def peak(work: Callable[[], object], *, warm: bool = False) -> int:
    if warm:
        work()  # imports and first-call caches are not what is measured
    gc.collect()
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def assert_flat(small: int, big: int, slack: int) -> None:
    print(f"peak {small / 1e6:.2f} MB, then {big / 1e6:.2f} MB with ten times the rows")
    assert big < small * FACTOR + slack, f"{small / 1e6:.2f} MB -> {big / 1e6:.2f} MB"


def test_iter_index(folders: dict[int, Path]) -> None:
    def count(out: Path) -> int:
        return sum(1 for _ in iter_index(out))

    small = peak(lambda: count(folders[SMALL]), warm=True)
    assert_flat(small, peak(lambda: count(folders[BIG])), slack=64 << 10)


@pytest.mark.parametrize("fmt", ["csv", "parquet", "webdataset"])
def test_export(folders: dict[int, Path], fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Row groups (and shards) much smaller than SMALL, so both folders fill several.
    monkeypatch.setattr(outputs_export, "ROW_GROUP", 100, raising=False)
    results = {}

    def run(n: int) -> None:
        results[n] = export(folders[n], fmt, shard_size=100)

    assert_flat(peak(lambda: run(SMALL), warm=True), peak(lambda: run(BIG)), slack=3 << 20)
    assert results[BIG].rows == BIG and not results[BIG].skipped


def test_rebuild(folders: dict[int, Path]) -> None:
    """Runs last here: it rewrites the folders' index (with the very same rows)."""
    before = {n: (out / METADATA).read_bytes() for n, out in folders.items()}
    reports = {}

    def run(n: int) -> None:
        jobs = synthetic_jobs(folders[n], n)
        reports[n] = rebuild_from_rows(
            folders[n], jobs, manifest_sha256=MANIFEST_SHA, version=VERSION
        )

    assert_flat(peak(lambda: run(SMALL), warm=True), peak(lambda: run(BIG)), slack=3 << 20)
    assert reports[BIG].rows == BIG and reports[BIG].ok
    assert {n: (out / METADATA).read_bytes() for n, out in folders.items()} == before
    assert [p.name for p in folders[BIG].iterdir() if p.name.startswith(".")] == []


@pytest.fixture(scope="module")
def journals(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Journals of 3 and 30 times SMALL jobs, nine in ten of them running (a listing each),
    the rest failed, BYOK results with usage among them."""
    made = {}
    for n in (SMALL * 3, BIG * 3):
        out = tmp_path_factory.mktemp(f"journal{n}")
        with Journal.open(
            out / JOURNAL_NAME, manifest_sha256=MANIFEST_SHA, version=VERSION, settings={}
        ) as j:
            j.add_jobs((synthetic_spec(i) for i in range(n)), cost_of=lambda s: 0.04)
        with sqlite3.connect(out / JOURNAL_NAME) as db:
            db.execute(
                "UPDATE jobs SET state = 'RUNNING', request_id = 'req-' || seq, submitted_at ="
                ' seq, billed = 1, result = \'{"usage": {"input_tokens": 5}}\''
            )
            db.execute(
                "UPDATE jobs SET state = 'FAILED', error_class = 'c' || (seq % 7), error = 'no'"
                " WHERE seq % 10 = 0"
            )
        db.close()
        made[n] = out
    return made


def test_status(journals: dict[int, Path]) -> None:
    reports = {}

    def run(n: int) -> None:
        with Journal.open_readonly(journals[n] / JOURNAL_NAME) as reader:
            reports[n] = build_report(reader, journals[n], now=1e6, writer_pid=None)

    small, big = sorted(journals)
    assert_flat(peak(lambda: run(small), warm=True), peak(lambda: run(big)), slack=64 << 10)
    report = reports[big]
    assert report.in_flight_total == big * 9 // 10
    assert len(report.in_flight) == MAX_IN_FLIGHT_SHOWN
    assert report.in_flight[0].request_id == "req-1" and report.actual is not None
