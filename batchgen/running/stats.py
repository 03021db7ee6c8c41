"""The tally of one run: ``RunStats``, counters over the events it emitted (``events.py``);
the journal keeps the totals across runs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from batchgen.running.events import (
    START_TIMEOUT,
    SUBMIT_DROPPED,
    Event,
    Failed,
    Found,
    LookedUp,
    Recovered,
    Requeued,
    Resumed,
    Retrying,
    Saved,
    SubmitLost,
    Submitted,
)


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
    redownloaded: int = 0  # paid images fetched again from their results: no new submit
    resubmitted_free: int = 0  # requests of a stopped emulator, sent again at no cost
    replaced: int = 0  # a rehearsal's jobs made for real
    start_timeouts: int = 0  # requests no runner started within --start-timeout (not billed)
    lost_submits: int = 0  # submits with no answer, this run's and those it found (each looked for)
    resent: int = 0  # ...that fal's history did not hold, or could not tell of: sent again
    resent_unsure: int = 0  # ...of which it could not tell: possible duplicates
    found: int = 0  # ...whose request fal's history held: followed, not sent again
    lookups: int = 0  # looks in fal's history for them
    recovered: int = 0  # expired results read from fal's history: no new submit
    repaired: int = 0  # saved images found missing or broken on disk, fetched or made again

    @property
    def unsettled(self) -> int:
        """Lost submits this run neither found, nor sent again, nor failed (it stopped)."""
        gone = self.found + self.resent + self.failed[SUBMIT_DROPPED]
        return max(0, self.lost_submits - gone)

    def add(self, event: Event) -> None:
        match event:
            case Resumed(unknown=u, redownload=r, dropped=d, replaced=p):
                self.redownloaded, self.resubmitted_free, self.replaced = r, d, p
                self.repaired = event.repaired + event.remade
                self.lost_submits += u  # an earlier run's lost submits, settled by this one
            case Submitted():
                self.submitted += 1
            case Retrying():
                self.retries += 1
            case Requeued(lost=lost, reason=reason, possible_duplicate=dup):
                self.requeued += 1
                self.lost += int(lost)
                # a lost submit fal's history could not rule out, or a request cancelled
                # while it ran: fal may bill it as well as the next
                self.possible_duplicates += int(dup)
                self.start_timeouts += int(reason == START_TIMEOUT)
                self.resent += int(reason == SUBMIT_DROPPED)
                self.resent_unsure += int(reason == SUBMIT_DROPPED and dup)
            case SubmitLost():
                self.lost_submits += 1
            case Found():
                self.found += 1
            case LookedUp():
                self.lookups += 1
            case Recovered():
                self.recovered += 1
            case Saved(images=n):
                self.saved_jobs += 1
                self.images += n
            case Failed(reason=reason):
                self.failed[reason] += 1
                self.start_timeouts += int(reason == START_TIMEOUT)
            case _:
                pass
