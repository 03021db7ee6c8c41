"""The emulator's waiting line: one FIFO lane per queue priority.

fal keeps one queue per endpoint, shared by every caller, and a request sent with
``X-Fal-Queue-Priority: low`` waits behind every normal one (docs/fal.md, Concurrency, the
queue and priority). The model
keeps a ``Line`` per priority and starts from the normal lane first; FIFO holds within each.

A request taken out of line (cancelled, or its start timeout ran out) stays in its lane's
deque and is skipped when it reaches the head: removing it from the middle of a deque would
cost O(n) per cancel. Positions are computed from tickets instead of by walking the line:
``ticket - head ticket - tickets taken out between``, O(log n).
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

PRIORITIES = ("normal", "low")  # the order lanes are served in


class Line(Generic[T]):
    def __init__(self, waiting: Callable[[T], bool]) -> None:
        self._q: deque[tuple[int, T]] = deque()
        self._gone: list[int] = []  # sorted tickets taken out of line, not yet past the head
        self._next = 0
        self._waiting = waiting  # whether an item at the head still waits (not cancelled)
        self.length = 0  # items still waiting

    def push(self, item: T) -> int:
        """Join the back of the line; the item's ticket."""
        ticket = self._next
        self._next += 1
        self._q.append((ticket, item))
        self.length += 1
        return ticket

    def take_out(self, ticket: int) -> None:
        """Leave the line from wherever the item stands (it is skipped at the head)."""
        bisect.insort(self._gone, ticket)
        self.length -= 1

    def pop(self) -> T | None:
        """The item at the head that still waits, or None when none does."""
        while self._q:
            _, item = self._q.popleft()
            if self._waiting(item):
                self.length -= 1
                return item
        return None

    def trim(self) -> None:
        """Forget the tickets taken out that are behind the head: they shift nobody now."""
        head = self._q[0][0] if self._q else self._next
        cut = bisect.bisect_left(self._gone, head)
        if cut:
            del self._gone[:cut]

    def position(self, ticket: int) -> int:
        """How many still-waiting items stand before ``ticket`` (0 = next)."""
        head = self._q[0][0] if self._q else ticket
        return ticket - head - bisect.bisect_left(self._gone, ticket)
