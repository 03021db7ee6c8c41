"""Near-duplicate grouping at scale (outputs/neardup.py, outputs/gallery_dups.py): time and
peak memory for synthetic perceptual hashes. Measures, never asserts.

    python bench/neardup.py                       # 1,000,000 rows, the default distance
    python bench/neardup.py --rows 100000 --distance 3

The hashes are uniform random 64-bit values (as spread as real ones can be: real hashes
cluster, which costs more), with planted near duplicates: every 1,000th row gets a copy
``--distance`` bits away 7 rows later, and every 5,000th an exact copy. Each measurement
runs in a fresh process, so its peak RSS is its own: the process's RSS with the input built
(the row list of hex strings) and its peak after the grouping. "gallery" is what a gallery
build or refresh adds: the hashes from ``.gallery/phash.bin``'s array, the grouping and the
``dups.js`` it writes. "refresh" is a gallery refresh after 1,000 rows were appended: the
groups of the rows before them given (from the ``dups.js`` it replaces), only pairs with a new
row looked for (``neardup.grow_groups``).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batchgen.outputs.gallery_dups import Hashes, write_dups
from batchgen.outputs.neardup import (
    MAX_DISTANCE,
    groups_of_values,
    grow_groups,
    near_duplicate_groups,
    plan,
)


def synthetic(rows: int, distance: int, seed: int = 1) -> tuple[list[str], int]:
    rng = random.Random(seed)
    values = [rng.getrandbits(64) for _ in range(rows)]
    planted = 0
    for i in range(0, rows - 10, 1000):
        x = values[i]
        for b in rng.sample(range(64), distance):
            x ^= 1 << b
        values[i + 7] = x
        planted += 1
    for i in range(0, rows - 10, 5000):
        values[i + 3] = values[i + 1]
        planted += 1
    return [f"{v:016x}" for v in values], planted


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(kind: str, rows: int, distance: int) -> dict[str, float]:
    hashes, planted = synthetic(rows, distance)
    if kind == "refresh":
        known = rows - 1000
        values: list[int | None] = [int(x, 16) for x in hashes]
        older = groups_of_values(values[:known], distance)
        del hashes
    if kind == "gallery":
        h = Hashes()
        for text in hashes:
            h.add({"phash": text, "blank": False})
        del hashes
    before = rss_mb()
    t, c = time.perf_counter(), time.process_time()
    if kind == "gallery":
        with tempfile.TemporaryDirectory() as tmp:
            groups, grouped = write_dups(Path(tmp), h)
    elif kind == "refresh":
        found = grow_groups(older, values, known, distance)
        groups, grouped = len(found), sum(len(g) for g in found)
    else:
        found = near_duplicate_groups(hashes, distance)
        groups, grouped = len(found), sum(len(g) for g in found)
    return {
        "s": time.perf_counter() - t,
        "cpu_s": time.process_time() - c,
        "rss_before_mb": before,
        "peak_mb": rss_mb(),
        "groups": groups,
        "grouped": grouped,
        "planted": planted,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--distance", type=int, default=MAX_DISTANCE)
    ap.add_argument("--child", choices=["groups", "gallery", "refresh"])
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.rows, a.distance)))
        return
    m, r = plan(a.rows, a.distance)
    print(f"bench/neardup.py: {a.rows:,} rows, distance <= {a.distance}: {m} bands, {r} shared")
    print("| what | wall s | CPU s | RSS with the input | peak RSS | groups (planted) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for kind in ("groups", "gallery", "refresh"):
        cmd = [sys.executable, __file__, "--child", kind, "--rows", str(a.rows)]
        cmd += ["--distance", str(a.distance)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        d = json.loads(out)
        print(
            f"| {kind} | {d['s']:.1f} | {d['cpu_s']:.1f} | {d['rss_before_mb']:.0f} MB "
            f"| {d['peak_mb']:.0f} MB | {d['groups']:,} ({d['planted']:,}) |"
        )


if __name__ == "__main__":
    main()
