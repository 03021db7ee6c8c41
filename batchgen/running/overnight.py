"""The two stops an unattended night meets most, as the run reports them: a full disk and a
locked account. Both end only the submitting (``running/stop.py``): what fal already accepted
is collected (a locked account) or kept in the journal (a full disk), so the same command,
after a top-up or once there is room, goes on with nothing paid twice. Also the disk a run
will take, weighed before its first submit against what the folder's filesystem has free,
and the plan's notices as the run words them (``as_run``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from batchgen.errors import DiskFull
from batchgen.journal.origin import FAL, describe
from batchgen.manifest.files import travel_text
from batchgen.outputs.reserve import free_bytes
from batchgen.planning.disk import jobs_bytes, size_text
from batchgen.planning.jobs import JobSpec, JobState
from batchgen.running.events import StopReason

S = JobState


def stop_line(
    stop: StopReason | None, *, out_dir: Path, free: int, counts: Mapping[JobState, int], cause: str
) -> str:
    """The summary's line for a full disk or a locked account ("" for any other stop)."""
    saved = counts.get(S.COMPLETED, 0)
    on_fal = counts.get(S.QUEUED, 0) + counts.get(S.RUNNING, 0)
    waiting = _waiting(saved, on_fal)
    if stop is StopReason.DISK_FULL:
        return (
            f"disk full: {out_dir} has {size_text(free)} free. Nothing paid for is lost"
            f"{': ' + waiting if waiting else ''}. Free some space and run the same command"
            " again"
        )
    if stop is StopReason.LOCKED:
        left = counts.get(S.PENDING, 0) + counts.get(S.UNKNOWN, 0)
        return (
            f"account locked: {cause or 'fal refused new requests'}. Every request it had accepted"
            f" was {'followed' if on_fal else 'collected'}{'; ' + waiting if waiting else ''};"
            f" {left:,} jobs not sent. Top up the balance and run the same command again"
        )
    return ""


def _waiting(saved: int, on_fal: int) -> str:
    parts = []
    if saved:
        parts.append(f"{saved:,} results wait in the journal to be downloaded")
    if on_fal:
        parts.append(f"{on_fal:,} requests are still on fal, kept to follow")
    return " and ".join(parts)


def disk_notice(
    sample: Iterable[JobSpec], images: int, *, emulated: bool, free: int, out_dir: Path
) -> str:
    """A warning when ``images`` images like those of ``sample`` (a few of the jobs to submit:
    a million-job folder is not read to say it) are expected to need more than ``free`` bytes
    ("" when they fit)."""
    specs = list(sample)
    per_image = jobs_bytes(specs, emulated=emulated) / max(1, sum(s.num_images for s in specs))
    need = int(per_image * images)
    if need <= free:
        return ""
    return (
        f"disk: the images need about {size_text(need)} and {out_dir} has {size_text(free)}"
        " free; the run stops when the disk is full (nothing paid is lost) and the same command"
        " goes on once there is room"
    )


def no_room(out_dir: Path) -> DiskFull:
    """The error for a disk that filled before the run could stop by itself (while it
    planned, or set the folder up)."""
    return DiskFull(
        f"the disk of {out_dir} is full ({size_text(free_bytes(out_dir))} free); nothing was"
        " lost: free some space and run the same command again"
    )


def as_run(notices: Iterable[str], *, inline: bool, origin: str | None) -> tuple[str, ...]:
    """The plan's notices as this run does it: local files sent inside each request with
    --inline-uploads, else uploaded to the storage of the server the requests go to."""
    storage = "fal storage" if origin == FAL else f"the storage of {describe(origin)}"
    now = travel_text(inline=inline, storage=storage)
    return tuple(n.replace(travel_text(), now) for n in notices)
