"""The window in use and what it learns: ``Pacing``.

The rules are pure, in ``window`` (how many requests to keep in flight, how to watch one).
This keeps the state they are fed from: which of this run's requests are in flight, in the
order they were submitted (the first status of a new request is read against the ones ahead
of it), how many re-attached requests from an earlier run are still in flight (older than any
of ours), and the recent run times. A change of the window is announced and wakes the
scheduler's loop, which may then claim more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from batchgen.fal import Queued, Status
from batchgen.running import events as ev
from batchgen.running.window import Observation, RunTimes, Window


class Pacing:
    def __init__(
        self, window: Window, emit: Callable[[ev.Event], None], changed: asyncio.Event
    ) -> None:
        self.window = window
        self.runtimes = RunTimes()
        self._emit = emit
        self._changed = changed
        self._seq = 0  # submit order of this run's requests...
        self._live: set[int] = set()  # ...and which of them are still in flight
        self.reattached = 0  # re-attached requests still in flight

    def begin(self) -> int:
        """A new request of this run: its place in the submit order."""
        self._seq += 1
        self._live.add(self._seq)
        return self._seq

    def end(self, seq: int) -> None:
        self._live.discard(seq)

    def wants_prompt_check(self) -> bool:
        """Whether a new request's first status should be asked for at once."""
        return self.window.wants_prompt_check()

    def first_status(self, status: Status, seq: int, in_flight: int, prompt: bool) -> None:
        """The first status of request ``seq``, submitted with ``in_flight`` of ours out."""
        position = status.position if isinstance(status, Queued) else None
        # Ours submitted earlier and still in flight: those running, waiting ahead, or
        # finished a moment ago. Re-attached requests (older still) count too.
        ahead = sum(1 for q in self._live if q < seq) + self.reattached
        before = self.window.size
        if self.window.observe(Observation(position, in_flight, prompt, ahead)) != before:
            self._emit(ev.WindowChanged(self.window.size))
            self._changed.set()
