"""Completion by webhook (``--watch webhook``): fal POSTs each result to us, so no request is
polled or streamed.

``Receiver`` is a small Starlette app served on ``--webhook-listen`` (uvicorn, in the run's
event loop); ``--webhook-url`` is the public address fal calls, which a tunnel or a reverse
proxy in front is the user's business to provide. Every delivery's signature is checked
(``fal.webhook.Verifier``): an unsigned or badly signed one is answered 401 and recorded, never
acted on. Deliveries are idempotent on the request id: fal retries a failed delivery for two
hours, and a second copy changes nothing.

``Inbox.wait`` is how the scheduler follows one request: it waits for the delivery, and when
none has come within a while, asks once with a status GET (never a poll loop): a lost delivery
costs one request, not an image. A delivery that arrives before its submit's answer was
recorded waits in the inbox for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from batchgen.errors import ProtocolError
from batchgen.fal import Completed, Handle, QueueClient
from batchgen.fal.webhook import Delivery, Verifier, WebhookRefused, parse_delivery
from batchgen.retry import Sleep

PATH = "/batchgen/webhook"
# No delivery this long after the expected run time: ask once. fal delivers within seconds of
# completing; a receiver that is up hears nothing more only when a delivery was lost.
CHECK_AFTER_S = 5.0
MAX_CHECK_S = 600.0  # later checks at doubling intervals, never closer than this at the end
KEEP_UNCLAIMED = 10_000  # deliveries for requests this process does not follow (yet)


@dataclass(frozen=True, slots=True)
class Webhook:
    """A run's receiver: where deliveries land, and the URL fal is given for them."""

    inbox: Inbox
    url: str


class Inbox:
    def __init__(self) -> None:
        self._got: OrderedDict[str, Delivery] = OrderedDict()
        self._used: OrderedDict[str, None] = OrderedDict()  # request ids already acted on
        self._waiting: dict[str, asyncio.Event] = {}
        self.delivered = 0
        self.duplicates = 0
        self.refused = 0
        self.checks = 0  # status GETs asked because a delivery was late

    def counts(self) -> dict[str, int]:
        return {
            "delivered": self.delivered,
            "duplicates": self.duplicates,
            "refused": self.refused,
            "checked": self.checks,
        }

    def put(self, d: Delivery) -> None:
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
                if isinstance(await client.status(handle), Completed):
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


def receiver_app(inbox: Inbox, verifier: Verifier, on_refused: Callable[[str], None]) -> Starlette:
    async def deliver(request: Request) -> Response:
        raw = await request.body()
        try:
            await verifier.verify(request.headers, raw)
            d = parse_delivery(raw)
        except (WebhookRefused, ProtocolError) as exc:
            inbox.refused += 1
            on_refused(str(exc))
            return JSONResponse({"detail": str(exc)}, status_code=401)
        inbox.put(d)
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route(PATH, deliver, methods=["POST"])])


@contextlib.asynccontextmanager
async def receive(
    listen: str,
    public_url: str | None,
    inbox: Inbox,
    verifier: Verifier,
    on_refused: Callable[[str], None],
) -> AsyncIterator[str]:
    """Serve the receiver on ``listen`` (HOST:PORT, port 0 for any free one); yield the URL
    fal is given: ``public_url`` when set, else the address it listens on."""
    from batchgen.emulator.server import serve_asgi  # uvicorn on loopback, in this loop

    host, _, port = listen.rpartition(":")  # checked as an option (option_rules.as_listen)
    app = receiver_app(inbox, verifier, on_refused)
    async with serve_asgi(app, host, int(port)) as url:
        yield (public_url.rstrip("/") if public_url else url) + PATH
