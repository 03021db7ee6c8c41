"""Where a client's CPU goes, by kind of work: a table from py-spy's sampled stacks.

Measures, never asserts. ``bench/run.py --profile DIR`` runs each client process under
``py-spy record --subprocesses`` (``pip install py-spy``) and prints this table for
each; this script also reads such a file again::

    python bench/run.py --only throughput --jobs 1000 --rounds 1 --profile /tmp/prof
    python bench/profile.py /tmp/prof/batchgen-0.txt --jobs 1000 --cpu-ms 15.6

py-spy samples only threads that are on a CPU (idle ones are left out), so the share of
samples is the share of CPU time. Each sample is put in the first category that one of its
frames matches, from the innermost frame outwards: a ``json.dumps`` called by the journal is
JSON, the SQLite statement around it is the journal. Pillow's decoding inside a thumbnail is
"thumbnails", inside the download's check "verification". A sample whose stack runs through a
worker process (a second ``process`` frame) is counted in the workers' column, so the table
shows how much left the event loop's process. ``--cpu-ms`` (the client's CPU ms per job,
from bench/run.py) turns shares into ms per job.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

# (category, pattern over one frame) in the order they are tried for each frame, innermost
# frame first. Frames look like "function (path/file.py:line)" or "symbol (library.so)".
# First, what a whole stack is part of, whatever its innermost frame: an import, a thumbnail,
# the download's image check.
CONTEXT: tuple[tuple[str, str], ...] = (
    ("start-up (imports)", r"<frozen importlib|_find_and_load"),
    ("thumbnails", r"make_thumbnail|save_thumbnail|shrink"),
    ("verification (Pillow)", r"inspect_image|_inspect"),
)
RULES: tuple[tuple[str, str], ...] = (
    ("verification (Pillow)", r"PIL/|Imaging|libjpeg|libpng|libz\.|inflate"),
    ("hashing (sha256)", r"hashlib|sha256|SHA256|EVP_|libcrypto"),
    (
        "fsync, rename, file writes",
        r"fsync|os_replace|rename|BufferedWriter|_io_FileIO_write"
        r"|write \(libc|__libc_pwrite|unlink",
    ),
    ("JSON", r"json/|orjson|_json\.|encoder\.py|decoder\.py"),
    # bench/clients.py's timer around a journal write: innermost only while SQLite's C code runs
    ("journal (SQLite)", r"instrument\.<locals>\.timed"),
    ("journal (SQLite)", r"batchgen/journal/|sqlite3|libsqlite"),
    (
        "events, progress, run.log",
        r"running/events\.py|running/runlog\.py|commands/progress"
        r"|_Delivery|_emit",
    ),
    ("gallery (not thumbnails)", r"outputs/gallery"),
    ("index rows (metadata.jsonl)", r"outputs/index\.py"),
    (
        "worker pool (pickling, pipes)",
        r"batchgen/outputs/workers|concurrent/futures/process|multiprocessing/|pickle",
    ),
    (
        "HTTP (httpx, httpcore, h11, SSE)",
        r"httpx|httpcore|h11/|httpx_sse|anyio|sniffio",
    ),
    ("sockets and the event loop", r"asyncio/|selectors|uvloop|epoll|socket|sock_|recv|send"),
    ("download (the rest)", r"outputs/download"),
    ("scheduler, watching, submitter", r"batchgen/running/"),
    ("fal client", r"batchgen/fal/|fal_client/"),
)
_COMPILED = [(name, re.compile(p)) for name, p in RULES]
_CONTEXT = [(name, re.compile(p)) for name, p in CONTEXT]
OTHER = "other"
# Innermost frames of threads that wait (py-spy's idle check misses a pool thread blocked on
# its queue): not CPU, left out.
WAITING = re.compile(r"^_worker \(concurrent/futures/thread\.py:81\)$|^process \d+:")
# ... and source lines where a thread blocks: a check worker waiting for its next task (on the
# executor's call queue: its lock, or the pipe under it), its parent watchdog asleep.
WAITING_LINES = re.compile(r"with self\._rlock:|read\(handle, remaining\)|time\.sleep\(")


def parse(lines: Iterable[str]) -> Iterator[tuple[list[str], int]]:
    """(frames from the root, count) for each line of py-spy's ``--format raw`` output."""
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if stack and count.isdigit():
            yield stack.split(";"), int(count)


# Without --native, a C function (sha256's update, a file write) shows as the Python line
# that called it: the innermost frame's source line says what it was.
LINE_RULES: tuple[tuple[str, str], ...] = (
    ("hashing (sha256)", r"hasher\.update|\.update\(block|sha256\("),
    ("fsync, rename, file writes", r"os\.fsync|os\.replace|\.write\(|\.unlink\("),
    ("verification (Pillow)", r"\.verify\(\)|\.load\(\)|Image\.open"),
)
_LINE_COMPILED = [(name, re.compile(p)) for name, p in LINE_RULES]
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]+\.py):(?P<line>\d+)\)$")
ROOTS = [Path(__file__).resolve().parents[1], *(Path(p) for p in sys.path if p)]


@functools.cache
def source_line(file: str, line: int) -> str:
    for root in ROOTS:
        path = root / file
        if path.is_file():
            lines = path.read_text(errors="replace").splitlines()
            return lines[line - 1] if 0 < line <= len(lines) else ""
    return ""


def _waits(frame: str) -> bool:
    m = _FRAME.match(frame)
    return bool(m and WAITING_LINES.search(source_line(m["file"], int(m["line"]))))


def categorize(frames: list[str]) -> tuple[str, bool]:
    """(category, in a worker process) for one sampled stack."""
    worker = sum(1 for f in frames if f.startswith("process ")) > 1
    for name, rx in _CONTEXT:
        if any(rx.search(f) for f in frames):
            return name, worker
    m = _FRAME.match(frames[-1]) if frames else None
    if m:
        text = source_line(m["file"], int(m["line"]))
        for name, rx in _LINE_COMPILED:
            if rx.search(text):
                return name, worker
    for frame in reversed(frames):
        if frame.startswith("process "):
            continue
        for name, rx in _COMPILED:
            if rx.search(frame):
                return name, worker
    return OTHER, worker


def table(path: Path, *, jobs: int | None, cpu_ms: float | None) -> list[str]:
    """The table's lines: category, share of all samples, ms per job (when ``cpu_ms`` is
    known), and the share that ran in worker processes."""
    main: Counter[str] = Counter()
    workers: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    with path.open() as f:
        for frames, n in parse(f):
            if WAITING.search(frames[-1]) or _waits(frames[-1]):
                continue
            cat, in_worker = categorize(frames)
            (workers if in_worker else main)[cat] += n
            if cat == OTHER:
                leaves[frames[-1]] += n
    total = sum(main.values()) + sum(workers.values())
    if not total:
        return [f"{path}: no samples"]
    per_job = cpu_ms is not None
    head = f"   {'category':<34} {'share':>6} {'ms/job':>7} {'in workers':>11}"
    out = [f"   profile of {path.name}: {total} samples" + (f", {jobs} jobs" if jobs else ""), head]
    for cat in sorted(set(main) | set(workers), key=lambda c: -(main[c] + workers[c])):
        n = main[cat] + workers[cat]
        ms = f"{cpu_ms * n / total:>7.2f}" if per_job and cpu_ms is not None else f"{'-':>7}"
        out.append(f"   {cat:<34} {n / total:>6.1%} {ms} {workers[cat] / total:>11.1%}")
    out.append(
        f"   {'all':<34} {1:>6.0%} {cpu_ms if per_job else '-':>7} "
        f"{sum(workers.values()) / total:>11.1%}"
    )
    if leaves:
        top = ", ".join(f"{leaf} {n / total:.1%}" for leaf, n in leaves.most_common(4))
        out.append(f"   ('other', innermost frames: {top})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("raw", type=Path, help="py-spy record --format raw output")
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--cpu-ms", type=float, default=None, help="the client's CPU ms per job")
    a = ap.parse_args()
    print("\n".join(table(a.raw, jobs=a.jobs, cpu_ms=a.cpu_ms)))


if __name__ == "__main__":
    main()
