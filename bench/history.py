"""What fal's history costs and saves: lost submit answers and expired results, measured.

Measures, never asserts. Each scenario runs real ``batchgen run`` processes against a
``batchgen emulator`` process on loopback (it outlives the runs, as fal does), and reads the
emulator's own counters: submits it accepted, inputs it was sent more than once, calls to its
request history.

- ``drops``: N jobs with a share of submit answers dropped after the request was made (0, a
  quarter, a half): inputs paid twice, look-ups (``history:`` lines of run.log), history calls
  and the run's wall time, each beside the same run with no drops.
- ``expired``: N jobs, the run killed (SIGKILL) once requests are in flight, left until every
  result has left the queue, then resumed: new submits the resume made for work the server
  had finished, and results read from the history.

    python bench/history.py                 # both, 60 and 40 jobs (~1 minute)
    python bench/history.py --jobs 200 --only drops
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def emulator(*flags: str) -> Iterator[str]:
    port = free_port()
    cmd = [PYTHON, "-m", "batchgen", "emulator", "--port", str(port), *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"{url}/_emulator/stats", timeout=1)
                break
            time.sleep(0.05)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)


def stats(url: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{url}/_emulator/stats", timeout=10).json()
    return body


def manifest(folder: Path, n: int) -> Path:
    path = folder / "m.yaml"
    ids = ", ".join(str(i) for i in range(n))
    path.write_text(
        "name: bench\ndefaults:\n  quality: low\n  output_format: jpeg\n"
        f"vars:\n  i: [{ids}]\nprompts:\n  - id: p\n    prompt: 'a fox, take {{i}}'\n"
    )
    return path


def run(m: Path, url: str, out: Path, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [PYTHON, "-m", "batchgen", "run", str(m), "--endpoint", url, "--out", str(out)]
    return subprocess.Popen([*cmd, "--quiet", *extra], stderr=subprocess.DEVNULL)


def drops(n: int, tmp: Path) -> None:
    print(f"\n## drops: {n} jobs, submit answers dropped after the request was made")
    print("| dropped | answers lost | look-ups | history calls | inputs paid twice | wall s |")
    print("|---|---|---|---|---|---|")
    m = manifest(tmp, n)
    for share in (0.0, 0.25, 0.5):
        out = tmp / f"drops-{share}"
        with emulator(
            "--time-scale", "0.02", "--faults", f"submitdrop={share}", "--seed", "4"
        ) as url:
            t0 = time.monotonic()
            code = run(m, url, out).wait()
            wall = time.monotonic() - t0
            s = stats(url)
        looks = (out / "run.log").read_text().count(" history: looked for ")
        print(
            f"| {share:.0%} | {s['submits_dropped']} | {looks} | {s.get('history_requests', 0)} |"
            f" {s['duplicate_submits']} | {wall:.1f} (exit {code}) |"
        )


def expired(n: int, tmp: Path) -> None:
    print(f"\n## expired: {n} jobs, killed with requests in flight, resumed after results expired")
    m = manifest(tmp, n)
    out = tmp / "expired"
    with emulator("--time-scale", "0.05", "--result-ttl", "1") as url:
        proc = run(m, url, out, "--concurrency", "8")
        while proc.poll() is None and not in_flight(out):
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        before = stats(url)
        time.sleep(4)  # every request made has ended, and its result left the queue
        t0 = time.monotonic()
        code = run(m, url, out).wait()
        wall = time.monotonic() - t0
        after = stats(url)
    read = (out / "run.log").read_text().count(" recovered: job ")
    print(
        "| made before the kill | results expired (both runs) | new submits on resume |"
        " for finished work | read from history | inputs paid twice | resume wall s |"
    )
    print("|---|---|---|---|---|---|---|")
    new = after["submits_accepted"] - before["submits_accepted"]
    print(
        f"| {before['submits_accepted']} | {after['requests_expired']}"
        f" | {new} | {new - (n - before['submits_accepted'])} | {read} |"
        f" {after['duplicate_submits']} | {wall:.1f} (exit {code}) |"
    )


def in_flight(out: Path) -> bool:
    try:
        with contextlib.closing(sqlite3.connect(out / "journal.sqlite", timeout=0.1)) as c:
            (k,) = c.execute(
                "SELECT count(*) FROM jobs WHERE state IN ('QUEUED', 'RUNNING', 'COMPLETED')"
            ).fetchone()
            return bool(k >= 8)
    except sqlite3.Error:
        return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--jobs", type=int, default=60)
    p.add_argument("--expired-jobs", type=int, default=40)
    p.add_argument("--only", choices=("drops", "expired"))
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        if a.only in (None, "drops"):
            drops(a.jobs, Path(d))
        if a.only in (None, "expired"):
            expired(a.expired_jobs, Path(d))


if __name__ == "__main__":
    main()
