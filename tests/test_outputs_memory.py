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
)

from batchgen.outputs import export as outputs_export
from batchgen.outputs.export import export
from batchgen.outputs.index import METADATA
from batchgen.outputs.rebuild import rebuild_from_rows
from batchgen.outputs.scan import iter_index

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
        reports[n] = rebuild_from_rows(folders[n], jobs, manifest_sha256=MANIFEST_SHA,
                                       version=VERSION)  # fmt: skip

    assert_flat(peak(lambda: run(SMALL), warm=True), peak(lambda: run(BIG)), slack=3 << 20)
    assert reports[BIG].rows == BIG and reports[BIG].ok
    assert {n: (out / METADATA).read_bytes() for n, out in folders.items()} == before
    assert [p.name for p in folders[BIG].iterdir() if p.name.startswith(".")] == []
