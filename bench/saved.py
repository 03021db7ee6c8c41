"""Benchmark the check of saved images a run makes before it submits (outputs/saved.py): the
cheap one (a ``stat`` per file, every run and ``batchgen status``) and ``--verify`` (the
sha256 of every file as well). Measures, never asserts.

    .venv/bin/python bench/saved.py                        # 100,000 and 1,000,000 files
    .venv/bin/python bench/saved.py --rows 100000 --keep /tmp/b

The folder is bench/outputs.py's (a journal of N DOWNLOADED jobs, one hard-linked tiny PNG
each; reused from ``--keep`` when built there already). Each check runs twice, and the second
(warm cache: a run that just listed the folder, or the usual state of a machine that wrote it)
is reported with the first; a cold cache (after a reboot, a network share) is slower, bounded
by the disk's metadata reads.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from batchgen.journal.writer import JOURNAL_NAME, Journal
from batchgen.outputs.saved import check_saved, find_broken
from outputs import build  # bench/outputs.py


def timed(label: str, n: int, fn: object) -> None:
    for attempt in ("first", "again"):
        t = time.perf_counter()
        c = fn()  # type: ignore[operator]
        s = time.perf_counter() - t
        k = max(1, c.checked)
        print(
            f"{n:>9,} jobs  {label:<15} {attempt}: {s:6.2f} s  {s / k * 1e6:5.1f} µs a file"
            f"  {s / k * 1e5:5.2f} s per 100k files  (checked {c.checked:,}, broken {c.count})"
        )


def bench(n: int, root: Path, verify: bool) -> None:
    out = root / f"out-{n}"
    if not (out / JOURNAL_NAME).exists():
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        build(out, n)
        print(f"built {n:,} rows in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    with Journal.open_readonly(out / JOURNAL_NAME) as reader:
        timed("status (cheap)", n, lambda: check_saved(reader, out))
        timed("run (cheap)", n, lambda: asyncio.run(find_broken(reader, out, verify=False)))
        if verify:
            timed("run --verify", n, lambda: asyncio.run(find_broken(reader, out, verify=True)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--keep", type=Path, help="build (and reuse) the folders here")
    p.add_argument("--no-verify", action="store_true", help="leave out --verify's hashing")
    a = p.parse_args()
    root = a.keep or Path(tempfile.mkdtemp(prefix="bench-saved-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        for n in a.rows:
            bench(n, root, not a.no_verify)
    finally:
        if a.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
