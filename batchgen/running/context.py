"""What every part of one run shares: ``RunContext``.

The scheduler builds it once and hands it to the parts it wires together (the submits, the
follow of each request), so none of them reaches back into another's state: they share the
journal and the queue client, the settings, the event sink, the recorder of decisions, the
server's reachability, the stop, the event the scheduler's loop waits on, and the injected
clocks, sleep and jitter that let tests run on their own time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from batchgen.config import Settings
from batchgen.fal import QueueClient
from batchgen.journal.writer import Journal
from batchgen.retry import Sleep
from batchgen.running import events as ev
from batchgen.running.reach import Watch
from batchgen.running.recorder import Recorder
from batchgen.running.stats import RunStats
from batchgen.running.stop import Stop


class Emitter:
    """The run's event sink: each event counted in ``stats``, then handed to ``on_event``."""

    def __init__(self, on_event: Callable[[ev.Event], None] | None) -> None:
        self.stats = RunStats()
        self._on_event = on_event

    def __call__(self, event: ev.Event) -> None:
        self.stats.add(event)
        if self._on_event is not None:
            self._on_event(event)


@dataclass(frozen=True, slots=True)
class RunContext:
    journal: Journal
    client: QueueClient
    settings: Settings
    emit: Emitter
    record: Recorder  # a decision written down: journal, failures.jsonl, event
    reach: Watch  # whether the server answers
    stop: Stop
    changed: asyncio.Event  # set when the scheduler's loop should look again
    clock: Callable[[], float]  # monotonic: deadlines, run times
    wall: Callable[[], float]  # the epoch: --stop-at, a re-attached request's age
    sleep: Sleep
    rng: Callable[[], float]  # the jitter of every backoff
