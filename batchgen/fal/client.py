"""The fal queue client: submit, status (polled or streamed), result, cancel, upload.

Built on ``transport.Transport`` (one request, our headers, error answers as exceptions, the
one retry loop). What each call does when things go wrong is the contract the scheduler
relies on:

- ``submit`` is ONE POST and is never retried here, because a repeated POST can pay twice.
  Nothing sent (connect error, pool timeout) -> ``QueueTransportError(sent=False)``; sent with
  no answer (read error or timeout, connection dropped) -> ``UnknownOutcome``; an error answer
  -> ``QueueHTTPError`` (``ingress=True`` for a load balancer's HTML 502/503/504).
- ``status``, ``result``, ``cancel`` and the upload steps are idempotent and retried inside on
  what ``classify`` calls RETRY (transport errors, 429 with Retry-After, ingress 5xx), a bounded
  number of times. ``result`` raises ``QueueHTTPError`` for the request's own failure (422 with
  its detail list, 5xx with a runner ``error_type``, 404 after expiry) for the caller to classify.
- 401/402/403 wherever our key was sent raise ``AuthError``: the key or the account is wrong,
  stop the run.

The statuses are typed (``statuses``), the stream has its own watchdog (``stream``), and
uploads go through ``storage``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from batchgen.errors import ProtocolError, QueueTransportError, UnknownOutcome
from batchgen.fal.auth import FalKey
from batchgen.fal.headers import ANSWERED_BY_KEY, answered_by
from batchgen.fal.platform import PlatformClient
from batchgen.fal.statuses import Status, parse_status
from batchgen.fal.storage import Storage
from batchgen.fal.stream import logs_param, stream_statuses
from batchgen.fal.transport import (
    AUTH_STATUSES,
    DEFAULT_TIMEOUT,
    Endpoints,
    Transport,
    json_or_none,
)
from batchgen.retry import REQUESTS, RetryEvent, RetryPolicy, Sleep


@dataclass(frozen=True, slots=True)
class Handle:
    """A submitted request, with the URLs exactly as the submit answer gave them (fal builds
    them from owner/app only; an emulator may point them anywhere)."""

    request_id: str
    status_url: str
    response_url: str
    cancel_url: str
    emulator: bool = False  # the server said it is batchgen's emulator (X-Batchgen-Emulator)

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "status_url": self.status_url,
            "response_url": self.response_url,
            "cancel_url": self.cancel_url,
            **({"emulator": True} if self.emulator else {}),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Handle:
        """Strict: the submit answer and journal rows alike must carry all four strings."""
        values = {}
        for name in ("request_id", "status_url", "response_url", "cancel_url"):
            v = d.get(name)
            if not isinstance(v, str) or not v:
                raise ProtocolError(f"request handle without a {name}")
            values[name] = v
        return cls(**values, emulator=d.get("emulator") is True)


EMULATOR_HEADER = "x-batchgen-emulator"


class QueueClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        endpoints: Endpoints | None = None,
        key: FalKey | str | None,
        sleep: Sleep = asyncio.sleep,
        retry: RetryPolicy = REQUESTS,
        on_retry: Callable[[RetryEvent], None] | None = None,
        wall_clock: Callable[[], float] = time.time,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        self.endpoints = endpoints or Endpoints()
        self._key = FalKey(key) if isinstance(key, str) else key
        self._t = Transport(
            http,
            key=self._key,
            sleep=sleep,
            retry=retry,
            on_retry=on_retry,
            timeout=timeout,
            redact=redact,
        )
        self._storage = Storage(self._t, self.endpoints, wall_clock)
        self._sleep, self._retry, self._on_retry = sleep, retry, on_retry

    def __repr__(self) -> str:
        return f"QueueClient(endpoints={self.endpoints!r}, key={self._key!r})"

    async def submit(
        self,
        endpoint: str,
        input: Mapping[str, Any],
        *,
        webhook: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Handle:
        """One POST, never retried here (see the module docstring for what it raises)."""
        path = endpoint.strip("/")
        if not path or "?" in path or "#" in path or ".." in path.split("/"):
            raise ValueError(f"not an endpoint id: {endpoint!r}")
        url = f"{self.endpoints.queue}/{path}"
        params = {"fal_webhook": webhook} if webhook else None
        try:
            resp = await self._t.send(
                "submit", "POST", url, json=input, params=params, extra=headers
            )
        except QueueTransportError as exc:
            if exc.sent:
                raise UnknownOutcome(f"submit to {path}: {exc}; a job may exist") from exc
            raise
        body = json_or_none(resp.content)
        if not isinstance(body, dict):
            raise ProtocolError(f"submit to {path} answered {resp.status_code} without JSON")
        # fal never sends this header: a rehearsal against `batchgen emulator` says so itself.
        emulator = EMULATOR_HEADER in resp.headers
        return Handle.from_json({**body, "emulator": emulator})

    def handle_for(self, endpoint: str, request_id: str) -> Handle:
        """The handle of a request known by its id alone (found in fal's history): its URLs as
        fal builds them, from the queue host and the endpoint's owner/app (docs/fal.md)."""
        app = "/".join(endpoint.strip("/").split("/")[:2])
        base = f"{self.endpoints.queue}/{app}/requests/{request_id}"
        return Handle(request_id, f"{base}/status", base, f"{base}/cancel")

    def platform(self) -> PlatformClient:
        """fal's platform API (history, billing) of the same account and hosts, on the same
        pool: ``Endpoints.platform``."""
        return PlatformClient(
            self._t.http,
            key=self._key,
            base_url=self.endpoints.platform,
            sleep=self._sleep,
            retry=self._retry,
            on_retry=self._on_retry,
            timeout=self._t.timeout,
        )

    async def status(self, h: Handle, *, logs: bool = False) -> Status:
        resp = await self._t.retrying("status", "GET", h.status_url, params=logs_param(logs))
        return parse_status(json_or_none(resp.content))

    def stream_status(
        self, h: Handle, *, logs: bool = False, inactivity_timeout: float = 30.0
    ) -> AsyncGenerator[Status, None]:
        """Statuses from the SSE stream until Completed (see ``stream``); any failure but a
        refused key is a ``StatusStreamError``, after which polling is authoritative."""
        return stream_statuses(
            self._t, h.status_url, logs=logs, inactivity_timeout=inactivity_timeout
        )

    async def result(self, h: Handle) -> dict[str, Any]:
        """The model's output. When fal says another endpoint answered (a fallback; the header
        is inferred, see ``headers``), its id is kept in the body under ``ANSWERED_BY_KEY``,
        so the journal stores it with the result and the index can say so."""
        resp = await self._t.retrying("result", "GET", h.response_url)
        body = json_or_none(resp.content)
        if not isinstance(body, dict):
            raise ProtocolError(f"result of {h.request_id} is not a JSON object")
        other = answered_by(resp.headers)
        if other is not None:
            body[ANSWERED_BY_KEY] = other
        return body

    async def cancel(self, h: Handle) -> str:
        """The answer's ``status``: CANCELLATION_REQUESTED, ALREADY_COMPLETED, NOT_FOUND, OK."""

        async def once() -> str:
            resp = await self._t.send("cancel", "PUT", h.cancel_url, check=False)
            body = json_or_none(resp.content)
            # fal answers 400 ALREADY_COMPLETED (404 NOT_FOUND, likely): answers, not failures.
            if resp.status_code < 500 and isinstance(body, dict):
                state = body.get("status")
                if isinstance(state, str) and resp.status_code not in AUTH_STATUSES:
                    return state
            self._t.raise_for(resp)
            raise ProtocolError(f"cancel of {h.request_id} answered without a status")

        return await self._t.with_retries(once, "cancel")

    async def jwks(self) -> Any:
        """fal's public keys for webhook signatures: ``{rest}/.well-known/jwks.json`` (with
        ``--endpoint URL``, that server's). Public: sent without the key."""
        url = f"{self.endpoints.rest}/.well-known/jwks.json"
        resp = await self._t.retrying("status", "GET", url, auth=False)
        return json_or_none(resp.content)

    async def is_emulator(self) -> bool:
        """Whether the queue host is batchgen's emulator (its stats route says so): its images
        are placeholders. False for fal, any other server, or one that does not answer."""
        url = f"{self.endpoints.queue}/_emulator/stats"
        try:
            resp = await self._t.send("status", "GET", url, check=False)
        except QueueTransportError:
            return False
        return resp.status_code == 200 and EMULATOR_HEADER in resp.headers

    async def upload(
        self, data: bytes | Path, content_type: str | None = None, file_name: str | None = None
    ) -> str:
        """Host ``data`` (bytes, or a file's path) on fal's CDN and return its URL."""
        return await self._storage.upload(data, content_type, file_name)
