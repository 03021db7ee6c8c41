"""fal's platform API, as the emulator keeps it: the request history and the billing events.

``GET /v1/models/requests/by-endpoint`` lists the requests that ended (a request still queued
or running is not listed, as on fal), newest end first, from ``QueueModel.history``: it
outlives the queue's result lifetime, as fal's history keeps payloads long after the queue
forgets a result. ``GET /v1/models/billing-events`` lists what the model billed
(``emulator/billing.py``), newest first, and needs an admin key.

The wire format follows fal's published OpenAPI v1 (docs/fal.md, The platform API): the query
parameters and their bounds, the item fields, ``next_cursor``/``has_more`` pages and the error
shape ``{"error": {"type", "message"}}``. What fal leaves open is decided here and listed there:
cursors are opaque keyset cursors (a page never repeats or skips an item when newer requests
end meanwhile), the time window filters on ``ended_at`` (billing: ``timestamp``), ``sent_at``
is when the request was submitted and ``started_at`` when a runner took it (its submit time if
none did), and the error ``type`` values.

An admin key is any key whose value starts with ``admin-`` (``Key admin-anything``): the
emulator takes every key, so the prefix is how a test or a rehearsal says which kind it holds.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from batchgen.emulator import bodies
from batchgen.emulator.billing import Charge
from batchgen.emulator.http import base_url, config_of, emulator_of
from batchgen.emulator.images import render_async
from batchgen.emulator.request import Outcome, Request

ADMIN_PREFIX = "admin-"
MAX_IDS = 50  # endpoint ids (history), endpoint and request ids (billing) per call
MAX_LIMIT, DEFAULT_LIMIT = 100, 50
DEFAULT_WINDOW = timedelta(hours=24)  # `start` defaults to 24 h before `end`
MAX_BILLING_WINDOW = timedelta(days=90)
STATUSES: dict[str, Callable[[int], bool]] = {
    "success": lambda code: 200 <= code < 300,
    "user_error": lambda code: 400 <= code < 500,
    "error": lambda code: code >= 500,
}
SORTS = ("ended_at", "duration")


class BadQuery(Exception):
    """A query fal answers 400 for; the message says which parameter and why."""


def fal_error(status: int, kind: str, message: str) -> Response:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)


def _credential(request: HTTPRequest) -> str | None:
    """The key (never stored or logged), or None when the header is missing or malformed."""
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    credential = credential.strip()
    return credential if scheme in ("Key", "Bearer") and credential else None


def _refused(request: HTTPRequest, *, admin: bool) -> Response | None:
    credential = _credential(request)
    if credential is None:
        emulator_of(request).counters["unauthorized"] += 1
        return fal_error(401, "authorization_error", "Missing or invalid API key")
    if admin and not credential.startswith(ADMIN_PREFIX):
        emulator_of(request).counters["platform_forbidden"] += 1
        return fal_error(403, "forbidden", "This endpoint requires an admin API key")
    return None


def _values(request: HTTPRequest, name: str) -> list[str]:
    """A parameter given repeated (``?a=1&a=2``) or comma-separated (``?a=1,2``)."""
    out = []
    for raw in request.query_params.getlist(name):
        out += [v.strip() for v in raw.split(",") if v.strip()]
    return out


def parse_time(text: str, name: str) -> datetime:
    """ISO 8601 or ``YYYY-MM-DD`` (midnight); a time without a zone is UTC."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadQuery(f"{name} must be an ISO 8601 time or YYYY-MM-DD, got {text!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _window(
    request: HTTPRequest, now: datetime, longest: timedelta | None
) -> tuple[datetime, datetime]:
    q = request.query_params
    end = parse_time(q["end"], "end") if q.get("end") else now
    start = parse_time(q["start"], "start") if q.get("start") else end - DEFAULT_WINDOW
    if start >= end:
        raise BadQuery("start must be before end")
    if longest is not None and end - start > longest:
        raise BadQuery(f"the window from start to end may be at most {longest.days} days")
    return start, end


def _limit(request: HTTPRequest) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.strip().isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadQuery(f"limit must be an integer from 1 to {MAX_LIMIT}, got {raw!r}")
    return int(raw)


def _ids(request: HTTPRequest, name: str, *, least: int, most: int) -> list[str]:
    ids = _values(request, name)
    if not least <= len(ids) <= most:
        need = f"from {least} to {most}" if least else f"at most {most}"
        raise BadQuery(f"{name}: give {need} values, got {len(ids)}")
    return ids


# -- cursors: the sort key of the last item given, so the next page starts right after it ----


def _encode_cursor(sort: str, key: float, rid: str) -> str:
    text = json.dumps([sort, key, rid], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode_cursor(raw: str | None, sort: str) -> tuple[float, str] | None:
    if raw is None:
        return None
    try:
        padded = raw + "=" * (-len(raw) % 4)
        got_sort, key, rid = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if got_sort == sort and isinstance(key, int | float) and isinstance(rid, str):
            return float(key), rid
    except (ValueError, TypeError, binascii.Error):
        pass
    raise BadQuery("cursor is not one this listing gave (or was made for another sort_by)")


def _page(
    keyed: Iterable[tuple[float, str, Any]], sort: str, cursor: str | None, limit: int
) -> tuple[list[Any], str | None]:
    """Newest (largest key) first, after ``cursor``: (this page, the next page's cursor)."""
    after = _decode_cursor(cursor, sort)
    ordered = sorted(keyed, key=lambda t: (t[0], t[1]), reverse=True)
    if after is not None:
        ordered = [t for t in ordered if (t[0], t[1]) < after]
    page = ordered[:limit]
    more = len(ordered) > limit
    return [t[2] for t in page], _encode_cursor(sort, page[-1][0], page[-1][1]) if more else None


# -- the request history ------------------------------------------------------------------


def _duration(req: Request) -> float | None:
    if req.started_at is None or req.completed_at is None:
        return None
    return round(req.completed_at - req.started_at, 6)


async def _item(request: HTTPRequest, req: Request, payloads: bool) -> dict[str, Any]:
    wall = request.app.state.wall
    assert req.completed_at is not None
    item: dict[str, Any] = {
        "request_id": req.id,
        "endpoint_id": req.endpoint,
        "started_at": wall(
            req.started_at if req.started_at is not None else req.submitted_at
        ).isoformat(),
        "sent_at": wall(req.submitted_at).isoformat(),
        "ended_at": wall(req.completed_at).isoformat(),
        "status_code": bodies.status_code(req),
        "duration": _duration(req),
    }
    if payloads:
        item["json_input"] = req.input if req.store_io else None
        item["json_output"] = await _output(request, req) if req.store_io else None
    return item


async def _output(request: HTTPRequest, req: Request) -> dict[str, Any]:
    """The result as the result GET gives it (image URLs included), though the queue may have
    forgotten it: the history keeps the payload."""
    if req.outcome is Outcome.OK:
        for spec in bodies.image_specs(req):
            await render_async(spec)  # warm the cache off the event loop
    _, body, _ = bodies.result_parts(base_url(request), req, request.app.state.media)
    return body


async def requests_by_endpoint(request: HTTPRequest) -> Response:
    model, config = emulator_of(request), config_of(request)
    model.counters["history_requests"] += 1
    refused = _refused(request, admin=False)
    if refused is not None:
        return refused
    q = request.query_params
    now = config.clock()
    model.advance(now)
    try:
        endpoints = set(_ids(request, "endpoint_id", least=1, most=MAX_IDS))
        start, end = _window(request, request.app.state.wall(now), None)
        status = q.get("status")
        if status is not None and status not in STATUSES:
            raise BadQuery(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        rid = q.get("request_id")
        if rid is not None:
            try:
                uuid.UUID(rid)
            except ValueError:
                raise BadQuery(f"request_id must be a UUID, got {rid!r}") from None
        expand = _values(request, "expand")
        if any(e != "payloads" for e in expand):
            raise BadQuery("expand may only be payloads")
        sort = q.get("sort_by", "ended_at")
        if sort not in SORTS:
            raise BadQuery(f"sort_by must be one of {', '.join(SORTS)}, got {sort!r}")
        limit = _limit(request)
        wall = request.app.state.wall
        keyed = []
        for req in model.history.values():
            assert req.completed_at is not None
            if req.endpoint not in endpoints or (rid is not None and req.id != rid):
                continue
            if not start <= wall(req.completed_at) < end:
                continue
            if status is not None and not STATUSES[status](bodies.status_code(req)):
                continue
            key = req.completed_at if sort == "ended_at" else (_duration(req) or -1.0)
            keyed.append((key, req.id, req))
        page, cursor = _page(keyed, sort, q.get("cursor"), limit)
    except BadQuery as exc:
        return fal_error(400, "validation_error", str(exc))
    items = [await _item(request, req, bool(expand)) for req in page]
    return JSONResponse({"items": items, "next_cursor": cursor, "has_more": cursor is not None})


# -- billing events -----------------------------------------------------------------------


def event_body(c: Charge, wall: Callable[[float], datetime]) -> dict[str, Any]:
    """One billing event, with the three ``cost_*`` fields fal's newer docs show."""
    total = c.usd
    return {
        "request_id": c.request_id,
        "endpoint_id": c.endpoint_id,
        "timestamp": wall(c.at).isoformat(),
        "output_units": c.units,
        "unit_price": c.unit_price,
        "percent_discount": 0.0,
        "cost_subtotal": total,
        "cost_discount": 0.0,
        "cost_total": total,
        "cost_estimate_nano_usd": c.nano_usd,
    }


async def billing_events(request: HTTPRequest) -> Response:
    model, config = emulator_of(request), config_of(request)
    model.counters["billing_requests"] += 1
    refused = _refused(request, admin=True)
    if refused is not None:
        return refused
    now = config.clock()
    model.advance(now)
    wall = request.app.state.wall
    try:
        start, end = _window(request, wall(now), MAX_BILLING_WINDOW)
        endpoints = set(_ids(request, "endpoint_id", least=0, most=MAX_IDS))
        rids = set(_ids(request, "request_id", least=0, most=MAX_IDS))
        limit = _limit(request)
        keyed = [
            (c.at, c.request_id, c)
            for c in _charges(model.bills.values(), endpoints, rids)
            if start <= wall(c.at) < end
        ]
        page, cursor = _page(keyed, "timestamp", request.query_params.get("cursor"), limit)
    except BadQuery as exc:
        return fal_error(400, "validation_error", str(exc))
    events = [event_body(c, wall) for c in page]
    return JSONResponse(
        {"billing_events": events, "next_cursor": cursor, "has_more": cursor is not None}
    )


def _charges(charges: Iterable[Charge], endpoints: set[str], rids: set[str]) -> Iterable[Charge]:
    for c in charges:
        if (not endpoints or c.endpoint_id in endpoints) and (not rids or c.request_id in rids):
            yield c


def platform_routes() -> Sequence[Route]:
    """Before the queue's catch-all route, which would take ``/v1/...`` for an endpoint id."""
    return [
        Route("/v1/models/requests/by-endpoint", requests_by_endpoint, methods=["GET"]),
        Route("/v1/models/billing-events", billing_events, methods=["GET"]),
    ]
