"""Benchmark the resume journal: planning a million jobs, transitions per second, resume time.

Measures, never asserts. Each phase runs in its own process so peak RSS is the phase's own.

    .venv/bin/python bench/journal.py                 # 1,000,000 jobs (about a minute, ~1 GB disk)
    .venv/bin/python bench/journal.py --jobs 100000   # quicker
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batchgen.journal.writer import Journal
from batchgen.outputs.status import build_report
from batchgen.planning.jobs import JobSpec, job_id

SHA = "b" * 64
ENDPOINT = "openai/gpt-image-2"
SUBJECTS = ["a lighthouse", "a red fox", "a tea house", "an old tram", "a glacier lake"]


def specs(n: int) -> Iterator[JobSpec]:
    """Realistic rows: a ~120-character prompt and the usual options, built lazily."""
    for i in range(n):
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
        yield JobSpec(job_id(ENDPOINT, inp, 0), ENDPOINT, inp, 0, f"p{i % 1000}", prompt)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def open_journal(path: Path, durable: bool = True) -> Journal:
    return Journal.open(
        path, manifest_sha256=SHA, version="bench", settings={}, durable_submits=durable
    )


def phase_generate(path: Path, n: int) -> dict[str, Any]:
    """The plan side alone (building specs and their ids), to subtract from ``add``."""
    t = time.perf_counter()
    count = sum(1 for _ in specs(n))
    return {"jobs": count, "seconds": time.perf_counter() - t}


def phase_add(path: Path, n: int) -> dict[str, Any]:
    base = peak_rss_mb()
    t = time.perf_counter()
    with open_journal(path) as j:
        report = j.add_jobs(specs(n), cost_of=lambda s: 0.04)
    dt = time.perf_counter() - t
    size = sum(f.stat().st_size for f in path.parent.glob("journal.sqlite*"))
    return {
        "jobs": report.new,
        "seconds": dt,
        "jobs_per_s": n / dt,
        "rss_before_mb": base,
        "peak_rss_mb": peak_rss_mb(),
        "db_mb": size / 1e6,
    }


def phase_replan(path: Path, n: int) -> dict[str, Any]:
    t = time.perf_counter()
    with open_journal(path) as j:
        report = j.add_jobs(specs(n), cost_of=lambda s: 0.04)
    dt = time.perf_counter() - t
    return {"kept": report.kept, "seconds": dt, "peak_rss_mb": peak_rss_mb()}


def phase_resume(path: Path, n: int) -> dict[str, Any]:
    """What `batchgen run` does before its first submit on a journal it has seen."""
    t = time.perf_counter()
    j = open_journal(path)
    t_open = time.perf_counter() - t
    assert not j.needs_plan  # same manifest and version: no re-plan needed
    j.interrupted_submits()
    j.attached()
    first = j.claim(64)
    t_claim = time.perf_counter() - t
    for r in first:  # give them back so later phases start from the same state
        j.transition(r.job_id, r.state.PENDING)
    j.close()
    return {
        "open_s": t_open,
        "to_first_claim_s": t_claim,
        "claimed": len(first),
        "peak_rss_mb": peak_rss_mb(),
    }


def phase_flow(path: Path, n: int, durable: bool) -> dict[str, Any]:
    """claim(64) then set_submitted, set_result, mark_downloaded per job: 4 commits a job."""
    done = 0
    t = time.perf_counter()
    with open_journal(path, durable) as j:
        while done < n:
            rows = j.claim(64)
            for r in rows:
                j.set_submitted(r.job_id, {"request_id": f"req-{r.seq}", "status_url": "x"})
            for r in rows:
                j.set_result(r.job_id, {"images": [{"url": "http://cdn/x.png", "width": 1024}]})
                j.mark_downloaded(r.job_id, [{"path": "images/x.png", "sha256": "ab"}])
            done += len(rows)
    dt = time.perf_counter() - t
    per = dt / (4 * done)
    return {
        "jobs": done,
        "seconds": dt,
        "jobs_per_s": done / dt,
        "transitions_per_s": 1 / per,
        "us_per_transition": per * 1e6,
    }


def phase_commits(path: Path, n: int) -> dict[str, Any]:
    """Bare commits: one event row each (the cheapest write the journal makes)."""
    with open_journal(path) as j:
        t = time.perf_counter()
        for i in range(n):
            j.event(None, "bench", f"event {i}")
        dt = time.perf_counter() - t
    return {"commits_per_s": n / dt, "us_per_commit": dt / n * 1e6}


def phase_status(path: Path, n: int) -> dict[str, Any]:
    t = time.perf_counter()
    with Journal.open_readonly(path) as r:
        build_report(r, path.parent, now=time.time(), writer_pid=None)
    return {"seconds": time.perf_counter() - t, "peak_rss_mb": peak_rss_mb()}


PHASES = {
    "generate": phase_generate,
    "add": phase_add,
    "replan": phase_replan,
    "resume": phase_resume,
    "commits": phase_commits,
    "status": phase_status,
}


def run_phase(name: str, path: Path, n: int, durable: bool = True) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--phase", name, "--path", str(path), "--jobs", str(n)]
    if not durable:
        cmd.append("--no-durable")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--flow", type=int, default=20_000, help="jobs through the full flow")
    ap.add_argument("--phase", choices=[*PHASES, "flow"])
    ap.add_argument("--path", type=Path)
    ap.add_argument("--no-durable", action="store_true")
    a = ap.parse_args()
    if a.phase:
        if a.phase == "flow":
            res = phase_flow(a.path, a.jobs, not a.no_durable)
        else:
            res = PHASES[a.phase](a.path, a.jobs)
        print(json.dumps(res))
        return
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parents[1] / "outputs") as d:
        big = Path(d) / "big" / "journal.sqlite"
        rows = [
            (
                "generate",
                f"build {a.jobs:,} JobSpecs only (no journal)",
                run_phase("generate", big, a.jobs),
            ),
            ("add", f"add_jobs({a.jobs:,}) into a new journal", run_phase("add", big, a.jobs)),
            ("resume", "reopen, re-attach, first claim(64)", run_phase("resume", big, a.jobs)),
            ("status", "batchgen status report", run_phase("status", big, a.jobs)),
            (
                "replan",
                f"re-plan the same {a.jobs:,} (edited manifest)",
                run_phase("replan", big, a.jobs),
            ),
        ]
        small = Path(d) / "small" / "journal.sqlite"
        run_phase("add", small, a.flow)
        rows.append(
            (
                "flow",
                f"{a.flow:,} jobs through 4 commits each, FULL on submit",
                run_phase("flow", small, a.flow),
            )
        )
        small2 = Path(d) / "small2" / "journal.sqlite"
        run_phase("add", small2, a.flow)
        rows.append(
            (
                "flow",
                f"{a.flow:,} jobs through 4 commits each, all NORMAL",
                run_phase("flow", small2, a.flow, durable=False),
            )
        )
        rows.append(
            ("commits", "20,000 bare commits (event rows)", run_phase("commits", small, 20_000))
        )
    print(f"{'phase':8} {'what':52} figures")
    for name, what, res in rows:
        figs = ", ".join(
            f"{k}={v:,.2f}" if isinstance(v, float) else f"{k}={v:,}" for k, v in res.items()
        )
        print(f"{name:8} {what:52} {figs}")


if __name__ == "__main__":
    main()
