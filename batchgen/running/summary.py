"""The end of a run: its exit code and the summary `batchgen run` prints (and run.log keeps).

``build_summary`` folds the journal's tallies (the truth, across every run into the folder)
and this run's counters (``stats.RunStats``) into a ``Summary`` whose ``exit_code`` is what
``batchgen run`` returns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from batchgen.planning.jobs import JobState
from batchgen.planning.pricing import ActualCost, actual_cost, usd
from batchgen.running.events import StopReason, refusals_text
from batchgen.running.stats import RunStats

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUDGET, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_STOP_AT = 4
EXIT_DISK_FULL = 5
EXIT_LOCKED = 6


def exit_code(*, stop: StopReason | None, failed: int, unfinished: int) -> int:
    """0 all done, 1 some failed for good (or left unfinished), 2 a fatal stop (the key
    refused, or real work given to an emulator), 3 stopped at the budget, 4 stopped at
    --stop-at with jobs left, 5 stopped by a full disk, 6 stopped by a locked account (its
    credit ran out), 130 interrupted (or the cost not approved).

    A --stop-at stop is planned, not an interrupt: when the jobs it left are none (it came
    after the last submit and everything in flight finished), the run ends as any other."""
    if stop in (StopReason.INTERRUPTED, StopReason.DECLINED):
        return EXIT_INTERRUPTED
    if stop is StopReason.FATAL:
        return EXIT_USAGE
    if stop is StopReason.DISK_FULL:
        return EXIT_DISK_FULL
    if stop is StopReason.LOCKED:
        return EXIT_LOCKED
    if stop is StopReason.BUDGET:
        return EXIT_BUDGET
    if stop is StopReason.STOP_AT and unfinished:
        return EXIT_STOP_AT
    return EXIT_FAILED if failed or unfinished else EXIT_OK


@dataclass(frozen=True, slots=True)
class Summary:
    done: int
    failed: dict[str, int]  # by class, across the folder's runs
    unfinished: int  # pending or in flight when the run ended
    retried: int  # fresh requests after a failure (journal) + transient retries (this run)
    possible_duplicates: int  # the folder's, all runs (this run's: stats.possible_duplicates)
    lost: int  # the folder's, all runs (this run's: stats.lost)
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
    stats: RunStats = field(default_factory=RunStats)  # this run's counters
    webhooks: dict[str, int] | None = None  # --watch webhook: what the receiver saw
    stop_line: str = ""  # a full disk or a locked account: what happened, and what to do

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

    @property
    def retried_run(self) -> int:
        """This run's tries again: of the same request (transient) or as a fresh one."""
        return self.stats.retries + self.stats.requeued

    def lines(self) -> list[str]:
        n_failed = sum(self.failed.values())
        st = self.stats
        out = [
            f"done {self.done}, failed {n_failed}, unfinished {self.unfinished}"
            f" in {duration_text(self.wall_seconds)}; {self.spend_text()}",
            f"this run: submitted {st.submitted}, retried {self.retried_run}, possible duplicate"
            f" charges {st.possible_duplicates}, lost results {st.lost} (resubmitted)"
            + "".join(
                f", {text} {n}"
                for text, n in (
                    ("fetched again without a new submit", self.stats.redownloaded),
                    ("stopped emulator's requests sent again", self.stats.resubmitted_free),
                    ("rehearsal jobs made for real", self.stats.replaced),
                    ("not started in time (resubmitted, not billed)", self.stats.start_timeouts),
                    ("results read from fal's history", self.stats.recovered),
                    ("saved images repaired", self.stats.repaired),
                )
                if n
            ),
        ]
        sure, unsure = st.resent - st.resent_unsure, st.resent_unsure
        if st.lost_submits:
            out.append(
                f"submits without an answer {st.lost_submits}: {st.found} found in fal's"
                f" history ({st.lookups} look-up{'s' if st.lookups != 1 else ''})"
                + (f", {st.resent - st.resent_unsure} not there, sent again" if sure else "")
                + (f", {st.resent_unsure} it could not tell of, sent again" if unsure else "")
                + (f", {left} left to look for next run" if (left := st.unsettled) else ""),
            )
        out.append(
            f"folder totals (all runs): retried {self.retried}, possible duplicate charges"
            f" {self.possible_duplicates}, lost results {self.lost}"
        )
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
        if self.webhooks is not None:
            out.append(webhooks_text(self.webhooks))
        if self.out_dir and self.done:
            o = self.out_dir.rstrip("/")
            out.append(f"images in {o}/images, index {o}/metadata.jsonl, gallery {o}/index.html")
        again = self.resume_hint
        if self.stop is StopReason.BUDGET:
            again = again and f"{_without_max_cost(again)} --max-cost USD"
            out.append("stopped at the budget (--max-cost): raise it to continue")
        elif self.stop is StopReason.DECLINED:
            out.append("not started: the estimated cost was not confirmed; nothing new was sent")
        elif self.stop in (StopReason.DISK_FULL, StopReason.LOCKED) and self.stop_line:
            out.append(self.stop_line)
        elif self.stop is StopReason.INTERRUPTED:
            out.append("interrupted: run the same command again to resume")
        elif self.stop is StopReason.STOP_AT and self.unfinished:
            out.append(
                f"stopped at --stop-at: nothing sent after it, paid requests finished;"
                f" {self.unfinished} jobs left: run the same command again to continue"
            )
        elif self.unfinished:
            out.append("some jobs are unfinished: run the same command again to resume")
        elif n_failed and again:
            out.append(f"to retry the failures: {again} --retry-failed")
            again = ""
        if again and (self.stop or self.unfinished):
            out.append(f"  {again}")
        return out


def webhooks_text(w: dict[str, int]) -> str:
    """What the receiver saw; when nothing came through, the likely cause."""
    why = refusals_text(w)
    text = (
        f"webhooks: {w['delivered']} delivered, {w['duplicates']} repeats ignored,"
        f" {w['refused']} refused{f' ({why})' if why else ''}, {w['checked']} late"
        " deliveries checked with one status request"
    )
    if not w["delivered"] and not w["duplicates"] and w["checked"]:
        text += (
            "; none came through: fal could not reach the URL it was given, or not at the"
            " receiver's path (docs/webhooks.md)"
        )
    return text


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
    webhooks: dict[str, int] | None = None,
    stop_line: str = "",
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
        # Money to a millionth (pricing.usd): these reach RunResult, --json and --notify.
        spent=usd(spent),
        spent_run=usd(spent_run),
        rehearsal=usd(rehearsal),
        rehearsal_run=usd(rehearsal_run),
        wall_seconds=wall_seconds,
        stop=stop,
        failure_examples=examples,
        resume_hint=resume_hint,
        out_dir=out_dir,
        actual=replace(a, usd=usd(a.usd)) if (a := actual_cost(usages)).jobs else None,
        stats=stats,
        webhooks=webhooks,
        stop_line=stop_line,
    )


def _without_max_cost(command: str) -> str:
    words = command.split(" ")
    if "--max-cost" in words:
        i = words.index("--max-cost")
        del words[i : i + 2]
    return " ".join(words)


def duration_text(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m{s:02d}s" if hours else f"{m}m{s:02d}s"
