"""Webhook delivery: when a request that asked for ``fal_webhook`` completes, POST fal's
payload to it (docs/fal.md, Webhooks).

The model has no background clock, so one dispatcher task wakes at the model's next
completion time (or when a new webhook request arrives), delivers what finished, and exits
when nothing is left to deliver. Deliveries are retried a few times, as fal retries them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import httpx

from batchgen.emulator.config import EmulatorConfig
from batchgen.emulator.model import Phase, QueueModel, Request
from batchgen.emulator.signing import Signer

IDLE_WAKE_S = 1.0  # re-check this often when nothing runs (e.g. everything is queued)

PayloadFn = Callable[[str, Request], dict[str, Any]]


class WebhookDispatcher:
    def __init__(self, model: QueueModel, config: EmulatorConfig, payload: PayloadFn) -> None:
        self.model = model
        self.config = config
        self.payload = payload  # (base_url, request) -> JSON body
        self.pending: dict[str, str] = {}  # request id -> base URL its links use
        self.signer = Signer(clock=time.time)  # fal's clock is wall time: so is the stamp
        self._client: httpx.AsyncClient | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._deliveries: set[asyncio.Task[None]] = set()

    def watch(self, req: Request, base: str) -> None:
        self.pending[req.id] = base
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self.pending:
            now = self.config.clock()
            self.model.advance(now)
            for rid, base in list(self.pending.items()):
                req = self.model.requests.get(rid)
                if req is None:
                    del self.pending[rid]  # expired before anyone could deliver it
                elif req.phase is Phase.DONE:
                    del self.pending[rid]
                    task = asyncio.get_running_loop().create_task(self._deliver(req, base))
                    self._deliveries.add(task)
                    task.add_done_callback(self._deliveries.discard)
            if not self.pending:
                break
            nxt = self.model.next_event_at()
            wait = IDLE_WAKE_S if nxt is None else max(0.0, min(nxt - now, IDLE_WAKE_S))
            await self._sleep_or_wake(wait)

    async def _sleep_or_wake(self, seconds: float) -> None:
        self._wake.clear()
        sleeper = asyncio.ensure_future(self.config.sleep(seconds))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (sleeper, waker):
                t.cancel()
                with suppress(asyncio.CancelledError):
                    await t

    async def _deliver(self, req: Request, base: str) -> None:
        assert req.webhook is not None
        raw = json.dumps(self.payload(base, req)).encode()
        dice, counters = self.model.dice, self.model.counters
        if dice.roll("webhook_lost"):
            counters["webhooks_lost"] += 1
            return
        if dice.roll("webhook_delay"):
            counters["webhooks_delayed"] += 1
            await self.config.sleep(self.config.webhook_delay_s)
        if dice.roll("webhook_forged"):
            counters["webhooks_forged"] += 1
            await self._post(req.webhook, raw, self.signer.headers(req.id, raw, forged=True))
        copies = 2 if dice.roll("webhook_dup") else 1
        counters["webhooks_duplicated"] += copies - 1
        for _ in range(copies):
            await self._send(req, raw)

    async def _send(self, req: Request, raw: bytes) -> None:
        """POST one signed delivery, retried a few times as fal retries them."""
        assert req.webhook is not None
        for attempt in range(1, self.config.webhook_attempts + 1):
            # Signed per attempt: the timestamp is the moment of sending.
            if await self._post(req.webhook, raw, self.signer.headers(req.id, raw)):
                self.model.counters["webhooks_delivered"] += 1
                return
            if attempt < self.config.webhook_attempts:
                await self.config.sleep(self.config.webhook_retry_s * attempt)
        self.model.counters["webhooks_failed"] += 1

    async def _post(self, url: str, raw: bytes, headers: dict[str, str]) -> bool:
        headers = {**headers, "Content-Type": "application/json"}
        if self.config.webhook_client is None and self._client is None:
            # One pool for every delivery: a client per POST costs a connection (and its
            # setup) per result, which delays each delivery as fal's do not.
            self._client = httpx.AsyncClient(timeout=15.0)
        client = self.config.webhook_client or self._client
        assert client is not None
        try:
            r = await client.post(url, content=raw, headers=headers)
        except httpx.HTTPError:
            return False
        return r.status_code < 300

    async def idle(self) -> None:
        """Wait until every watched request's webhook has been delivered or given up."""
        while (self._task is not None and not self._task.done()) or self._deliveries:
            if self._task is not None and not self._task.done():
                await asyncio.shield(self._task)
            if self._deliveries:
                await asyncio.gather(*list(self._deliveries))

    async def aclose(self) -> None:
        for t in [*([self._task] if self._task else []), *self._deliveries]:
            t.cancel()
            with suppress(asyncio.CancelledError):
                await t
        if self._client is not None:
            await self._client.aclose()
            self._client = None
