"""What a run reports: the typed events the scheduler emits, their tally, and the end summary.

The scheduler knows nothing about terminals or log files; it calls ``on_event(event)`` with one
of the frozen dataclasses below. The command layer draws progress from them, ``runlog`` writes
them down, and the Python API can hand them to its caller. At the end, ``build_summary`` folds
the journal's tallies (the truth, across every run into the folder) and this run's counters
into a ``Summary`` whose ``exit_code`` is what ``batchgen run`` returns.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from batchgen.planning.jobs import JobState
from batchgen.planning.pricing import ActualCost, actual_cost

DROPPED = "submit_dropped"  # retry.classify's reason for a submit sent without an answer
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUDGET, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


# -- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Planned:
    new: int
    kept: int
    not_in_manifest: int


@dataclass(frozen=True, slots=True)
class Resumed:
    """What the run found in the journal before submitting anything (``running/recovery``)."""

    reattached: int  # requests fal still has (QUEUED/RUNNING): watched, never resubmitted
    to_download: int  # results already fetched (COMPLETED): downloaded first
    unknown: int  # submits a crash interrupted: resubmitted, counted as possible duplicates
    retried_failed: int  # --retry-failed
    redownload: int = 0  # failed only in their download: fetched again, no new submit
    dropped: int = 0  # requests of an in-process emulator that is gone: resubmitted, free
    replaced: int = 0  # a rehearsal's jobs, now made for real (placeholders removed)


@dataclass(frozen=True, slots=True)
class Ready:
    """What the run is about to do, once its folder is in order and before its first submit:
    what ``batchgen run`` announces, and what a confirmation (``approve``) is asked about."""

    to_submit: int  # jobs to submit now: new ones, resubmits, failures put back to retry
    images: int  # the images they ask for
    cost: float  # their estimate in USD (what fal may bill; a rehearsal bills nothing)
    done: int  # already downloaded
    failed: int  # failed for good and left so (--retry-failed puts them back)
    following: int  # requests already on the server: watched and downloaded, never resent
    target: str  # where the requests go: fal, a server's URL, the emulator
    out_dir: str
    rehearsal: bool
    notices: tuple[str, ...] = ()  # the plan's notices (batchgen plan shows the same)


def announce(r: Ready) -> list[str]:
    """A ``Ready`` as the lines `batchgen run` prints before it submits (and run.log keeps)."""
    money = (
        f"~${r.cost:.2f} if it ran on fal; a rehearsal: nothing is billed"
        if r.rehearsal
        else f"estimated ~${r.cost:.2f}"
    )
    lines = [
        f"{r.to_submit:,} jobs to submit ({r.images:,} images), {money}; to {r.target}",
        f"{r.done:,} already done, {r.following:,} already on the server, {r.failed:,} failed"
        f" (--retry-failed retries them); output folder {r.out_dir}",
    ]
    return lines + [f"notice: {n}" for n in r.notices]


@dataclass(frozen=True, slots=True)
class Submitted:
    job_id: str
    request_id: str
    possible_duplicate: bool  # an UNKNOWN job resubmitted: fal may have run it twice


@dataclass(frozen=True, slots=True)
class Started:
    job_id: str


@dataclass(frozen=True, slots=True)
class Finished:
    """The result JSON is in the journal; the download is queued."""

    job_id: str
    seconds: float  # submit to completion as we saw it


@dataclass(frozen=True, slots=True)
class Saved:
    job_id: str
    images: int


@dataclass(frozen=True, slots=True)
class Retrying:
    """A transient failure; the same request is tried again after ``delay`` seconds."""

    job_id: str | None
    op: str
    reason: str
    message: str
    delay: float
    attempt: int


@dataclass(frozen=True, slots=True)
class Requeued:
    """The request failed or vanished; the job goes back to PENDING for a fresh request."""

    job_id: str
    reason: str
    message: str
    lost: bool  # a finished result that expired before we fetched it


@dataclass(frozen=True, slots=True)
class Failed:
    job_id: str
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Unreachable:
    """The server has not answered for ``seconds`` (no connection, a load balancer's 5xx):
    said once per outage. Nothing is lost: requests keep their ids, submits wait."""

    seconds: float
    message: str  # the last failure, one line ("ConnectError: ...")


@dataclass(frozen=True, slots=True)
class Reachable:
    """The server answers again after an announced outage of ``seconds``."""

    seconds: float


@dataclass(frozen=True, slots=True)
class WindowChanged:
    size: int


@dataclass(frozen=True, slots=True)
class BudgetReached:
    spent: float
    in_flight: float
    next_cost: float
    cap: float


@dataclass(frozen=True, slots=True)
class Stopping:
    now: bool  # False: finish what is paid for; True: stop at once
    reason: str


Event = (
    Planned
    | Resumed
    | Ready
    | Submitted
    | Started
    | Finished
    | Saved
    | Retrying
    | Requeued
    | Failed
    | Unreachable
    | Reachable
    | WindowChanged
    | BudgetReached
    | Stopping
)


# -- the tally of one run -------------------------------------------------------------------


@dataclass
class RunStats:
    """Counters over this run's events (the journal keeps the totals across runs)."""

    submitted: int = 0
    possible_duplicates: int = 0
    retries: int = 0
    requeued: int = 0
    lost: int = 0
    saved_jobs: int = 0
    images: int = 0
    failed: Counter[str] = field(default_factory=Counter)

    def add(self, event: Event) -> None:
        match event:
            case Submitted():
                self.submitted += 1
            case Retrying():
                self.retries += 1
            case Requeued(lost=lost, reason=reason):
                self.requeued += 1
                self.lost += int(lost)
                # a submit with no answer may have created a job that fal will bill
                self.possible_duplicates += int(reason == DROPPED)
            case Saved(images=n):
                self.saved_jobs += 1
                self.images += n
            case Failed(reason=reason):
                self.failed[reason] += 1
                self.possible_duplicates += int(reason == DROPPED)
            case _:
                pass


# -- the end of the run ---------------------------------------------------------------------


class StopReason(StrEnum):
    INTERRUPTED = "interrupted"
    BUDGET = "budget"
    FATAL = "fatal"
    DECLINED = "declined"  # the estimated cost was not confirmed: nothing new was submitted


def exit_code(*, stop: StopReason | None, failed: int, unfinished: int) -> int:
    """0 all done, 1 some failed for good (or left unfinished), 2 the key or account was
    refused, 3 stopped at the budget, 130 interrupted."""
    if stop in (StopReason.INTERRUPTED, StopReason.DECLINED):
        return EXIT_INTERRUPTED
    if stop is StopReason.FATAL:
        return EXIT_USAGE
    if stop is StopReason.BUDGET:
        return EXIT_BUDGET
    return EXIT_FAILED if failed or unfinished else EXIT_OK


@dataclass(frozen=True, slots=True)
class Summary:
    done: int
    failed: dict[str, int]  # by class, across the folder's runs
    unfinished: int  # pending or in flight when the run ended
    retried: int  # fresh requests after a failure (journal) + transient retries (this run)
    possible_duplicates: int
    lost: int
    spent: float  # what fal may bill for the folder, all runs (journal.schema.Tallies)
    wall_seconds: float
    stop: StopReason | None
    failure_examples: dict[str, str] = field(default_factory=dict)
    spent_run: float = 0.0  # the part of ``spent`` this run added
    rehearsal: float = 0.0  # what the emulator's requests in the folder would cost on fal
    rehearsal_run: float = 0.0  # the part of ``rehearsal`` this run added
    resume_hint: str = ""  # the exact command that continues this run
    actual: ActualCost | None = None  # from the responses that carried usage (BYOK), if any
    out_dir: str = ""  # where the images, the index and the gallery are

    @property
    def exit_code(self) -> int:
        return exit_code(
            stop=self.stop, failed=sum(self.failed.values()), unfinished=self.unfinished
        )

    def spend_text(self) -> str:
        """Money, labelled: this run's and the folder's; a rehearsal's apart, as unbilled."""
        parts = []
        if self.spent or not self.rehearsal:
            parts.append(
                f"estimated spend ${self.spent_run:.2f} this run, ${self.spent:.2f} for the folder"
            )
        if self.rehearsal:
            parts.append(
                f"rehearsal, nothing billed (on fal ~${self.rehearsal_run:.2f} this run,"
                f" ~${self.rehearsal:.2f} for the folder)"
            )
        return "; ".join(parts)

    def lines(self) -> list[str]:
        n_failed = sum(self.failed.values())
        out = [
            f"done {self.done}, failed {n_failed}, unfinished {self.unfinished}"
            f" in {_duration(self.wall_seconds)}; {self.spend_text()}",
            f"retried {self.retried}, possible duplicate charges {self.possible_duplicates},"
            f" lost results {self.lost}",
        ]
        if self.actual is not None:
            a = self.actual
            out.insert(
                1,
                f"actual cost from usage ${a.usd:.2f} ({a.images} image"
                f"{'s' if a.images != 1 else ''} with usage, {a.jobs} job"
                f"{'s' if a.jobs != 1 else ''}; fal's per-token prices)",
            )
        for cls, n in sorted(self.failed.items(), key=lambda kv: (-kv[1], kv[0])):
            example = self.failure_examples.get(cls, "")
            out.append(f"  failed {n} × {cls}" + (f": {example}" if example else ""))
        if self.out_dir and self.done:
            o = self.out_dir.rstrip("/")
            out.append(f"images in {o}/images, index {o}/metadata.jsonl, gallery {o}/index.html")
        again = self.resume_hint
        if self.stop is StopReason.BUDGET:
            again = again and f"{_without_max_cost(again)} --max-cost USD"
            out.append("stopped at the budget (--max-cost): raise it to continue")
        elif self.stop is StopReason.DECLINED:
            out.append("not started: the estimated cost was not confirmed; nothing new was sent")
        elif self.stop is StopReason.INTERRUPTED:
            out.append("interrupted: run the same command again to resume")
        elif self.unfinished:
            out.append("some jobs are unfinished: run the same command again to resume")
        elif n_failed and again:
            out.append(f"to retry the failures: {again} --retry-failed")
            again = ""
        if again and (self.stop or self.unfinished):
            out.append(f"  {again}")
        return out


def build_summary(
    counts: dict[JobState, int],
    *,
    failures: Iterable[tuple[str, int, str]],
    journal_retries: int,
    possible_duplicates: int,
    lost: int,
    spent: float,
    stats: RunStats,
    spent_run: float = 0.0,
    rehearsal: float = 0.0,
    rehearsal_run: float = 0.0,
    wall_seconds: float,
    stop: StopReason | None,
    resume_hint: str = "",
    usages: Iterable[tuple[object, int]] = (),
    out_dir: str = "",
) -> Summary:
    """``failures`` is (class, count, example message) per class, as the journal groups them;
    ``usages`` is (usage, images) per job whose result carried token counts
    (``JournalReader.usages()``): the summary then reports their real cost too."""
    failed: dict[str, int] = {}
    examples: dict[str, str] = {}
    for cls, n, example in failures:
        failed[cls] = n
        examples[cls] = example
    unfinished = sum(
        n for s, n in counts.items() if s not in (JobState.DOWNLOADED, JobState.FAILED)
    )
    return Summary(
        done=counts.get(JobState.DOWNLOADED, 0),
        failed=failed,
        unfinished=unfinished,
        retried=journal_retries + stats.retries,
        possible_duplicates=possible_duplicates,
        lost=lost,
        spent=spent,
        spent_run=spent_run,
        rehearsal=rehearsal,
        rehearsal_run=rehearsal_run,
        wall_seconds=wall_seconds,
        stop=stop,
        failure_examples=examples,
        resume_hint=resume_hint,
        out_dir=out_dir,
        actual=actual if (actual := actual_cost(usages)).jobs else None,
    )


def _without_max_cost(command: str) -> str:
    words = command.split(" ")
    if "--max-cost" in words:
        i = words.index("--max-cost")
        del words[i : i + 2]
    return " ".join(words)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m{s:02d}s" if hours else f"{m}m{s:02d}s"
