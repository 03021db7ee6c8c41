"""``batchgen status``: what a run's journal says, as a report (pure: reads, never writes).

:func:`build_report` takes a read-only :class:`JournalReader`, the time and the writer's pid, so
it works the same on a finished folder and on one a run is writing to right now. Rendering is
separate and pure: text for people, :meth:`StatusReport.to_json` for scripts.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from batchgen.journal.bills import Billed
from batchgen.journal.query import JournalReader
from batchgen.journal.schema import FailureGroup, RunInfo
from batchgen.outputs.saved import check_saved
from batchgen.planning.jobs import JobState
from batchgen.planning.pricing import ActualCost, actual_cost, usd

S = JobState
MAX_IN_FLIGHT_SHOWN = 20
EXIT_BUDGET = 3
# Above this many downloaded jobs, status does not stat their files (a run always does):
# about a second at a million files on a warm cache, but far more on a cold disk or a network
# share (docs/outputs.md, Repair).
CHECK_FILES_MAX_JOBS = 250_000


@dataclass(frozen=True, slots=True)
class InFlight:
    job_id: str
    request_id: str
    state: str
    age_s: float


@dataclass(frozen=True, slots=True)
class StatusReport:
    out_dir: str
    counts: dict[str, int]
    total: int
    spent_usd: float  # what fal may bill (journal.schema.Tallies): summary, gallery, --max-cost
    in_flight_usd: float
    remaining_usd: float
    failures: list[FailureGroup]
    in_flight: list[InFlight]  # oldest first, at most MAX_IN_FLIGHT_SHOWN
    in_flight_total: int
    not_in_manifest: dict[str, int]
    lost: int
    possible_duplicates: int
    writer_pid: int | None
    last_run: RunInfo | None
    resume_command: str
    actual: ActualCost | None = None  # real cost of the results that carried usage (BYOK)
    rehearsal_usd: float = 0.0  # what the emulator's requests would cost on fal (not billed)
    billed: Billed | None = None  # what `batchgen reconcile` last found billed (None: never)
    # downloaded images missing or of another size on disk (outputs/saved.py); None: not
    # looked at (not asked, or over CHECK_FILES_MAX_JOBS downloaded jobs)
    broken_files: int | None = None

    @property
    def done(self) -> bool:
        active = (S.PENDING, S.SUBMITTING, S.UNKNOWN, S.QUEUED, S.RUNNING, S.COMPLETED)
        return all(self.counts[s] == 0 for s in active)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["done"] = self.done
        doc["running"] = self.writer_pid is not None
        # The bill, flat beside the estimate: null when the folder was never reconciled.
        doc.pop("billed")
        b = self.billed
        doc["billed_usd"] = usd(b.usd) if b else None
        doc["billed_requests"] = b.requests if b else None
        doc["billed_server"] = b.server if b else None
        doc["reconciled_at"] = b.reconciled_at if b else None
        doc["reconciled_before_last_run"] = b.before_last_run if b else None
        return doc


def resume_command(out_dir: Path, run: RunInfo | None, *, max_cost: bool = True) -> str:
    """The exact command that continues this run (the manifest path recorded at its start)."""
    manifest = run.manifest_path if run and run.manifest_path else None
    return run_command(out_dir, manifest, run.settings if run else {}, max_cost=max_cost)


def run_command(
    out_dir: Path, manifest: str | None, s: Mapping[str, Any], *, max_cost: bool = True
) -> str:
    """``batchgen run`` for ``manifest`` into ``out_dir`` with the flags that continue the run,
    as its recorded settings ``s`` keep them (``resume``: decided from the run's options when
    it started, see ``options.RunOptions.resume_flags``). ``max_cost=False`` leaves out
    ``--max-cost``, for the hint to raise it."""
    args = ["batchgen", "run", manifest or "MANIFEST", "--out", str(out_dir)]
    flags = s.get("resume")
    if not isinstance(flags, list):
        flags = _flags_before_resume(s)
    rest = [str(f) for f in flags]
    if not max_cost and "--max-cost" in rest:
        i = rest.index("--max-cost")
        del rest[i : i + 2]
    return shlex.join(args + rest)


def _flags_before_resume(s: Mapping[str, Any]) -> list[str]:
    """A folder whose runs predate the recorded ``resume`` flags: the flags that decide where
    requests go and what they may spend, from the settings those runs did record."""
    args: list[str] = []
    if s.get("target") == "emulate":
        args.append("--emulate")
    elif s.get("target") == "endpoint" and s.get("endpoint"):
        args += ["--endpoint", str(s["endpoint"])]
    for flag, key in (("--concurrency", "concurrency"), ("--max-cost", "max_cost")):
        if s.get(key) not in (None, "auto"):
            args += [flag, f"{s[key]:g}" if isinstance(s[key], float) else str(s[key])]
    return args


def build_report(
    reader: JournalReader,
    out_dir: Path,
    *,
    now: float,
    writer_pid: int | None,
    check_files: bool = False,
) -> StatusReport:
    """The report; ``check_files``: each downloaded image's size on disk is checked too (one
    ``stat`` per file, read-only), unless there are over ``CHECK_FILES_MAX_JOBS`` jobs."""
    broken = None
    with reader.snapshot():  # counts, failures and in-flight rows from the same moment
        t = reader.tallies()
        runs = reader.runs()
        live = reader.in_flight(limit=MAX_IN_FLIGHT_SHOWN)
        failures = reader.failures_by_class()
        actual = actual_cost(reader.usages())
        billed = reader.billed()
        if check_files and t.counts[S.DOWNLOADED] <= CHECK_FILES_MAX_JOBS:
            broken = check_saved(reader, out_dir).count
    last = runs[-1] if runs else None
    return StatusReport(
        out_dir=str(out_dir),
        counts={str(s): n for s, n in t.counts.items()},
        total=sum(t.counts.values()),
        spent_usd=usd(t.spent),
        in_flight_usd=usd(t.in_flight),
        remaining_usd=usd(t.to_submit),
        failures=failures,
        in_flight=[
            InFlight(r.job_id, r.request_id or "", str(r.state), _since(r.submitted_at, now))
            for r in live
        ],
        # The listing is capped; the count comes from the tallies (jobs the manifest no
        # longer names included, as the listing has them).
        in_flight_total=sum(t.counts[s] + t.not_in_manifest[s] for s in (S.QUEUED, S.RUNNING)),
        not_in_manifest={str(s): n for s, n in t.not_in_manifest.items() if n},
        lost=t.lost,
        possible_duplicates=t.possible_duplicates,
        writer_pid=writer_pid,
        last_run=last,
        resume_command=resume_command(out_dir, last),
        actual=actual if actual.jobs else None,
        rehearsal_usd=usd(t.rehearsal),
        billed=billed,
        broken_files=broken,
    )


def _since(ts: float | None, now: float) -> float:
    return round(max(0.0, now - ts), 1) if ts is not None else 0.0


def _age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def render_text(rep: StatusReport) -> str:
    lines = [f"{rep.out_dir}: {rep.total} jobs"]
    lines.append(
        "  " + "  ".join(f"{s.lower()} {n}" for s, n in rep.counts.items() if n) or "  (no jobs)"
    )
    if rep.billed is not None:
        lines.append(f"  {billed_text(rep.billed, rep.out_dir)}")
    lines.append(
        f"  spent ~${rep.spent_usd:.2f}, in flight ~${rep.in_flight_usd:.2f},"
        f" still to submit ~${rep.remaining_usd:.2f} (estimates)"
    )
    if rep.rehearsal_usd:
        lines.append(f"  rehearsal (an emulator), nothing billed: ~${rep.rehearsal_usd:.2f} on fal")
    if rep.actual is not None:
        lines.append(
            f"  actual cost from usage ${rep.actual.usd:.2f}"
            f" ({rep.actual.images} images with usage, {rep.actual.jobs} jobs)"
        )
    if rep.lost or rep.possible_duplicates:
        lines.append(
            f"  {rep.lost} results expired before download (resubmitted),"
            f" {rep.possible_duplicates} possible duplicate charges"
        )
    if rep.broken_files:
        lines.append(
            f"  {rep.broken_files} downloaded image{'s' * (rep.broken_files != 1)} missing or"
            " broken on disk:"
            " run again to repair (fetched again from their results)"
        )
    if rep.failures:
        lines.append("failed for good, by class:")
        for g in rep.failures:
            lines.append(
                f"  {g.error_class}: {g.count}  e.g. job {g.example_job_id[:16]}: {g.example}"
            )
    if rep.in_flight_total:
        lines.append(f"in flight: {rep.in_flight_total} requests (oldest first)")
        for f in rep.in_flight:
            lines.append(
                f"  {f.request_id}  {f.state.lower():8} {_age(f.age_s):>6}  job {f.job_id[:16]}"
            )
        if rep.in_flight_total > len(rep.in_flight):
            lines.append(f"  … and {rep.in_flight_total - len(rep.in_flight)} more")
    if rep.not_in_manifest:
        n = sum(rep.not_in_manifest.values())
        parts = ", ".join(f"{s.lower()} {k}" for s, k in rep.not_in_manifest.items())
        jobs = f"{n} job is" if n == 1 else f"{n} jobs are"
        lines.append(f"{jobs} no longer in the manifest and will not run ({parts})")
    lines.append(_state_line(rep))
    return "\n".join(lines) + "\n"


def reconciled_when(b: Billed) -> str:
    """When the bill was fetched, local time to the minute."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(b.reconciled_at))


def billed_text(b: Billed, out_dir: str) -> str:
    """``billed by fal $0.17 for 17 requests, reconciled 2026-05-01 14:03``, and what it
    misses when a run came after it."""
    n = f"{b.requests:,} request{'' if b.requests == 1 else 's'}"
    text = f"billed by {b.server} ${b.usd:,.2f} for {n}, reconciled {reconciled_when(b)}"
    if b.before_last_run:
        again = shlex.join(["batchgen", "reconcile", out_dir])
        text += f", before the last run started (its requests: {again})"
    return text


def _state_line(rep: StatusReport) -> str:
    if rep.writer_pid is not None:
        pid = rep.writer_pid
        return f"a run is in progress (pid {pid}); to continue it later: {rep.resume_command}"
    run = rep.last_run
    if rep.done and rep.broken_files:
        return f"finished, but images are missing or broken; to repair: {rep.resume_command}"
    if rep.done:
        tail = " --retry-failed" if rep.counts[str(S.FAILED)] else ""
        if tail:
            return f"finished; to retry the failures: {rep.resume_command}{tail}"
        return "finished: every job is downloaded"
    if run is not None and run.exit_code == EXIT_BUDGET:
        again = resume_command(Path(rep.out_dir), run, max_cost=False)
        return f"stopped at the budget; to continue, raise it: {again} --max-cost USD"
    how = "stopped" if run is not None and run.ended_at is not None else "interrupted"
    return f"{how}; to resume: {rep.resume_command}"
