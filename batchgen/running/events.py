"""What a run reports as it goes: the typed events the scheduler emits, and their tally.

The scheduler knows nothing about terminals or log files; it calls ``on_event(event)`` with one
of the frozen dataclasses below. The command layer draws progress from them, ``runlog`` writes
them down, and the Python API can hand them to its caller. The end of the run is
``summary.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

SUBMIT_DROPPED = "submit_dropped"  # retry.classify's reason for a submit without an answer
START_TIMEOUT = "start_timeout"  # ...and for fal's 504 when --start-timeout ran out (not billed)


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
    unknown: int  # submits whose answer a crash or an earlier run lost: looked for in fal's history
    retried_failed: int  # --retry-failed
    redownload: int = 0  # failed only in their download: fetched again, no new submit
    dropped: int = 0  # requests of an in-process emulator that is gone: resubmitted, free
    replaced: int = 0  # a rehearsal's jobs, now made for real (placeholders removed)
    repaired: int = 0  # saved images missing or broken on disk: fetched again from results
    remade: int = 0  # ...made by an emulator that is gone: made again, free
    elsewhere: int = 0  # ...made on another server: left for a run against that server


def repair_notices(r: Resumed) -> tuple[tuple[int, str], ...]:
    """(count, text) of what the run found broken among the saved images (recovery.py)."""

    def what(n: int) -> str:
        return f"{_n(n, 'saved image')} missing or broken on disk"

    return (
        (r.repaired, f"{what(r.repaired)}: fetched again from their results"),
        (r.remade, f"{what(r.remade)}: made again (the emulator that made them is gone)"),
        (r.elsewhere, f"{what(r.elsewhere)}, made on another server: run against it to repair"),
    )


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
    stale: int = 0  # images kept of jobs the manifest no longer names (journal/stale.py)
    replacing: str = ""  # run --replace-rejected: the rejected images and their new takes


NOTICE = "notice: "  # what starts the announcement's lines that --quiet keeps


def announce(r: Ready) -> list[str]:
    """A ``Ready`` as the lines `batchgen run` prints before it submits (and run.log keeps)."""
    what = f"{_n(r.to_submit, 'job')} to submit ({_n(r.images, 'image')}) to {r.target}"
    if not r.to_submit:
        lines = [f"nothing to submit (server: {r.target})"]
    elif r.rehearsal:
        lines = [f"{what}: a rehearsal, nothing billed (~${r.cost:.2f} on fal)"]
    else:
        lines = [f"{what}, estimated ~${r.cost:.2f}"]
    if r.replacing:
        lines.insert(0, r.replacing)
    already = [
        text
        for n, text in (
            (r.done, f"{r.done:,} done"),
            (r.following, f"{r.following:,} on the server (fetched, not sent again)"),
            (r.failed, f"{r.failed:,} failed (--retry-failed sends them again)"),
        )
        if n
    ]
    if already:
        lines.append("already: " + ", ".join(already))
    if r.stale:
        lines.append(
            f"{_n(r.stale, 'image')} from prompts no longer in the manifest "
            f"{'is' if r.stale == 1 else 'are'} kept, marked stale (exports and the gallery "
            "leave them out; --include-stale keeps them)"
        )
    lines.append(f"output folder: {r.out_dir}")
    return lines + [f"{NOTICE}{n}" for n in r.notices]


def _n(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


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
    possible_duplicate: bool = False  # the request it abandons ran: fal may bill it too


@dataclass(frozen=True, slots=True)
class SubmitLost:
    """A submit sent with no answer: fal may have made the request. Nothing is sent again
    until fal's history has been asked (``running/lookup.py``)."""

    job_id: str
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Found:
    """fal's history holds what a job's lost submit made (``request_id``): it is followed
    like any other request, never sent again."""

    job_id: str
    request_id: str


@dataclass(frozen=True, slots=True)
class LookedUp:
    """One look in fal's history for ``lost`` lost submits: ``found`` of them were there."""

    lost: int
    found: int


@dataclass(frozen=True, slots=True)
class HistoryUnavailable:
    """fal's history cannot settle lost submits (``why``): sent again, counted. Once a run."""

    why: str


def history_text(e: HistoryUnavailable) -> str:
    """The notice the CLI prints and run.log keeps."""
    return (
        f"fal's history cannot tell whether lost submits made their requests ({e.why}): each"
        " is sent again and counted as a possible duplicate charge"
    )


@dataclass(frozen=True, slots=True)
class Recovered:
    """A result the queue no longer had, read from fal's history instead: no new submit."""

    job_id: str
    request_id: str


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


@dataclass(frozen=True, slots=True)
class TellFailed:
    """``--notify`` or ``--on-exit`` failed when the run ended: ``text`` says which and why,
    with no part of the URL (run.log has the same line). The exit code stays the run's."""

    text: str


# Why the webhook receiver refused a request (running/receiver.py), as the summary words it.
REFUSALS = {
    "signature": "unsigned or badly signed",
    "path": "at another path",
    "method": "not a POST",
    "size": "too large",
}


def refusals_text(counts: Mapping[str, int]) -> str:
    """``counts`` (``refused_<reason>``, as ``Inbox.counts`` gives them) in words: "2 at
    another path, 1 too large"; empty when nothing was refused."""
    return ", ".join(
        f"{counts[f'refused_{why}']} {words}"
        for why, words in REFUSALS.items()
        if counts.get(f"refused_{why}")
    )


@dataclass(frozen=True, slots=True)
class WebhooksSilent:
    """``--watch webhook``: the late checks found requests complete, and no delivery has come
    for ``seconds``: fal cannot reach ``url``, or what answers there is not the receiver (a
    proxy that changes the path). Said once a run; the run goes on with status requests."""

    seconds: float
    completed: int  # requests found complete without their delivery meanwhile
    url: str  # the URL fal was given, its query string left out (it may carry a token)
    refused: tuple[tuple[str, int], ...] = ()  # (``refused_<reason>``, count): the receiver's
    last_path: str | None = None  # the last other path a request came to


def silent_text(e: WebhooksSilent) -> str:
    """The notice the CLI prints and run.log keeps."""
    text = (
        f"webhooks: no delivery for {e.seconds / 60:.0f} min while {e.completed} requests"
        f" completed (each fetched with status requests instead): can fal reach {e.url},"
        " and does it lead to --webhook-listen with that path unchanged?"
    )
    refused = refusals_text(dict(e.refused))
    if refused:
        text += f" The receiver refused requests: {refused}"
        text += f" (the last at {e.last_path!r})." if e.last_path is not None else "."
    return text + " See docs/webhooks.md."


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
    | SubmitLost
    | Found
    | LookedUp
    | HistoryUnavailable
    | Recovered
    | Failed
    | Unreachable
    | Reachable
    | WindowChanged
    | BudgetReached
    | Stopping
    | WebhooksSilent
    | TellFailed
)


# -- the end of the run ---------------------------------------------------------------------


class StopReason(StrEnum):
    INTERRUPTED = "interrupted"
    BUDGET = "budget"
    FATAL = "fatal"
    DECLINED = "declined"  # the estimated cost was not confirmed: nothing new was submitted
    STOP_AT = "stop_at"  # --stop-at HH:MM came: no new submits, paid requests finished
    # fal refused new requests for the account's credit: no new submits, the accepted ones
    # collected
    LOCKED = "locked"
    # the output folder's disk is full: no new submits, results kept in the journal
    DISK_FULL = "disk_full"
