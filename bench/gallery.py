"""Benchmark the gallery: build time and peak memory, refresh time, first screen in Chromium.

Measures, never asserts. For each size it writes a synthetic output folder: realistic index
rows (a ~120-character prompt, vars, two tags, every column; four images a prompt) whose
image files are hard links to one small PNG, so a million images take a few MB of disk beyond
the index and share one thumbnail. Then, each in its own process so peak RSS is its own:

- ``build``: ``build_gallery`` from scratch (wall, CPU, peak RSS from ``getrusage``);
- ``refresh``: 1,000 rows appended, then ``refresh_gallery`` (what a run would call);
- ``chromium``: headless Chromium opens ``index.html`` from ``file://``; the page records
  when its first page of cards was on screen (``data-first-screen``: in a task after the
  frame that laid them out and painted them) and when every row was
  loaded for filtering (``data-complete-ms``), both from ``performance.now()``; the wall time
  of the whole browser process (start, load, dump) is given beside them. A second load
  opens a searched and sorted view (``VIEW``): the page marks it complete once it was drawn
  from every row.

    .venv/bin/python bench/gallery.py                         # 10,000 / 100,000 / 1,000,000
    .venv/bin/python bench/gallery.py --sizes 10000 100000 --keep /tmp/galleries
    .venv/bin/python bench/gallery.py --sizes 10000 1000000 --repeat 5   # median of 5 loads
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image

from batchgen.outputs.checks import sha256_file
from batchgen.outputs.gallery import build_gallery, refresh_gallery
from batchgen.outputs.index import INDEX_FIELDS, METADATA

SUBJECTS = ["a lighthouse", "a red fox", "a tea house", "an old tram", "a glacier lake"]
REFRESH_ROWS = 1000
VIEW = "#q=fox+variation+1&sort=-cost"  # a search over every prompt, sorted by cost


def row(i: int, sha: str, size: int) -> dict[str, Any]:
    p = i // 4  # four images a prompt
    r: dict[str, Any] = dict.fromkeys(INDEX_FIELDS)
    r.update(
        file_name=f"images/p{p % 5000:04d}/{i:016x}_{i % 4}.png",
        job_id=f"{p:064x}",
        image_index=i % 4,
        variant=0,
        prompt_id=f"prompt-{p}",
        prompt=f"{SUBJECTS[p % 5]} at dawn, seen from a low angle, soft film grain, muted "
        f"colours, wide lens, variation {p}",
        vars={"subject": SUBJECTS[p % 5]},
        tags={"set": "ABCD"[p % 4], "batch": str(p % 30)},
        endpoint="openai/gpt-image-2",
        origin="fal",
        requested_size=("1024x1024", "1536x1024", "1024x1536")[p % 3],
        width=64,
        height=48,
        quality=("low", "medium", "high")[p % 3],
        output_format="png",
        content_type="image/png",
        bytes=size,
        sha256=sha,
        request_id=f"req-{p}",
        submitted_at="2026-11-30T01:00:00.000Z",
        completed_at=f"2026-11-30T{p // 3600 % 24:02d}:{p // 60 % 60:02d}:{p % 60:02d}.000Z",
        downloaded_at="2026-11-30T02:00:00.000Z",
        inference_time=12.5,
        cost_estimate=round(0.01 + (p % 17) / 100, 4),
        manifest_sha256="m" * 64,
        batchgen_version="bench",
    )
    return r


def make_folder(out: Path, n: int) -> None:
    """``n`` rows, every image a hard link to one PNG (a few bytes of directory entry each)."""
    out.mkdir(parents=True)
    src = out / "shared.png"
    Image.new("RGB", (64, 48), "#3a8a7a").save(src, "PNG")
    size, sha = sha256_file(src)
    made: set[str] = set()
    with (out / METADATA).open("w", encoding="utf-8") as f:
        for i in range(n):
            r = row(i, sha, size)
            dest = out / r["file_name"]
            if dest.parent.name not in made:
                dest.parent.mkdir(parents=True, exist_ok=True)
                made.add(dest.parent.name)
            os.link(_source(src, i), dest)
            f.write(json.dumps(r, separators=(",", ":")) + "\n")


def _source(src: Path, i: int) -> Path:
    """A copy of ``src`` for every 50,000 links: ext4 allows 65,000 links to one file."""
    copy = src.with_name(f"{src.stem}-{i // 50_000}.png")
    if not copy.exists():
        shutil.copyfile(src, copy)
    return copy


def child(mode: str, out: Path) -> None:
    """Run one phase and print its figures as JSON (peak RSS is this process's own)."""
    t0, c0 = time.perf_counter(), time.process_time()
    if mode == "build":
        report = build_gallery(out)
    else:
        n = sum(1 for _ in (out / METADATA).open("rb"))
        shutil.copyfile(out / "shared.png", out / "extra.png")
        size, sha = sha256_file(out / "extra.png")
        with (out / METADATA).open("a", encoding="utf-8") as f:
            for i in range(n, n + REFRESH_ROWS):
                r = row(i, sha, size)
                (out / r["file_name"]).parent.mkdir(parents=True, exist_ok=True)
                os.link(_source(out / "extra.png", i), out / r["file_name"])
                f.write(json.dumps(r, separators=(",", ":")) + "\n")
        t0, c0 = time.perf_counter(), time.process_time()
        report = refresh_gallery(out)
    print(
        json.dumps(
            {
                "wall": time.perf_counter() - t0,
                "cpu": time.process_time() - c0,
                "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "images": report.images,
                "rows_read": report.rows_read,
                "refreshed": report.refreshed,
                "index_html_bytes": report.path.stat().st_size,
            }
        )
    )


def run_child(mode: str, out: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def first_screen(out: Path, budget_s: float, view: str = "") -> dict[str, float | None]:
    """Open the page in headless Chromium; ms to the first page of cards and to every row
    loaded, as the page measured them, and the browser process's wall time."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return {"first_ms": None, "complete_ms": None, "wall_s": None}
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--timeout={int(budget_s * 1000)}",
            "--dump-dom",
            (out / "index.html").resolve().as_uri() + view,
        ]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=budget_s + 60)
        wall = time.perf_counter() - t0
    found = {
        k: re.search(rf'data-{k}="(\d+)"', done.stdout) for k in ("first-screen", "complete-ms")
    }
    return {
        "first_ms": float(m[1]) if (m := found["first-screen"]) else None,
        "complete_ms": float(m[1]) if (m := found["complete-ms"]) else None,
        "wall_s": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--keep", type=Path, help="make the folders here and keep them")
    ap.add_argument("--budget", type=float, default=120, help="seconds Chromium may take")
    ap.add_argument("--repeat", type=int, default=1, help="plain loads a size (the median)")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench-gallery-"))
    head = (
        "rows",
        "setup s",
        "build s",
        "build CPU s",
        "build peak RSS MB",
        "index.html KB",
        "chunks MB",
        "refresh +1,000 rows s",
        "refresh RSS MB",
        "first screen ms",
        "all rows loaded ms",
        "browser wall s",
        "search + sort, all rows ms",
    )
    print("| " + " | ".join(head) + " |\n|" + " --- |" * len(head), flush=True)
    try:
        for n in args.sizes:
            out = base / f"g{n}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            make_folder(out, n)
            setup = time.perf_counter() - t0
            b = run_child("build", out)
            chunks = sum(p.stat().st_size for p in (out / ".gallery").iterdir()) / 1e6
            r = run_child("refresh", out)
            # On a shared machine one load varies by ±50 %: the median of a few, all shown.
            loads = [first_screen(out, args.budget) for _ in range(max(1, args.repeat))]
            loads.sort(key=lambda d: float("inf") if d["first_ms"] is None else d["first_ms"])
            s = loads[(len(loads) - 1) // 2]  # the median load, its other figures with it
            if len(loads) > 1:
                each = [d["first_ms"] for d in loads]
                print(f"  {n:,} rows, first screen of each load, ms: {each}", file=sys.stderr)
            v = first_screen(out, args.budget, VIEW)
            fmt = lambda x, spec: "—" if x is None else format(x, spec)  # noqa: E731
            cells = [
                f"{n:,}",
                f"{setup:.0f}",
                f"{b['wall']:.1f}",
                f"{b['cpu']:.1f}",
                f"{b['rss_mb']:.0f}",
                f"{b['index_html_bytes'] / 1e3:.0f}",
                f"{chunks:.0f}",
                f"{r['wall']:.2f}",
                f"{r['rss_mb']:.0f}",
                fmt(s["first_ms"], ".0f"),
                fmt(s["complete_ms"], ",.0f"),
                fmt(s["wall_s"], ".1f"),
                fmt(v["complete_ms"], ",.0f"),
            ]
            print("| " + " | ".join(cells) + " |", flush=True)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
