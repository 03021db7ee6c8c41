"""Benchmark the output commands on a synthetic folder of N images: wall time and peak RSS.

Measures, never asserts. Each command runs as `python -m batchgen ...` in its own process and
its peak RSS is that process's own (``os.wait4``), so one command's high water mark never
hides another's.

    .venv/bin/python bench/outputs.py                       # 10,000, 100,000 and 1,000,000 rows
    .venv/bin/python bench/outputs.py --rows 100000 --only export-csv status
    .venv/bin/python bench/outputs.py --rows 10000 --keep /tmp/b    # reuse the folder next time

The folder has what a finished run leaves: a journal of N DOWNLOADED jobs (plus 1% failed and
1% still running, so ``status`` has lists to cap), a completion event per job, ``metadata.jsonl``
with one realistic row per image (plus 0.1% rows written twice, as a crash re-download does),
and N image files. The files are hard links to a few tiny PNGs: distinct names (the rebuild
checks each one) for the price of a directory entry each. The index is restored before each
command, since the rebuild rewrites it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image

from batchgen._version import __version__
from batchgen.journal.writer import JOURNAL_NAME, Journal
from batchgen.outputs.checks import inspect_image, mime_of, sha256_file
from batchgen.outputs.download import Downloaded
from batchgen.outputs.index import METADATA, index_row
from batchgen.planning.jobs import JobSpec, job_id

SHA = "b" * 64
ENDPOINT = "openai/gpt-image-2"
SUBJECTS = ["a lighthouse", "a red fox", "a tea house", "an old tram", "a glacier lake"]
LINKS_PER_FILE = 50_000  # ext4 allows 65,000 hard links to one inode
T0 = 1_800_000_000.0

COMMANDS: dict[str, list[str]] = {
    "export-parquet": ["export", "{out}", "--format", "parquet"],
    "export-csv": ["export", "{out}", "--format", "csv"],
    "export-webdataset": ["export", "{out}", "--format", "webdataset"],
    "status": ["status", "{out}"],
    "index-rebuild": ["index", "{out}", "--rebuild"],
}


def spec(i: int) -> JobSpec:
    prompt = (
        f"{SUBJECTS[i % 5]} at dawn, seen from a low angle, soft film grain, "
        f"muted colours, wide lens, variation {i}"
    )
    inp = {
        "prompt": prompt,
        "image_size": "1024x1024",
        "quality": "medium",
        "output_format": "png",
        "num_images": 1,
    }
    return JobSpec(
        job_id(ENDPOINT, inp, 0),
        ENDPOINT,
        inp,
        0,
        f"p{i % 1000}",
        prompt,
        vars={"subject": SUBJECTS[i % 5]},
        tags=["dawn", f"set{i % 10}"],
    )


def line(row: dict[str, Any]) -> bytes:
    return (json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def build(out: Path, n: int) -> None:
    """The synthetic folder of ``n`` images (see the module docstring)."""
    src_dir = out / ".src"  # hidden: ImageFolder and the exports never look here
    src_dir.mkdir(parents=True)
    sources = []
    for k in range(n // LINKS_PER_FILE + 1):
        path = src_dir / f"{k}.png"
        Image.new("RGB", (64, 64), (200, 120, 40)).save(path, "PNG")
        size, digest = sha256_file(path)
        w, h, fmt = inspect_image(path)
        sources.append(Downloaded(path, digest, size, w, h, mime_of(fmt)))
    (out / "images").mkdir()
    made: set[str] = set()
    again: list[bytes] = []

    with (out / METADATA).open("wb") as index:

        def specs() -> Iterator[JobSpec]:
            for i in range(n):
                s = spec(i)
                src = sources[i // LINKS_PER_FILE]
                folder = out / "images" / s.prompt_id
                if s.prompt_id not in made:
                    folder.mkdir()
                    made.add(s.prompt_id)
                dest = folder / f"{s.short_id}_0.png"
                os.link(src.path, dest)
                d = Downloaded(dest, src.sha256, src.bytes, src.width, src.height, src.content_type)
                row = index_row(
                    s,
                    0,
                    d,
                    out_dir=out,
                    manifest_sha256=SHA,
                    request_id=f"req-{i}",
                    submitted_at=T0 + i,
                    completed_at=T0 + i + 20,
                    downloaded_at=T0 + i + 22,
                    inference_time=18.5,
                    cost_estimate=0.04,
                    origin="fal",
                )
                index.write(line(row))
                if i % 1000 == 999:  # a crash re-download writes the row again, later
                    again.append(line(dict(row, downloaded_at="2027-02-01T00:00:00.000Z")))
                yield s

        with Journal.open(
            out / JOURNAL_NAME,
            manifest_sha256=SHA,
            version=__version__,
            settings={},
            manifest_path="/data/bench.yaml",
        ) as j:
            j.add_jobs(specs(), cost_of=lambda s: 0.04)
        index.writelines(again)
    finish_journal(out / JOURNAL_NAME, sources[0])


def finish_journal(path: Path, src: Downloaded) -> None:
    """Every job DOWNLOADED with its file recorded, as the downloader leaves them (in SQL: the
    journal's own calls commit once per job, an hour at a million), then 1% failed, 1% running."""
    files = (
        "json_array(json_object('file_name', 'images/' || json_extract(spec, '$.prompt_id')"
        " || '/' || substr(job_id, 1, 16) || '_0.png', 'sha256', ?, 'bytes', ?))"
    )
    conn = sqlite3.connect(path, isolation_level=None)
    with conn:
        conn.execute("BEGIN")
        conn.execute(
            "UPDATE jobs SET state = 'DOWNLOADED', request_id = 'req-' || seq, billed = 1,"
            " origin = 'fal', submitted_at = ? + seq, updated_at = ? + seq + 22,"
            ' result = \'{"images":[{"url":"https://v3.fal.media/x.png"}]}\','
            f" files = {files}",
            (T0, T0, src.sha256, src.bytes),
        )
        conn.execute(
            "INSERT INTO events (ts, job_id, kind, detail) SELECT ? + seq + 20, job_id, 'state',"
            " 'RUNNING->COMPLETED' FROM jobs",
            (T0,),
        )
        conn.execute(
            "UPDATE jobs SET state = 'FAILED', files = NULL, error_class ="
            " 'content_policy_violation', error = 'refused' WHERE seq % 100 = 50"
        )
        conn.execute("UPDATE jobs SET state = 'RUNNING', files = NULL WHERE seq % 100 = 51")
    conn.close()


# A small launcher runs each command and reports its rusage. Linux carries a process's peak
# RSS across fork and exec, so a command started straight from this script (which has just
# built a million-row folder) would report this script's size when larger than its own.
LAUNCHER = """\
import json, os, sys, time
t = time.perf_counter()
null = [(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)]
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ, file_actions=null)
_, status, ru = os.wait4(pid, 0)
print(json.dumps([time.perf_counter() - t, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024,
                  os.waitstatus_to_exitcode(status)]))
"""


def measure(args: list[str]) -> tuple[float, float, float, int, str]:
    """(seconds, CPU seconds, peak RSS in MB, exit code, last line of stderr) of one batchgen
    command. CPU time is the steadier figure on a machine other work is using."""
    cmd = [sys.executable, "-S", "-c", LAUNCHER, sys.executable, "-m", "batchgen", *args]
    with tempfile.TemporaryFile() as err:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, check=True)
        err.seek(0)
        tail = err.read().decode(errors="replace").strip().splitlines()[-1:]
    seconds, cpu, rss, code = json.loads(done.stdout)
    return seconds, cpu, rss, code, tail[0] if tail else ""


def bench(n: int, root: Path, only: list[str]) -> list[dict[str, Any]]:
    out = root / f"out-{n}"
    saved = root / f"metadata-{n}.jsonl"
    if not (out / JOURNAL_NAME).exists() or not saved.exists():
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        build(out, n)
        shutil.copyfile(out / METADATA, saved)
        print(f"built {n:,} rows in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    results = []
    for name in only:
        shutil.copyfile(saved, out / METADATA)
        shutil.rmtree(out / "exports", ignore_errors=True)
        seconds, cpu, rss, code, tail = measure([a.format(out=out) for a in COMMANDS[name]])
        results.append(
            {
                "rows": n,
                "command": name,
                "seconds": round(seconds, 2),
                "cpu_s": round(cpu, 2),
                "peak_rss_mb": round(rss),
                "exit": code,
                "cpu_us_per_row": round(cpu / n * 1e6, 1),
            }
        )
        print(json.dumps(results[-1]) + (f"  {tail}" if code else ""), file=sys.stderr)
    shutil.rmtree(out / "exports", ignore_errors=True)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--only", nargs="+", choices=list(COMMANDS), default=list(COMMANDS))
    p.add_argument("--keep", type=Path, help="build (and reuse) the folders here")
    p.add_argument("--json", action="store_true", help="print the results as JSON lines")
    a = p.parse_args()
    root = a.keep or Path(tempfile.mkdtemp(prefix="bench-outputs-"))
    root.mkdir(parents=True, exist_ok=True)
    base = measure(["--version"])
    print(f"python -m batchgen --version alone: {base[2]:.0f} MB", file=sys.stderr)
    try:
        results = [r for n in a.rows for r in bench(n, root, a.only)]
    finally:
        if a.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    if a.json:
        for r in results:
            print(json.dumps(r))
        return
    print("| rows | command | wall s | CPU s | CPU µs per row | peak RSS MB | exit |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r['rows']:,} | `{r['command']}` | {r['seconds']:.1f} | {r['cpu_s']:.1f}"
            f" | {r['cpu_us_per_row']:.0f} | {r['peak_rss_mb']} | {r['exit']} |"
        )


if __name__ == "__main__":
    main()
