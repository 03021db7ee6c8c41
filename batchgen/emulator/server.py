"""Serve the emulator over a real loopback socket with uvicorn, inside the caller's event loop.

``serve()`` binds the socket itself (so ``port=0`` picks a free port and the URL is known
before the first request), runs uvicorn in a task, and leaves the process's signal handlers
alone: Ctrl-C belongs to whoever called us (the CLI, or ``batchgen run --emulate``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Generator
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from batchgen.emulator.app import create_app
from batchgen.emulator.config import EmulatorConfig
from batchgen.emulator.http import DROP_EXTENSION
from batchgen.errors import UsageError

SHUTDOWN_GRACE_S = 1


class _DroppingH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus a ``batchgen.drop`` extension in each request's scope that
    aborts the TCP connection: the only way an ASGI app can hang up without answering."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        inner = self.app

        async def app(scope: Any, receive: Any, send: Any) -> None:
            scope.setdefault("extensions", {})[DROP_EXTENSION] = self._drop
            await inner(scope, receive, send)

        self.app = app

    def _drop(self) -> None:
        if self.cycle is not None:
            # Mark the cycle first, so uvicorn does not try to answer 500 on a dead socket.
            self.cycle.disconnected = True
        self.transport.abort()


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # leave SIGINT/SIGTERM to the caller


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say they are
    # TCP, and without it every response (headers, then body) waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def url_for(host: str, port: int, *, tls: bool = False) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


@contextlib.asynccontextmanager
async def serve(
    config: EmulatorConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    log_level: str = "warning",
) -> AsyncIterator[str]:
    """Run the emulator on ``host:port`` (0 = a free port); yield its base URL."""
    app = create_app(config or EmulatorConfig())
    async with serve_asgi(app, host, port, log_level=log_level) as url:
        yield url


@contextlib.asynccontextmanager
async def serve_asgi(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    log_level: str = "warning",
    tls: tuple[str, str] | None = None,
) -> AsyncIterator[str]:
    """Serve any ASGI app on loopback in this event loop (tests use it for webhook receivers).
    ``tls``: (certificate, key) files, to serve HTTPS as fal does (``bench/run.py --tls``)."""
    try:
        sock = bind_socket(host, port)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    port = sock.getsockname()[1]
    uv_config = uvicorn.Config(
        app,
        http=_DroppingH11Protocol,
        lifespan="on",
        log_level=log_level,
        # No dictConfig of the host process's logging (we may run inside `batchgen run`);
        # uvicorn's warnings still reach stderr through logging's last-resort handler.
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
    )
    server = _QuietServer(uv_config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # startup failed: raise its error
                raise RuntimeError("server stopped during startup")
            await asyncio.sleep(0.01)
        yield url_for(host, port, tls=tls is not None)
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), SHUTDOWN_GRACE_S + 2)
        except (TimeoutError, asyncio.CancelledError):
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        sock.close()
