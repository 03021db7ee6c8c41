"""Completion by webhook (``--watch webhook``): fal POSTs each result to us, so no request is
polled or streamed.

The receiver (``running/receiver.py``) is a small app served on ``--webhook-listen``;
``--webhook-url`` is the public address fal calls, which a tunnel or a reverse proxy in front
is the user's business to provide. What it accepts lands in the ``Inbox``; what it refuses
(a bad signature, another path or method, a body too large) is counted here, never acted on.
Deliveries are idempotent on the request id: fal retries a failed delivery for two hours, and
a second copy changes nothing.

``Inbox.wait`` is how the scheduler follows one request: it waits for the delivery, and when
none has come within a while, asks once with a status GET (never a poll loop): a lost delivery
costs one request, not an image. A delivery that arrives before its submit's answer was
recorded waits in the inbox for it. When those checks keep finding requests complete and no
delivery comes at all (``Silence``), the run is told once: the run finishes either way, but
each request then costs the status requests webhooks were meant to save.
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batchgen.fal import Completed, Handle, QueueClient
from batchgen.fal.webhook import Delivery
from batchgen.retry import Sleep
from batchgen.running.events import REFUSALS

# No delivery this long after the expected run time: ask once. fal delivers within seconds of
# completing; a receiver that is up hears nothing more only when a delivery was lost.
CHECK_AFTER_S = 5.0
MAX_CHECK_S = 600.0  # later checks at doubling intervals, never closer than this at the end
KEEP_UNCLAIMED = 10_000  # deliveries for requests this process does not follow (yet)
# How long the late checks may find requests complete with no delivery coming at all before
# the run says so. One lost delivery is no news (the check covers it); none for two minutes,
# 24 times CHECK_AFTER_S, is: fal cannot reach the URL, or what it reaches is not the receiver.
# Long past a delivery that fal retried after a hiccup, and early in a night's run.
SILENT_AFTER_S = 120.0


@dataclass(frozen=True, slots=True)
class Webhook:
    """A run's receiver: where deliveries land, and the URL fal is given for them."""

    inbox: Inbox
    url: str


class Silence:
    """When to say that deliveries do not come: a late check found a request complete without
    its delivery (the evidence), and no delivery has come in the ``after`` seconds since. Said
    once a run: the summary counts the rest."""

    def __init__(self, after: float = SILENT_AFTER_S) -> None:
        self.after = after
        self.since: float | None = None  # the first completion found since the last delivery
        self.missed = 0  # completions found without their delivery since then
        self.said = False

    def heard(self) -> None:
        """A delivery came: the path works."""
        self.since, self.missed = None, 0

    def found_complete(self, now: float) -> None:
        if self.since is None:
            self.since = now
        self.missed += 1

    def due(self, now: float) -> float | None:
        """The seconds of silence, the one time it is to be said; else None."""
        if self.said or self.since is None or now - self.since < self.after:
            return None
        self.said = True
        return now - self.since


# Called once with the seconds of silence and the requests found complete meanwhile.
OnSilent = Callable[[float, int], None]


class Inbox:
    def __init__(self, on_silent: OnSilent | None = None) -> None:
        self._got: OrderedDict[str, Delivery] = OrderedDict()
        self._used: OrderedDict[str, None] = OrderedDict()  # request ids already acted on
        self._waiting: dict[str, asyncio.Event] = {}
        self._on_silent = on_silent
        self._silence = Silence()
        self.delivered = 0
        self.duplicates = 0
        self.refusals: Counter[str] = Counter()  # by reason, the keys of events.REFUSALS
        self.last_path: str | None = None  # the last other path a request came to
        self.checks = 0  # status GETs asked because a delivery was late

    @property
    def refused(self) -> int:
        return sum(self.refusals.values())

    def counts(self) -> dict[str, int]:
        return {
            "delivered": self.delivered,
            "duplicates": self.duplicates,
            "refused": self.refused,
            "checked": self.checks,
            **{f"refused_{why}": self.refusals[why] for why in REFUSALS},
        }

    def refuse(self, why: str, path: str | None = None) -> None:
        """A request the receiver answered without acting on it (``why``: a key of
        ``events.REFUSALS``; ``path``: the other path it came to)."""
        self.refusals[why] += 1
        if path is not None:
            self.last_path = path

    def put(self, d: Delivery) -> None:
        self._silence.heard()  # a repeat too: fal reaches the receiver
        if d.request_id in self._got or d.request_id in self._used:
            self.duplicates += 1  # fal delivers again when unsure: the first one counted
            return
        self.delivered += 1
        self._got[d.request_id] = d
        while len(self._got) > KEEP_UNCLAIMED:  # an old run's requests, followed by now
            self._got.popitem(last=False)
        event = self._waiting.get(d.request_id)
        if event is not None:
            event.set()

    async def wait(
        self,
        client: QueueClient,
        handle: Handle,
        *,
        submitted_at: float,
        deadline_at: float,
        clock: Callable[[], float],
        sleep: Sleep,
        expected: float | None = None,
    ) -> dict[str, Any]:
        """The request's result: from its delivery, or from a status GET and the result GET
        when the delivery is late (``expected``: the run time seen so far). Raises the
        result's error as the result GET would, and ``TimeoutError`` past the deadline."""
        rid = handle.request_id
        event = self._waiting.setdefault(rid, asyncio.Event())
        gap = CHECK_AFTER_S
        check_at = submitted_at + (expected or 0.0) + gap
        try:
            while rid not in self._got:
                left = min(check_at, deadline_at) - clock()
                if left > 0:
                    await _first(event.wait(), sleep(left))  # the injected sleep: tests' clock
                    continue
                if clock() >= deadline_at:
                    raise TimeoutError
                self.checks += 1
                done = isinstance(await client.status(handle), Completed)
                if done:
                    self._silence.found_complete(clock())
                silent = self._silence.due(clock())
                if silent is not None and self._on_silent is not None:
                    self._on_silent(silent, self._silence.missed)
                if done:
                    return await client.result(handle)
                gap = min(gap * 2, MAX_CHECK_S)
                check_at = clock() + gap
            d = self._got.pop(rid)
        finally:
            self._waiting.pop(rid, None)
            self._used[rid] = None  # followed to its end: a later copy changes nothing
            while len(self._used) > KEEP_UNCLAIMED:
                self._used.popitem(last=False)
        if not d.ok:
            raise d.failure()
        if d.payload is None:  # fal could not serialise it into the delivery: fetch it
            return await client.result(handle)
        return d.payload


async def _first(*waits: Any) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
