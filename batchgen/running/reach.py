"""Whether the server answers: a run-level condition, read from what every request sees.

A connection refused, a name that does not resolve, a load balancer's 502/503/504: one
request's bad luck, or the server (or the network) gone for everyone. Pure, on an injected
clock: the scheduler reports each failure and each answer, and reads back when to tell the
user (once, after a short grace, not once per retry) and when it is over.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from batchgen.retry import Outcome
from batchgen.running import events as ev

# Retry reasons (retry.classify) that mean no answer came from the server itself.
UNREACHABLE = frozenset({"transport", "http_502", "http_503", "http_504"})
GRACE_S = 3.0  # a blip shorter than this is not worth a word


@dataclass
class Reach:
    down_since: float | None = None
    announced: bool = False

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, now: float, reason: str) -> float | None:
        """Note a failed exchange. Returns how long the server has been unreachable when it
        is time to say so (once per outage), else None."""
        if reason not in UNREACHABLE:
            return None
        if self.down_since is None:
            self.down_since = now
        if not self.announced and now - self.down_since >= GRACE_S:
            self.announced = True
            return now - self.down_since
        return None

    def answered(self, now: float) -> float | None:
        """Note an answer. Returns the outage's length when one was announced, else None."""
        if self.down_since is None:
            return None
        lasted, announced = now - self.down_since, self.announced
        self.down_since, self.announced = None, False
        return lasted if announced else None

    def seconds(self, now: float) -> float | None:
        """How long the server has been unreachable, once announced (for progress lines)."""
        return now - self.down_since if self.down_since is not None and self.announced else None


@dataclass
class Watch:
    """``Reach`` fed by the scheduler (each failed exchange, each answer), telling ``emit``
    when an outage is worth a word and when it is over, and ``back`` when it is over."""

    clock: Callable[[], float]
    emit: Callable[[ev.Event], None]
    back: Callable[[], None]
    state: Reach = field(default_factory=Reach)

    @property
    def down(self) -> bool:
        return self.state.down

    def failed(self, o: Outcome) -> None:
        lasted = self.state.failed(self.clock(), o.reason)
        if lasted is not None:
            self.emit(ev.Unreachable(lasted, o.message))

    def answered(self) -> None:
        lasted = self.state.answered(self.clock())
        if lasted is not None:
            self.emit(ev.Reachable(lasted))
            self.back()

    def seconds(self) -> float | None:
        return self.state.seconds(self.clock())
