"""Serve the emulator over a real loopback socket with uvicorn, inside the caller's event loop.

``serve()`` binds the socket itself (so ``port=0`` picks a free port and the URL is known
before the first request), runs uvicorn in a task, and leaves the process's signal handlers
alone: Ctrl-C belongs to whoever called us (the CLI, or ``batchgen run --emulate``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Generator

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from batchgen.emulator.app import create_app
from batchgen.emulator.config import EmulatorConfig
from batchgen.emulator.http import DROP_EXTENSION, ConnectionDropped
from batchgen.errors import UsageError

SHUTDOWN_GRACE_S = 1


class _QuietServer(uvicorn.Server):
    # uvicorn has no option to leave signals alone: Server.serve always enters
    # capture_signals, which on the main thread replaces the SIGINT/SIGTERM handlers with its
    # own shutdown (and re-raises them when it stops). Putting the caller's back after start
    # would leave a window, and serving from another thread would take the emulator out of
    # the run's event loop. The run's first Ctrl-C must mean "stop submitting, finish what is
    # paid for", not "stop the emulator", so this one method is overridden
    # (tests/emulator/test_emulator_loopback.py checks the handlers stay the caller's).
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class _NotTheDeliberateDrops(logging.Filter):
    """Keep uvicorn's "Exception in ASGI application" out of the log for ConnectionDropped
    (a fault the emulator injected on purpose); every other error is still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ConnectionDropped))


_DROPS_FILTER = _NotTheDeliberateDrops()


def _with_drop_extension(app: ASGIApp) -> ASGIApp:
    """Tell the app that raising after its response started hangs up (``emulator/http.py``)."""

    async def marked(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            extensions = {**(scope.get("extensions") or {}), DROP_EXTENSION: {}}
            scope = {**scope, "extensions": extensions}
        await app(scope, receive, send)

    return marked


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
    # Added once, never removed: several servers may share the process's uvicorn logger.
    logging.getLogger("uvicorn.error").addFilter(_DROPS_FILTER)
    uv_config = uvicorn.Config(
        _with_drop_extension(app),
        # h11, named rather than left to uvicorn's choice: its behaviour on an exception after
        # the response started (close the connection) is what the drops rely on.
        http="h11",
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
