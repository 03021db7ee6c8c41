"""Time and peak memory to plan 1,000,000 jobs, the way `batchgen plan` does.

1,000 prompts × 10 sizes × 3 qualities × 33 repeats: load the manifest, expand it lazily,
collapse duplicates (a set of 32-byte digests), count, group and price every job.
Run by hand, never from CI:

    .venv/bin/python bench/plan.py [--prompts 1000] [--repeat 33]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import yaml

from batchgen.manifest import load_manifest, plan
from batchgen.planning.summary import summarize

SIZES = [
    "square_hd",
    "square",
    "portrait_4_3",
    "portrait_16_9",
    "landscape_4_3",
    "landscape_16_9",
    {"width": 1536, "height": 1024},
    {"width": 2048, "height": 1152},
    {"width": 1920, "height": 1088},
    {"width": 3840, "height": 2160},
]


def write_manifest(folder: Path, prompts: int, repeat: int) -> Path:
    doc = {
        "name": "bench",
        "matrix": {"image_size": SIZES, "quality": ["low", "medium", "high"]},
        "repeat": repeat,
        "prompts": [
            f"prompt number {i}: a lighthouse on a cliff at dusk, oil painting"
            for i in range(prompts)
        ],
    }
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=33)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_manifest(Path(tmp), args.prompts, args.repeat)
        rss_before = peak_rss_mb()
        t0 = time.perf_counter()
        manifest = load_manifest(path)
        t_load = time.perf_counter() - t0
        summary = summarize(manifest, plan(manifest))
        t_total = time.perf_counter() - t0
    rows = [
        ("jobs", f"{summary.jobs:,}"),
        ("images", f"{summary.images:,}"),
        ("estimated cost", f"${summary.cost_usd:,.2f}"),
        ("load + check", f"{t_load:.2f} s"),
        ("plan total", f"{t_total:.2f} s"),
        ("jobs per second", f"{summary.jobs / t_total:,.0f}"),
        ("peak RSS before", f"{rss_before:.0f} MB"),
        ("peak RSS", f"{peak_rss_mb():.0f} MB"),
    ]
    for name, value in rows:
        print(f"{name:<16} {value:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
