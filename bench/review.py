"""Benchmark the review page (``batchgen review OUT``) on a synthetic folder: its first screen
and its memory at 10,000 and 1,000,000 images.

Measures, never asserts. The folder is ``bench/gallery.py``'s (realistic index rows, image
files hard-linked to one small PNG). The server runs as a user runs it, ``python -m batchgen
review OUT --no-browser``, in its own process; this script is its client, over loopback:

- ``url``: from the process's start to the URL on its stdout (imports, bind, listen);
- ``first rows``: from the process's start to the first answer of ``/api/rows`` that holds
  rows (the page's first request for image data: prompt, size, quality, cost, mark), and
  ``first image``: that image's bytes served too;
- ``all rows``: until the server has read the whole index (``/api/state``'s ``reading``
  false), with its RSS then (``VmRSS``, and its peak ``VmHWM``, from ``/proc/PID/status``);
- ``mark``: one POST that picks an image, and ``unmarked``: the window of the unmarked filter
  after it (a pass over every row's name hash), each the median of 5;
- ``browser``: a fresh server, and headless Chromium (``--dump-dom``) opening the page as soon
  as the URL is printed: the page's own ``data-first-image`` (``performance.now()`` when the
  first image had loaded, from navigation start), and the browser process's wall time.

    .venv/bin/python bench/review.py                      # 10,000 and 1,000,000 rows
    .venv/bin/python bench/review.py --sizes 1000000 --keep /tmp/galleries
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gallery import make_folder  # bench/gallery.py


def _rss_mb(pid: int) -> tuple[float, float]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def measure(out: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchgen", "review", str(out), "--no-browser"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        got: dict[str, Any] = {"url_ms": (time.perf_counter() - t0) * 1000}
        base, _, token = line.split(" at ", 1)[1].strip().partition("/?t=")
        with httpx.Client(base_url=base, params={"t": token}, timeout=60) as c:
            while True:
                w = c.get("/api/rows", params={"start": 0, "count": 40}).json()
                if w["rows"]:
                    break
                time.sleep(0.005)
            got["first_rows_ms"] = (time.perf_counter() - t0) * 1000
            c.get("/image", params={"f": w["rows"][0]["file_name"]}).raise_for_status()
            got["first_image_ms"] = (time.perf_counter() - t0) * 1000
            got["rss_first_mb"] = _rss_mb(proc.pid)[0]
            while (state := c.get("/api/state").json())["reading"]:
                time.sleep(0.05)
            got["all_rows_s"] = time.perf_counter() - t0
            got["rows"] = state["rows"]
            got["rss_mb"], got["peak_rss_mb"] = _rss_mb(proc.pid)
            marks, windows = [], []
            for k in range(5):
                body = {"file_name": w["rows"][k]["file_name"], "mark": "picked"}
                t = time.perf_counter()
                c.post("/api/mark", json=body).raise_for_status()
                marks.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                c.get("/api/rows", params={"filter": "unmarked", "count": 40}).raise_for_status()
                windows.append((time.perf_counter() - t) * 1000)
            got["mark_ms"] = statistics.median(marks)
            got["unmarked_ms"] = statistics.median(windows)
        proc.send_signal(signal.SIGINT)
        got["exit"] = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    return got


def browser_first_screen(out: Path, profile: Path) -> dict[str, Any]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return {}
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchgen", "review", str(out), "--no-browser"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split(" at ", 1)[1].strip()
        t = time.perf_counter()
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
        cmd += [f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", url]
        dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
        wall = time.perf_counter() - t
        found = re.search(r'data-first-image="(\d+)"', dom)
        return {"browser_first_image_ms": int(found[1]) if found else None, "browser_wall_s": wall}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
        shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    ap.add_argument("--keep", type=Path, help="make (or reuse) the folders here")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-review-"))
    try:
        for n in args.sizes:
            out = root / f"review-{n}"
            if not (out / "metadata.jsonl").is_file():
                make_folder(out, n)
            (out / "marks.sqlite").unlink(missing_ok=True)
            for extra in ("-wal", "-shm"):
                (out / f"marks.sqlite{extra}").unlink(missing_ok=True)
            got = measure(out)
            got.update(browser_first_screen(out, root / "chromium-profile"))
            print(json.dumps({"images": n, **{k: _round(v) for k, v in got.items()}}), flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


def _round(v: Any) -> Any:
    return round(v, 1) if isinstance(v, float) else v


if __name__ == "__main__":
    main()
