"""A client for fal's platform API: its record of every request, and what it billed.

Two routes (docs/fal.md, The platform API, says what is confirmed of each and what inferred):

- ``requests_by_endpoint``: ``GET {platform}/models/requests/by-endpoint``, any key. The
  requests that ended, with their inputs and outputs when asked (``payloads=True``).
- ``billing_events``: ``GET {platform}/models/billing-events``, an **admin** key. One event per
  billed request, ``cost_usd`` from ``cost_total`` (``cost_estimate_nano_usd`` / 1e9 where an
  older answer lacks it).

Both follow ``next_cursor`` while ``has_more`` and yield items one by one; request ids and
endpoint ids go 50 a call, fal's bound. Built on the same ``Transport`` as the queue client (an
injected ``httpx.AsyncClient``, our headers, the key never printed, error bodies scrubbed).
Every call is a GET, so 429, 5xx and transport failures are tried again under ``retry``
(``REQUESTS`` by default). A 401 raises ``AuthError``; a 403 from billing raises
``AdminKeyRequired`` (the key works, but is not an admin key), elsewhere ``AuthError``; any
other error answer a ``QueueHTTPError`` with fal's ``error.type`` and ``error.message``.

``json_input`` may hold the user's OpenAI key (fal stores a BYOK request's input as sent):
the items keep the payloads out of their ``repr``, and nothing here logs them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from batchgen.errors import AdminKeyRequired, AuthError, ProtocolError, QueueHTTPError
from batchgen.fal.auth import FalKey
from batchgen.fal.transport import DEFAULT_TIMEOUT, Transport, json_or_none, safe_url
from batchgen.retry import REQUESTS, RetryEvent, RetryPolicy, Sleep, parse_retry_after

PLATFORM_URL = "https://api.fal.ai/v1"
MAX_IDS = 50  # endpoint ids and request ids per call (fal's bound)
MAX_LIMIT = 100  # items per page (fal's bound)
STATUSES = ("success", "error", "user_error")
When = datetime | str  # a datetime (naive = UTC), or ISO 8601 / YYYY-MM-DD text as fal takes it


@dataclass(frozen=True, slots=True)
class RequestItem:
    """One request of fal's history. The payloads are None unless asked for (or not stored)."""

    request_id: str
    endpoint_id: str
    started_at: datetime | None
    sent_at: datetime | None
    ended_at: datetime | None
    status_code: int | None
    duration: float | None
    json_input: dict[str, Any] | None = field(default=None, repr=False)
    json_output: Any = field(default=None, repr=False)

    @property
    def reached_fal(self) -> datetime | None:
        """The earlier of ``sent_at`` and ``started_at``: fal does not say which of the two is
        the submit time (docs/fal.md), and the earlier is never after it."""
        times = [t for t in (self.sent_at, self.started_at) if t is not None]
        return min(times) if times else None


@dataclass(frozen=True, slots=True)
class BillingEvent:
    request_id: str
    endpoint_id: str | None
    timestamp: datetime | None
    cost_usd: float
    output_units: float | None = None
    unit_price: float | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """One answer: its items (``RequestItem`` or ``BillingEvent``) and where the next starts."""

    items: list[Any]
    next_cursor: str | None
    has_more: bool


class PlatformClient:
    """fal's platform API on an injected client (see the module docstring)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        key: FalKey | None,
        base_url: str = PLATFORM_URL,
        sleep: Sleep = asyncio.sleep,
        retry: RetryPolicy = REQUESTS,
        on_retry: Callable[[RetryEvent], None] | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._key = key
        self._t = Transport(
            http, key=key, sleep=sleep, retry=retry, on_retry=on_retry, timeout=timeout, redact=None
        )

    def __repr__(self) -> str:
        return f"PlatformClient(base_url={self.base_url!r}, key={self._key!r})"

    # -- the request history ----------------------------------------------------------------

    async def request_pages(
        self,
        endpoint_ids: Sequence[str],
        *,
        start: When | None = None,
        end: When | None = None,
        status: str | None = None,
        request_id: str | None = None,
        limit: int | None = None,
        payloads: bool = False,
        sort_by: str | None = None,
    ) -> AsyncIterator[Page]:
        """Every page of the history of ``endpoint_ids`` (50 ids a listing), cursors followed."""
        if not endpoint_ids:
            raise ValueError("the history is listed by endpoint: give at least one endpoint id")
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        base = _params(start=start, end=end, limit=limit)
        base.update(status=status, request_id=request_id, sort_by=sort_by)
        if payloads:
            base["expand"] = "payloads"
        for chunk in _chunks(endpoint_ids):
            params = {**base, "endpoint_id": ",".join(chunk)}
            async for page in self._pages("/models/requests/by-endpoint", params, _items):
                yield page

    async def requests_by_endpoint(
        self, endpoint_ids: Sequence[str], **filters: Any
    ) -> AsyncIterator[RequestItem]:
        """The items of :meth:`request_pages` (same filters), one by one."""
        async for page in self.request_pages(endpoint_ids, **filters):
            for item in page.items:
                yield item

    # -- billing ----------------------------------------------------------------------------

    async def billing_events(
        self,
        *,
        request_ids: Iterable[str] | None = None,
        start: When | None = None,
        end: When | None = None,
        endpoint_id: str | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[BillingEvent]:
        """The billing events in the window (and of ``endpoint_id``), or of ``request_ids``
        only, 50 ids a call (an empty list asks nothing). Needs an admin key."""
        base = _params(start=start, end=end, limit=limit)
        base["endpoint_id"] = endpoint_id
        chunks: Iterable[Sequence[str] | None] = (
            [None] if request_ids is None else _chunks(list(dict.fromkeys(request_ids)))
        )
        for chunk in chunks:
            params = base if chunk is None else {**base, "request_id": ",".join(chunk)}
            async for page in self._pages("/models/billing-events", params, _events):
                for event in page.items:
                    yield event

    # -- plumbing ---------------------------------------------------------------------------

    async def _pages(
        self,
        path: str,
        params: Mapping[str, str | None],
        parse: Callable[[Mapping[str, Any]], list[Any]],
    ) -> AsyncIterator[Page]:
        query = {k: v for k, v in params.items() if v is not None}
        seen: set[str] = set()
        while True:
            body = await self._get(path, query)
            page = Page(parse(body), _cursor(body), body.get("has_more") is True)
            yield page
            if not page.has_more or page.next_cursor is None:
                return
            if page.next_cursor in seen:  # a server that loops would keep us here forever
                raise ProtocolError(f"{path} gave the same cursor twice")
            seen.add(page.next_cursor)
            query = {**query, "cursor": page.next_cursor}

    async def _get(self, path: str, params: Mapping[str, str]) -> Mapping[str, Any]:
        url = self.base_url + path

        async def once() -> Mapping[str, Any]:
            resp = await self._t.send("platform", "GET", url, params=params, check=False)
            if resp.status_code >= 300:
                raise self._error(resp, admin=path.endswith("billing-events"))
            body = json_or_none(resp.content)
            if not isinstance(body, dict):
                raise ProtocolError(f"{safe_url(url)} answered {resp.status_code} without JSON")
            return body

        return await self._t.with_retries(once, "platform")

    def _error(self, resp: httpx.Response, *, admin: bool) -> Exception:
        """fal's ``{"error": {"type", "message"}}`` as one of our errors (see the docstring)."""
        text = resp.text if self._key is None else self._key.redact(resp.text)
        body = json_or_none(text)
        error = body.get("error") if isinstance(body, dict) else None
        kind = error.get("type") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        if message is None and isinstance(body, dict):
            message = body.get("detail")  # a gateway's answer rather than the API's
        err = QueueHTTPError(
            resp.status_code,
            detail=message if isinstance(message, str) else (text[:200] or None),
            error_type=kind if isinstance(kind, str) else None,
            url=safe_url(str(resp.request.url)),
            retry_after=_retry_after(resp),
        )
        if resp.status_code == 401:
            return AuthError(f"fal refused the key ({err}); check FAL_KEY")
        if resp.status_code == 403 and admin:
            return AdminKeyRequired(
                f"fal's billing events need an admin key, and this one is not ({err}); create"
                " an admin key in fal's dashboard and set it as FAL_KEY for this command"
            )
        if resp.status_code in (402, 403):
            return AuthError(f"fal refused the request ({err}); check the key and the account")
        return err


def _retry_after(resp: httpx.Response) -> float | None:
    return parse_retry_after(resp.headers.get("retry-after"))


def _chunks(ids: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(ids), MAX_IDS):
        yield ids[i : i + MAX_IDS]


def _params(*, start: When | None, end: When | None, limit: int | None) -> dict[str, str | None]:
    if limit is not None and not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be from 1 to {MAX_LIMIT}")
    return {
        "start": _when(start),
        "end": _when(end),
        "limit": None if limit is None else str(limit),
    }


def _when(value: When | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def _cursor(body: Mapping[str, Any]) -> str | None:
    cursor = body.get("next_cursor")
    return cursor if isinstance(cursor, str) and cursor else None


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time as an aware datetime (UTC when it names no zone); None otherwise."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _list(body: Mapping[str, Any], name: str) -> list[Mapping[str, Any]]:
    items = body.get(name)
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ProtocolError(f"the platform API answered without a list of {name}")
    for i in items:
        if not isinstance(i.get("request_id"), str) or not i["request_id"]:
            raise ProtocolError(f"an item of {name} without a request_id")
    return items


def _items(body: Mapping[str, Any]) -> list[Any]:
    out = []
    for i in _list(body, "items"):
        code = i.get("status_code")
        payload = i.get("json_input")
        out.append(
            RequestItem(
                request_id=i["request_id"],
                endpoint_id=str(i.get("endpoint_id") or ""),
                started_at=parse_time(i.get("started_at")),
                sent_at=parse_time(i.get("sent_at")),
                ended_at=parse_time(i.get("ended_at")),
                status_code=code if isinstance(code, int) and not isinstance(code, bool) else None,
                duration=_number(i.get("duration")),
                json_input=payload if isinstance(payload, dict) else None,
                json_output=i.get("json_output"),
            )
        )
    return out


def _events(body: Mapping[str, Any]) -> list[Any]:
    out = []
    for e in _list(body, "billing_events"):
        cost = _number(e.get("cost_total"))
        if cost is None:
            nano = _number(e.get("cost_estimate_nano_usd"))
            if nano is None:
                raise ProtocolError(f"billing event of {e['request_id']} without a cost")
            cost = nano / 1e9
        endpoint = e.get("endpoint_id")
        out.append(
            BillingEvent(
                request_id=e["request_id"],
                endpoint_id=endpoint if isinstance(endpoint, str) else None,
                timestamp=parse_time(e.get("timestamp")),
                cost_usd=cost,
                output_units=_number(e.get("output_units")),
                unit_price=_number(e.get("unit_price")),
            )
        )
    return out
