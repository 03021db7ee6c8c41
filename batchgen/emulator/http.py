"""HTTP helpers shared by the emulator's routes: auth, the base URL of handed-out links, and
the deliberately broken responses that fault injection needs (a dropped connection, a body
shorter than its Content-Length, a trickle).

An ASGI app cannot close its connection, but it can fail: after ``http.response.start`` (and
perhaps part of the body), it raises :class:`ConnectionDropped`. Over a socket, uvicorn then
closes the connection without answering further (``server.py`` serves with ``http="h11"`` and
keeps that deliberate exception out of the log); the client sees a reply cut short, the
transport-level failure a reset gives it. In-process (``httpx.ASGITransport``) there is no
socket: the exception, an ``httpx.RemoteProtocolError``, reaches the client unchanged. A
truncated body in-process is simply short (it ends before its Content-Length), which is what
a client reading it sees over a socket too; ``serve_asgi`` marks the scopes it serves with the
``batchgen.drop`` extension so the app knows which way applies.
"""

from __future__ import annotations

from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from batchgen.emulator.config import EmulatorConfig, Sleep
from batchgen.emulator.model import QueueModel

# In the scope of every request ``serve_asgi`` serves: raising ConnectionDropped after the
# response started closes the connection (in-process there is no such promise).
DROP_EXTENSION = "batchgen.drop"
NGINX_503 = (
    "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
    "<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n"
    "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


def emulator_of(request: Request) -> QueueModel:
    model: QueueModel = request.app.state.emulator
    return model


def config_of(request: Request) -> EmulatorConfig:
    config: EmulatorConfig = request.app.state.config
    return config


def base_url(request: Request) -> str:
    """Where handed-out URLs point: ``public_url`` if set, else the host the client used."""
    public = config_of(request).public_url
    return public if public else str(request.base_url).rstrip("/")


def authorized(request: Request) -> bool:
    """fal accepts ``Key <key>``, ``Key <id>:<secret>`` and ``Bearer <jwt>``. The value is
    only checked for shape, never stored or logged."""
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    return scheme in ("Key", "Bearer") and bool(credential.strip())


def unauthorized(request: Request) -> Response:
    emulator_of(request).counters["unauthorized"] += 1
    return JSONResponse(
        {"detail": "Missing or malformed Authorization header; send 'Key <your fal key>'"},
        status_code=401,
    )


def nginx_503() -> Response:
    """An ingress error: HTML mentioning nginx and no x-fal-request-id, which fal-client retries."""
    return Response(NGINX_503, status_code=503, media_type="text/html")


class ConnectionDropped(httpx.RemoteProtocolError):
    """Raised by the app to hang up without a (complete) answer; see the module docstring."""


def over_socket(scope: Scope) -> bool:
    """Whether this request came over a socket served by ``serve_asgi``, where raising after
    the response started closes the connection."""
    extensions: dict[str, Any] = scope.get("extensions") or {}
    return DROP_EXTENSION in extensions


class DropConnection(Response):
    """Close the connection without answering: the job may exist, its id never reaches the
    client."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Over a socket the status line goes out (an app cannot fail before it without
        # uvicorn answering 500 instead); no header names the request and no body byte
        # follows, so the client still has nothing it can read.
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise ConnectionDropped("Server disconnected without sending a response.")


class TruncatedResponse(Response):
    """Promise ``len(body)`` bytes in Content-Length, send only ``keep`` of them, then close."""

    def __init__(self, body: bytes, keep: int, media_type: str) -> None:
        super().__init__(body, media_type=media_type)
        self.keep = keep

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        socket = over_socket(scope)
        await send(
            {"type": "http.response.body", "body": self.body[: self.keep], "more_body": socket}
        )
        if socket:
            raise ConnectionDropped(f"truncated after {self.keep} of {len(self.body)} bytes")


class TrickleResponse(Response):
    """The whole body, but in small pieces spread over ``seconds`` (a slow CDN)."""

    PIECES = 20

    def __init__(self, body: bytes, media_type: str, seconds: float, sleep: Sleep) -> None:
        super().__init__(body, media_type=media_type)
        self.seconds = seconds
        self.sleep = sleep

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        body = bytes(self.body)
        step = max(1, -(-len(body) // self.PIECES))
        for i in range(0, len(body), step):
            await self.sleep(self.seconds / self.PIECES)
            more = i + step < len(body)
            await send(
                {"type": "http.response.body", "body": body[i : i + step], "more_body": more}
            )
        if not body:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
