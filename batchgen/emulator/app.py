"""The emulator's Starlette app: fal's queue routes (docs/emulator.md, Routes), the storage routes,
the media it hands out, fal's platform API (``platform``) and ``GET /_emulator/stats``.

Every handler reads the injected clock once and asks the model what is true at that instant.
Counters record what the server saw, so tests can assert on traffic (polls, duplicate submits).
The Authorization value is checked for shape only and never logged.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from batchgen.emulator import bodies
from batchgen.emulator.config import EmulatorConfig
from batchgen.emulator.controls import count, read_controls
from batchgen.emulator.credit import Credit, locked, top_up
from batchgen.emulator.http import (
    DropConnection,
    TrickleResponse,
    TruncatedResponse,
    authorized,
    base_url,
    config_of,
    emulator_of,
    nginx_503,
    unauthorized,
)
from batchgen.emulator.images import ImageSpec, render_async
from batchgen.emulator.model import Outcome, Phase, QueueModel
from batchgen.emulator.platform import platform_routes
from batchgen.emulator.references import check_references
from batchgen.emulator.storage import FileStore, storage_routes
from batchgen.emulator.webhooks import WebhookDispatcher
from batchgen.planning import gptimage

NAMESPACES = ("workflows", "comfy")
LOGS_TRUE = ("true", "1")


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, headers=headers)


def _not_found(what: str) -> Response:
    return _json({"detail": what}, 404)


def _split(path: str) -> tuple[str, list[str]] | None:
    """``[ns/]owner/alias[/rest…]`` → ("[ns/]owner/alias", rest); None if too short."""
    parts = [p for p in path.split("/") if p]
    ns = parts[:1] if parts and parts[0] in NAMESPACES else []
    parts = parts[len(ns) :]
    if len(parts) < 2:
        return None
    return "/".join([*ns, *parts[:2]]), parts[2:]


async def stats(request: Request) -> Response:
    model = emulator_of(request)
    config = config_of(request)
    model.advance(config.clock())
    # The header is how a client tells an --endpoint rehearsal from a real server.
    return _json(model.stats(), headers={"x-batchgen-emulator": "1"} if config.announce else None)


async def jwks(request: Request) -> Response:
    """The public key its webhook deliveries are signed with (fal's is on its rest host)."""
    return _json(request.app.state.webhooks.signer.jwks())


async def queue_route(request: Request) -> Response:
    split = _split(request.path_params["path"])
    if split is None:
        return _not_found(f"Path /{request.path_params['path']} not found")
    app_id, rest = split
    if request.method == "POST":
        return await submit(request, app_id, rest)
    if len(rest) >= 2 and rest[0] == "requests":
        rid, tail = rest[1], rest[2:]
        if request.method == "GET" and tail == ["status"]:
            return await status(request, rid)
        if request.method == "GET" and tail == ["status", "stream"]:
            return await status_stream(request, rid)
        if request.method == "GET" and not tail:
            return await result(request, rid)
        if request.method == "PUT" and tail == ["cancel"]:
            return await cancel(request, rid)
    return _not_found(f"Path /{request.path_params['path']} not found")


async def submit(request: Request, app_id: str, rest: list[str]) -> Response:
    model, config = emulator_of(request), config_of(request)
    model.counters["submit_attempts"] += 1
    if not authorized(request):
        return unauthorized(request)
    if not request.app.state.credit.pay():  # a locked account: nothing is created
        model.counters["submits_refused_locked"] += 1
        return locked()
    try:
        body: Any = json.loads(await request.body() or b"{}")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        detail = [{"loc": ["body"], "msg": "body must be a JSON object", "type": "json_invalid"}]
        return _json({"detail": detail}, 422)
    # Ingress refusals happen before the queue sees anything: no job is created.
    if model.dice.roll("submit429"):
        model.counters["submits_refused_429"] += 1
        return _json({"detail": "Too many requests"}, 429)
    if model.dice.roll("submit503"):
        model.counters["submits_refused_503"] += 1
        return nginx_503()
    now = config.clock()
    model.advance(now)  # the queue length below must be the one at this instant
    max_len = request.query_params.get("fal_max_queue_length")
    if max_len is not None and max_len.isdigit() and model.queue_length() >= int(max_len):
        model.counters["submits_refused_queue_length"] += 1
        return _json({"detail": "Queue is full"}, 429)
    endpoint = "/".join([app_id, *rest])
    webhook = request.query_params.get("fal_webhook")
    base = base_url(request)
    problems: list[gptimage.InputProblem] = []
    reference = None
    if endpoint == gptimage.EDIT:
        # Decoding a reference costs milliseconds per megapixel: not on the event loop.
        problems, reference = await run_in_threadpool(
            check_references,
            body,
            base=base,
            files=request.app.state.files,
            media=request.app.state.media,
        )
        model.counters["references_refused"] += len(problems)
    ctl = read_controls(request.headers)  # priority, start timeout, media expiry, fallbacks
    count(request.headers, model.control_headers)
    req = model.submit(
        app_id,
        endpoint,
        body,
        now,
        webhook=webhook,
        start_timeout=ctl.start_timeout,
        input_problems=problems,
        reference=reference,
        priority=ctl.priority,
        media_expiry=ctl.media_expiry,
        fallbacks=ctl.fallbacks,
    )
    req.store_io = ctl.store_io
    if webhook:
        request.app.state.webhooks.watch(req, base)
    # The job now exists (and will be billed); dropping here is what makes naive clients pay
    # twice when they retry the POST.
    if model.dice.roll("submitdrop"):
        model.counters["submits_dropped"] += 1
        return DropConnection()
    view = model.view(req.id, now)
    position = view.position if view is not None and view.position is not None else 0
    # X-Batchgen-Emulator: its images are placeholders, and a client must never count them as
    # a real dataset (fal itself never sends it).
    headers = {"x-fal-request-id": req.id}
    if config.announce:
        headers["x-batchgen-emulator"] = "1"
    return _json(bodies.submit_body(base, req, position), headers=headers)


async def status(request: Request, rid: str) -> Response:
    model, config = emulator_of(request), config_of(request)
    model.counters["status_polls"] += 1
    if not authorized(request):
        return unauthorized(request)
    if model.dice.roll("status500"):
        model.counters["status_faults"] += 1
        return _json({"detail": "Internal server error"}, 500, {"x-fal-request-id": rid})
    if model.dice.roll("status503"):
        model.counters["status_faults"] += 1
        return nginx_503()
    view = model.view(rid, config.clock())
    if view is None:
        return _not_found(f"Request {rid} not found")
    logs = request.query_params.get("logs", "false").lower() in LOGS_TRUE
    body = bodies.status_body(base_url(request), view, logs=logs, wall=request.app.state.wall)
    return _json(body, 200 if view.phase is Phase.DONE else 202)


async def status_stream(request: Request, rid: str) -> Response:
    model, config = emulator_of(request), config_of(request)
    model.counters["stream_connections"] += 1
    if not authorized(request):
        return unauthorized(request)
    if model.view(rid, config.clock()) is None:
        return _not_found(f"Request {rid} not found")
    logs = request.query_params.get("logs", "0").lower() in LOGS_TRUE
    base, wall = base_url(request), request.app.state.wall

    async def events() -> AsyncIterator[str]:
        last: dict[str, Any] | None = None
        last_sent = config.clock()
        while True:
            now = config.clock()
            view = model.view(rid, now)
            if view is None:
                return  # expired while streaming: nothing more will ever change
            body = bodies.status_body(base, view, logs=logs, wall=wall)
            if body != last:
                model.counters["stream_events"] += 1
                yield f"data: {json.dumps(body, separators=(',', ':'))}\n\n"
                last, last_sent = body, now
            elif now - last_sent >= config.keepalive_s:
                yield ": keepalive\n\n"
                last_sent = now
            if view.phase is Phase.DONE:
                return
            # Nothing changes before the next completion (a start or a position shift), but
            # keep-alives must flow meanwhile.
            nxt = model.next_event_at()
            wait = config.keepalive_s - (now - last_sent)
            if nxt is not None:
                wait = min(wait, nxt - now)
            await config.sleep(max(wait, 0.0))

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-fal-request-id": rid},
    )


async def result(request: Request, rid: str) -> Response:
    model, config = emulator_of(request), config_of(request)
    model.counters["result_requests"] += 1
    if not authorized(request):
        return unauthorized(request)
    view = model.view(rid, config.clock())
    if view is None:
        if rid in model.expired:
            return _not_found(f"Request {rid} has expired; results are kept for a limited time")
        return _not_found(f"Request {rid} not found")
    if view.phase is not Phase.DONE:
        return _json({"detail": f"Request {rid} is still {view.phase.value}"}, 400)
    if view.request.outcome is Outcome.OK:
        for spec in bodies.image_specs(view.request):
            await render_async(spec)  # warm the cache off the event loop
    code, body, headers = bodies.result_parts(
        base_url(request), view.request, request.app.state.media
    )
    return _json(body, code, headers)


async def cancel(request: Request, rid: str) -> Response:
    model, config = emulator_of(request), config_of(request)
    model.counters["cancel_requests"] += 1
    if not authorized(request):
        return unauthorized(request)
    answer = model.cancel(rid, config.clock())
    code = {"CANCELLATION_REQUESTED": 202, "ALREADY_COMPLETED": 400, "NOT_FOUND": 404}[answer]
    return _json({"status": answer}, code)


async def media(request: Request) -> Response:
    model, config = emulator_of(request), config_of(request)
    model.counters["media_requests"] += 1
    media_id = request.path_params["media_id"]
    spec: ImageSpec | None = request.app.state.media.get(media_id)
    # An image past its X-Fal-Object-Lifecycle-Preference expiry is gone, as from fal's CDN.
    if spec is None or model.media_gone(media_id.rsplit("-", 1)[0], config.clock()):
        return _not_found("File not found")
    data = await render_async(spec)
    if request.method == "HEAD":
        return Response(
            b"", media_type=spec.content_type, headers={"content-length": str(len(data))}
        )
    if model.dice.roll("truncate"):
        model.counters["media_truncated"] += 1
        return TruncatedResponse(data, len(data) // 2, spec.content_type)
    if model.dice.roll("slow_media"):
        model.counters["media_slow"] += 1
        return TrickleResponse(data, spec.content_type, config.slow_media_s, config.sleep)
    return Response(data, media_type=spec.content_type)


def _webhook_payload(app: Starlette) -> Any:
    def build(base: str, req: Any) -> dict[str, Any]:
        code, body, _ = bodies.result_parts(base, req, app.state.media)
        return bodies.webhook_body(code, body, req)

    return build


def create_app(config: EmulatorConfig | None = None) -> Starlette:
    """The emulator as an ASGI app; ``app.state.emulator`` is its ``QueueModel``."""
    config = config or EmulatorConfig()
    model = QueueModel(
        concurrency_limit=config.concurrency_limit,
        time_scale=config.time_scale,
        faults=config.fault_spec,
        seed=config.seed,
        retention_scale=config.retention_scale,
        result_ttl=config.result_ttl_s,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await app.state.webhooks.aclose()

    routes = [
        Route("/_emulator/stats", stats, methods=["GET"]),
        Route("/_emulator/credit", top_up, methods=["POST"]),
        Route("/.well-known/jwks.json", jwks, methods=["GET"]),
        *storage_routes(),
        Route("/media/{media_id}/{name}", media, methods=["GET", "HEAD"]),
        *platform_routes(),
        Route("/{path:path}", queue_route, methods=["GET", "POST", "PUT"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.config = config
    app.state.emulator = model
    app.state.files = FileStore()
    app.state.media = {}
    app.state.credit = Credit(config.credit)
    app.state.wall = bodies.wall_clock(config.clock(), bodies.now_utc())
    app.state.webhooks = WebhookDispatcher(model, config, _webhook_payload(app))
    return app
