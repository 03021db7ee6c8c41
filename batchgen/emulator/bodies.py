"""The JSON bodies the emulator answers with, built from the model's state (docs/fal.md: the
submit, the status, the result). Pure: the caller passes the base URL and the time, so these
are easy to pin in tests.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any

from batchgen.emulator import byok
from batchgen.emulator.faults import FILE_URL
from batchgen.emulator.images import ImageSpec, render
from batchgen.emulator.model import Outcome, Phase, Request, StatusView
from batchgen.emulator.references import Reference, auto_size
from batchgen.planning import gptimage

CONTENT_POLICY_MSG = (
    "The request was rejected because the prompt or an input image was flagged by a content "
    "checker."
)


def request_urls(base: str, req: Request) -> dict[str, str]:
    """fal builds these from owner/app only, never the endpoint's sub-path."""
    root = f"{base}/{req.app}/requests/{req.id}"
    return {"response_url": root, "status_url": f"{root}/status", "cancel_url": f"{root}/cancel"}


def submit_body(base: str, req: Request, position: int) -> dict[str, Any]:
    return {
        "status": "IN_QUEUE",
        "request_id": req.id,
        "gateway_request_id": req.id,
        **request_urls(base, req),
        "queue_position": position,
    }


def _log(message: str, at: datetime, level: str = "INFO") -> dict[str, Any]:
    return {"message": message, "level": level, "source": "USER", "timestamp": at.isoformat()}


def logs_for(req: Request, wall: Callable[[float], datetime]) -> list[dict[str, Any]]:
    """What the emulated app printed so far: a line when it starts and one when it ends."""
    out: list[dict[str, Any]] = []
    if req.started_at is not None and req.outcome is not Outcome.INVALID:
        spec = gptimage.with_defaults(req.endpoint, req.input)
        out.append(
            _log(
                f"Generating {spec.get('num_images', 1)} image(s), "
                f"size {spec.get('image_size')}, quality {spec.get('quality')}",
                wall(req.started_at),
            )
        )
    if req.phase is Phase.DONE and req.completed_at is not None:
        err = req.error
        if err is None:
            out.append(_log("Done", wall(req.completed_at)))
        else:
            out.append(_log(f"{err[0]} ({err[1]})", wall(req.completed_at), level="ERROR"))
    return out


def status_body(
    base: str, view: StatusView, *, logs: bool, wall: Callable[[float], datetime]
) -> dict[str, Any]:
    """fal-client's parser needs ``queue_position`` for IN_QUEUE and the ``logs`` key (null or
    a list) for IN_PROGRESS and COMPLETED; failures are COMPLETED with error/error_type."""
    req = view.request
    body: dict[str, Any] = {"status": view.phase.value, "request_id": req.id}
    body.update(request_urls(base, req))
    if view.phase is Phase.QUEUED:
        body["queue_position"] = view.position
    body["logs"] = logs_for(req, wall) if logs else None
    if view.phase is Phase.DONE:
        ran = (req.completed_at or 0.0) - (req.started_at or req.completed_at or 0.0)
        body["metrics"] = {} if req.started_at is None else {"inference_time": round(ran, 4)}
        err = req.error
        if err is not None:
            body["error"], body["error_type"] = err
    return body


def image_specs(req: Request) -> list[ImageSpec]:
    spec = gptimage.with_defaults(req.endpoint, req.input)
    ref: Reference | None = req.reference
    auto = auto_size(ref.width, ref.height) if ref is not None else (1024, 1024)
    w, h = gptimage.resolved_dimensions(spec.get("image_size")) or auto
    fmt = str(spec.get("output_format", "png"))
    n = int(spec.get("num_images", 1))
    prompt = str(spec.get("prompt", ""))
    thumb = ref.thumbnail if ref is not None else None
    return [ImageSpec(prompt, w, h, fmt, i, thumb, req.blank) for i in range(n)]


def output_body(base: str, req: Request, media: MutableMapping[str, ImageSpec]) -> dict[str, Any]:
    """The model's output; registers each image so its URL can be served later."""
    sync = req.input.get("sync_mode") is True
    images = []
    for spec in image_specs(req):
        data = render(spec)
        name = f"{req.id[:8]}_{spec.index}.{spec.extension}"
        if req.file_url:
            url = FILE_URL
        elif sync:
            url = f"data:{spec.content_type};base64,{base64.b64encode(data).decode()}"
        else:
            media_id = f"{req.id}-{spec.index}"
            media[media_id] = spec
            url = f"{base}/media/{media_id}/{name}"
        images.append(
            {
                "url": url,
                "content_type": spec.content_type,
                "file_name": req.evil_name or name,
                "file_size": len(data),
                "width": spec.width,
                "height": spec.height,
            }
        )
    out: dict[str, Any] = {"images": images}
    usage = byok.usage(req.endpoint, req.input)
    if usage is not None:
        out["usage"] = usage
    return out


def result_parts(
    base: str, req: Request, media: MutableMapping[str, ImageSpec]
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(HTTP status, body, extra headers) of a completed request's result."""
    headers = {"x-fal-request-id": req.id}
    if req.outcome is Outcome.OK:
        if req.answered_by is not None:
            # Rerouted (the fallback fault). fal documents no header for it: this name is
            # batchgen's guess (fal/headers.py), kept in one place on each side.
            headers["x-fal-fallback-endpoint"] = req.answered_by
        return 200, output_body(base, req, media), headers
    if req.outcome is Outcome.INVALID:
        detail = [
            {"loc": ["body", *p.field.split(".")], "msg": p.message, "type": "value_error"}
            for p in req.problems
        ]
        detail = byok.echo_input(detail, req.endpoint, req.input)
        return 422, {"detail": detail}, {**headers, "x-fal-billable-units": "0"}
    if req.outcome is Outcome.CONTENT_POLICY:
        detail = [
            {
                "loc": ["body", "prompt"],
                "msg": CONTENT_POLICY_MSG,
                "type": "content_policy_violation",
            }
        ]
        if req.retryable_refusal:
            headers["x-fal-retryable"] = "true"
        return 422, {"detail": detail}, headers
    err = req.error
    assert err is not None
    headers["x-fal-error-type"] = err[1]
    if req.outcome is Outcome.START_TIMEOUT:
        # The user's own timeout: fal-client must not retry this one (docs/fal.md, What the
        # official client retries).
        headers["x-fal-request-timeout-type"] = "user"
        return 504, {"detail": err[0], "error_type": err[1]}, headers
    return status_code(req), {"detail": err[0], "error_type": err[1]}, headers


def status_code(req: Request) -> int:
    """The HTTP status of a completed request's result (what ``result_parts`` answers)."""
    if req.outcome is Outcome.OK:
        return 200
    if req.outcome in (Outcome.INVALID, Outcome.CONTENT_POLICY):
        return 422
    if req.outcome is Outcome.START_TIMEOUT:
        return 504
    return req.runner_error[0] if req.runner_error else 499


def webhook_body(status: int, body: dict[str, Any], req: Request) -> dict[str, Any]:
    """fal's webhook payload: OK with the output, or ERROR with the error body."""
    ok = status == 200
    return {
        "request_id": req.id,
        "gateway_request_id": req.id,
        "status": "OK" if ok else "ERROR",
        "payload": body,
        "error": None if ok else f"Invalid status code: {status}",
    }


def wall_clock(clock_zero: float, wall_zero: datetime) -> Callable[[float], datetime]:
    """Map model (monotonic) time to aware UTC wall time, for log timestamps."""
    from datetime import timedelta

    def at(t: float) -> datetime:
        return wall_zero + timedelta(seconds=t - clock_zero)

    return at


def now_utc() -> datetime:
    return datetime.now(UTC)
