"""What a run finds in its folder before it submits anything, and what it does about it.

The rules, in the order they apply:

* **Rehearsal and real work never mix.** A rehearsal (``--emulate``) into a folder that holds
  work of a real server is refused (exit 2): its placeholders would sit beside paid images.
  A real run into a rehearsal's folder makes every job for real: the rehearsal's jobs go back
  to the queue as if never run, and their placeholder images and index rows are removed
  before anything is submitted, so the folder never shows a mix, even if the run is stopped;
  the gallery is rebuilt at once, so it never links to a removed placeholder.
* **Paid requests are fetched where they were made.** A real run aimed at another server than
  the one still holding requests of this folder is refused, with the command that fetches
  them: re-attaching would send this run's key to that server, and resubmitting would pay again.
* **Requests of an in-process emulator are gone** with the run that started it: resubmitted at
  once, free (no attempt, no loss counted), instead of being watched until the deadline.
* **A paid image is fetched, not paid again.** Jobs that failed only in their download are
  downloaded again from their stored result on every run; ``--retry-failed`` puts the other
  failures back in the queue.
* **A saved image is what the journal recorded.** A downloaded job whose file is missing or
  broken (``outputs/saved.py``: its size, or with ``--verify`` its sha256) goes back to
  COMPLETED: its broken files and their index rows go, and its images are fetched again from
  its stored result, without a new submit (made again, counted as lost, only when fal no
  longer has the media). Made by an emulator that is gone, it is made again, free; made on
  another server, it is left for a run against that server.
* ``failures.jsonl`` is rewritten whenever a failure was put back, so it lists exactly the
  jobs failed now.
"""

from __future__ import annotations

import contextlib
import shlex
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from batchgen.errors import UsageError
from batchgen.journal import resets
from batchgen.journal.origin import describe, emulator_at, is_rehearsal
from batchgen.journal.saved import SavedFile
from batchgen.journal.writer import Journal
from batchgen.outputs.gallery import GALLERY, build_gallery
from batchgen.outputs.rebuild import prune_index, rewrite_failures
from batchgen.outputs.saved import SavedCheck, drop_broken
from batchgen.planning.jobs import JobState

S = JobState
# States in which a job holds a request (or its result) that only its own server can answer.
_HELD = (S.QUEUED, S.RUNNING, S.COMPLETED)


@dataclass(frozen=True, slots=True)
class Recovery:
    replaced: int = 0  # rehearsal jobs to be made for real (placeholders removed)
    dropped: int = 0  # requests of an in-process emulator that is gone: resubmitted, free
    redownload: int = 0  # download-only failures: fetched again from the stored result
    retried: int = 0  # --retry-failed: failures back in the queue
    real_work: str | None = None  # the refusal for an emulator, when the folder holds real work
    repaired: int = 0  # saved images missing or broken: fetched again from their results
    remade: int = 0  # ...made by an emulator that is gone: made again, free
    elsewhere: int = 0  # ...made on another server: left for a run against it

    def resumed(self) -> tuple[int, ...]:
        """The figures ``events.Resumed`` carries after its first three."""
        fields = (self.retried, self.redownload, self.dropped, self.replaced, self.repaired)
        return (*fields, self.remade, self.elsewhere)


def recover(
    journal: Journal,
    out_dir: Path,
    *,
    origin: str,
    endpoint: str | None,
    retry_failed: bool,
    broken: SavedCheck | None = None,
) -> Recovery:
    """Apply the rules above; raises UsageError (nothing changed) when the run must not go on.
    ``endpoint`` is the run's ``--endpoint`` base URL (None for fal and ``--emulate``);
    ``broken`` what ``outputs.saved.find_broken`` found on disk before."""
    real = check_mixing(journal, out_dir, origin)
    # An --endpoint server may be a `batchgen emulator`: its work is followed, not replaced.
    same = emulator_at(endpoint) if endpoint else None
    bulk = journal.bulk
    replaced = 0 if is_rehearsal(origin) else bulk(partial(resets.replace_rehearsal, keep=same))
    dropped = bulk(partial(resets.drop_emulator_requests, keep=same))
    redownload = bulk(partial(resets.redownload_failed, origins=(origin, same or origin)))
    retried = journal.retry_failed() if retry_failed else 0
    if replaced:  # their placeholder images and index rows go before anything is submitted
        replace_placeholders(journal, out_dir)
    if replaced or dropped or redownload or retried:
        rewrite_failures(journal, out_dir)
    fixed = repair(
        journal, out_dir, broken.broken if broken else [], (origin, same or origin), same
    )
    return Recovery(replaced, dropped, redownload, retried, real, *fixed)


def repair(
    journal: Journal,
    out_dir: Path,
    broken: list[SavedFile],
    origins: tuple[str, str],
    keep: str | None,
) -> tuple[int, int, int]:
    """Saved files found broken, of jobs still DOWNLOADED: (fetched again, made again,
    left for another server), in images."""
    pre = _states(journal, {f.job_id for f in broken})
    broken = [f for f in broken if pre.get(f.job_id) is S.DOWNLOADED]
    if not broken:
        return 0, 0, 0
    jobs = {f.job_id for f in broken}
    journal.bulk(partial(resets.remake_rehearsal, job_ids=jobs, keep=keep))
    journal.bulk(partial(resets.repair_from_result, job_ids=jobs, origins=origins))
    post = _states(journal, jobs)
    drop_broken(out_dir, {f.name for f in broken if post.get(f.job_id) is not S.DOWNLOADED})
    fetched = sum(post.get(f.job_id) is S.COMPLETED for f in broken)
    remade = sum(post.get(f.job_id) is S.PENDING for f in broken)
    return fetched, remade, len(broken) - fetched - remade


def _states(journal: Journal, jobs: set[str], chunk: int = 900) -> dict[str, JobState]:
    ids, out = sorted(jobs), {}
    for i in range(0, len(ids), chunk):
        out.update(journal.states(ids[i : i + chunk]))
    return out


def replace_placeholders(journal: Journal, out_dir: Path) -> None:
    """Remove a rehearsal's placeholder images and index rows, and the gallery with them.

    The page goes first, so that a kill at any moment leaves no ``index.html`` that shows
    the rehearsal's cards and counts with links to removed files: before the rebuild there is
    none, after it the page shows the index as pruned (``build_gallery`` writes it last, by
    ``os.replace``). A rebuild that fails leaves no page; the run's end builds one.
    """
    (out_dir / GALLERY).unlink(missing_ok=True)
    prune_index(journal, out_dir)
    with contextlib.suppress(Exception):  # the page is a view: the run goes on without it
        build_gallery(out_dir)


def check_mixing(journal: Journal, out_dir: Path, origin: str) -> str | None:
    """Refuse what must not mix (see the module docstring); else return, when the folder
    holds real work, the refusal a rehearsal would get, for a server found to be an
    emulator only once it answers."""
    work = journal.by_origin()
    real = {o: sum(c.values()) for o, c in work.items() if not is_rehearsal(o)}
    refusal = None
    if real:
        where, n = max(real.items(), key=lambda kv: kv[1])
        refusal = (
            f"{out_dir} holds real work ({n} jobs run on {describe(where)}); a rehearsal "
            f"must not mix placeholder images into it. Rehearse into another folder: "
            f"--out {shlex.quote(str(out_dir) + '-rehearsal')}"
        )
    if is_rehearsal(origin):
        if refusal:
            raise UsageError(refusal)
        return None
    for other, counts in work.items():
        held = sum(counts.get(s, 0) for s in _HELD)
        if other != origin and not is_rehearsal(other) and held:
            raise UsageError(
                f"{out_dir} has {held} paid requests still on {describe(other)}; fetch them "
                f"first by running against it again ({_flags(other)}), then switch servers. "
                "This run would otherwise pay for them twice."
            )
    return refusal


def _flags(origin: str) -> str:
    if origin.startswith("endpoint:"):
        return f"--endpoint {shlex.quote(describe(origin))}"
    return "without --endpoint or --emulate"
