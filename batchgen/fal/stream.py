"""The SSE status stream of one request, under an inactivity watchdog.

``stream_statuses`` yields statuses until ``Completed`` (the last one yielded).
``inactivity_timeout`` bounds the silence between any two bytes; fal's keep-alive comments
(every 15 s) count as activity. Any failure other than a refused key raises
``StatusStreamError``: the caller falls back to polling, whose answer is authoritative.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import httpx
from httpx_sse import SSEError, aconnect_sse

from batchgen.errors import ProtocolError, StatusStreamError
from batchgen.fal.statuses import Completed, Status, parse_status
from batchgen.fal.transport import (
    AUTH_STATUSES,
    Transport,
    auth_error,
    exc_line,
    http_error,
    json_or_none,
)


def logs_param(logs: bool) -> dict[str, str]:
    # fal's docs and fal-js send 1/0 (fal-client sends true/false; fal accepts both).
    return {"logs": "1" if logs else "0"}


async def stream_statuses(
    t: Transport, status_url: str, *, logs: bool, inactivity_timeout: float
) -> AsyncGenerator[Status, None]:
    """An async generator: close it (``contextlib.aclosing``) to end the HTTP stream at once."""
    watch = _Watch(asyncio.get_running_loop(), inactivity_timeout)
    phase = "open"  # which silence timed out: the answer's headers, or the events
    async with contextlib.AsyncExitStack() as stack:
        try:
            async with watch.guard():
                source = await stack.enter_async_context(
                    aconnect_sse(
                        t.http,
                        "GET",
                        f"{status_url}/stream",
                        params=logs_param(logs),
                        headers=t.headers(None),
                        # The watchdog is the inactivity timeout; no read timeout under it.
                        timeout=httpx.Timeout(**{**t.timeout.as_dict(), "read": None}),
                    )
                )
                resp = source.response
                if resp.status_code >= 300:
                    await resp.aread()
                    err = http_error(resp, t.redact)
                    if err.status in AUTH_STATUSES:
                        raise auth_error(err) from err
                    raise StatusStreamError(f"status stream refused: {err}") from err
                resp.stream = _Activity(resp.stream, watch.touch)
            phase = "events"
            events = source.aiter_sse()
            while True:
                async with watch.guard():
                    sse = await anext(events)
                status = parse_status(json_or_none(sse.data))
                if isinstance(status, Completed):
                    await _finish(events)
                    yield status
                    return
                yield status
        except StopAsyncIteration:
            raise StatusStreamError("status stream closed before COMPLETED") from None
        except TimeoutError:
            what = "no answer to the stream request" if phase == "open" else "stream silent"
            raise StatusStreamError(f"status {what} for {inactivity_timeout:g} s") from None
        except (httpx.TransportError, SSEError, ProtocolError) as exc:
            raise StatusStreamError(f"status stream broke: {exc_line(exc)}") from exc


# How long to wait for the stream's end after COMPLETED. fal ends it right after that event,
# so its last bytes are usually read already; a server that holds the stream open costs a
# job this much, once, and its connection.
END_WAIT_S = 0.1


async def _finish(events: AsyncIterator[object]) -> None:
    """Read the stream to its end after COMPLETED, so its connection goes back to the pool.

    A response closed before its end cannot be reused: the connection is dropped, and the
    next request opens another: a TCP (against fal, TLS) handshake per job. 200 jobs, 40 at
    once, made 217 connections that way, and make 80 now. Best effort: on silence or an
    error the stream is closed as before, with the status kept."""
    try:
        async with asyncio.timeout(END_WAIT_S):
            async for _ in events:  # nothing is due after COMPLETED; skipped if sent
                pass
    except (TimeoutError, httpx.TransportError, SSEError):
        pass


class _Watch:
    """The stream's inactivity deadline: each ``guard()`` arms it, each byte pushes it back.

    Armed only while we wait on the stream, never across a ``yield``: the consumer's own
    awaits between two statuses must not be cancelled by our timer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        self._loop = loop
        self._seconds = seconds
        self._current: asyncio.Timeout | None = None

    @contextlib.asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        async with asyncio.timeout(self._seconds) as t:
            self._current = t
            try:
                yield
            finally:
                self._current = None

    def touch(self) -> None:
        if self._current is not None:
            self._current.reschedule(self._loop.time() + self._seconds)


class _Activity(httpx.AsyncByteStream):
    """Passes the response's bytes through and reports each chunk, keep-alive comments
    included (httpx-sse drops comments before we could see them)."""

    def __init__(
        self, inner: httpx.SyncByteStream | httpx.AsyncByteStream, touch: Callable[[], None]
    ) -> None:
        if not isinstance(inner, httpx.AsyncByteStream):
            raise TypeError("an async client is required")
        self._inner = inner
        self._touch = touch

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._touch()
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()
