"""Soak: an N-job rehearsal end to end, and every output command on the folder it leaves.

Measures, never asserts. The emulator runs in its own process (``batchgen emulator``, zero model
time, an account limit far above the window), and ``batchgen run`` in another, as a user runs
them. While the run lasts, its resident memory is sampled from /proc every half second, so the
peak covers the whole run: planning into the journal, the submits, the downloads and the
end-of-run steps (failures.jsonl, the gallery). Then each output command runs in a process of
its own (``gallery``, ``export`` as parquet, CSV and webdataset, ``index --rebuild``, ``status``)
and its wall time and peak RSS (from ``os.wait4``) are printed. At the end the journal is read
to check that every job is accounted for (downloaded, or failed with a reason).

    python bench/soak.py                     # 100,000 jobs (~15 min, ~3 GB disk)
    python bench/soak.py --jobs 5000         # a quick look
    python bench/soak.py --faults flaky      # the same under the emulator's faults
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emulator import start_emulator  # bench/emulator.py, beside this script

from batchgen.journal.writer import JOURNAL_NAME, Journal

PY = sys.executable
SAMPLE_S = 0.5


def write_manifest(folder: Path, jobs: int) -> Path:
    """``jobs`` distinct text-to-image jobs at the cheapest quality and a small preset."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "soak.yaml"
    values = ", ".join(str(i) for i in range(jobs))
    path.write_text(
        "name: soak\n"
        "defaults: {quality: low, image_size: landscape_4_3, output_format: jpeg}\n"
        f"vars:\n  i: [{values}]\n"
        'prompts:\n  - id: soak\n    prompt: "soak test picture number {i}"\n'
        "    tags: [soak]\n"
    )
    return path


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        return None
    return None


def measured(cmd: list[str], *, sample: bool = False) -> dict[str, Any]:
    """Run ``cmd``; its exit code, wall time, peak RSS (wait4) and, when ``sample``, the RSS
    it held at each half second (the run's memory over time)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[float, float]] = []
    while True:
        got, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if got == proc.pid:
            break
        if sample and (mb := rss_mb(proc.pid)) is not None:
            samples.append((time.perf_counter() - t0, mb))
        time.sleep(SAMPLE_S if sample else 0.02)
    err = proc.stderr.read() if proc.stderr else ""
    return {
        "code": os.waitstatus_to_exitcode(status),
        "seconds": time.perf_counter() - t0,
        "peak_mb": usage.ru_maxrss / 1024,
        "samples": samples,
        "stderr": err[-2000:],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--faults", default="none")
    ap.add_argument("--keep", action="store_true", help="keep the output folder")
    args = ap.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="batchgen-soak-"))
    out = scratch / "out"
    manifest = write_manifest(scratch, args.jobs)
    flags = ("--time-scale", "0", "--faults", args.faults)
    emu, url = start_emulator(*flags, stderr=subprocess.DEVNULL)
    try:
        run = measured(
            [
                PY,
                "-m",
                "batchgen",
                "run",
                str(manifest),
                "--endpoint",
                url,
                "--out",
                str(out),
                "--quiet",
                "--yes",
                "--concurrency",
                str(args.concurrency),
            ],
            sample=True,
        )
    finally:
        emu.terminate()
        emu.wait(30)
    with Journal.open_readonly(out / JOURNAL_NAME) as j:
        counts = Counter({str(s): n for s, n in j.counts().items() if n})
    accounted = counts.get("DOWNLOADED", 0) + counts.get("FAILED", 0)
    mbs = [mb for _, mb in run["samples"]]
    print(
        f"bench/soak.py: {args.jobs:,} jobs, concurrency {args.concurrency}, faults "
        f"{args.faults}, emulator at zero model time in its own process"
    )
    print(
        f"run: exit {run['code']} in {run['seconds']:.0f} s, "
        f"{args.jobs / run['seconds']:.1f} jobs/s; runner peak RSS {run['peak_mb']:.0f} MB "
        f"(sampled: median {sorted(mbs)[len(mbs) // 2] if mbs else 0:.0f} MB, "
        f"last {mbs[-1] if mbs else 0:.0f} MB)"
    )
    print(f"journal: {dict(counts)}; accounted for {accounted:,} of {args.jobs:,}")
    if run["code"] not in (0, 1):
        print(run["stderr"])
    deciles = [run["samples"][i * len(mbs) // 10] for i in range(10)] if len(mbs) >= 10 else []
    if deciles:
        print("runner RSS over the run: " + ", ".join(f"{t:.0f}s {mb:.0f}MB" for t, mb in deciles))

    print("\n| command | seconds | peak RSS MB | exit |\n| --- | --- | --- | --- |")
    commands = {
        "gallery": ["gallery", str(out)],
        "export parquet": ["export", str(out), "--format", "parquet"],
        "export csv": ["export", str(out), "--format", "csv"],
        "export webdataset": ["export", str(out), "--format", "webdataset"],
        "index --rebuild": ["index", str(out), "--rebuild"],
        "status": ["status", str(out)],
    }
    for name, argv in commands.items():
        r = measured([PY, "-m", "batchgen", *argv])
        print(f"| `{name}` | {r['seconds']:.1f} | {r['peak_mb']:.0f} | {r['code']} |")
    if args.keep:
        print(f"\nkept: {out}")
    else:
        subprocess.run(["rm", "-rf", str(scratch)], check=False)


if __name__ == "__main__":
    main()
