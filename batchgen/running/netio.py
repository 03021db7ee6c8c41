"""The run's sockets on asyncio itself: an httpcore network backend without anyio (issue 12).

Why: httpcore talks to sockets through a network backend, and under asyncio its default is
anyio's. Each read and write there pays for a cancel scope with a timer of its own, task
lookups (each a ``getpid`` system call on Python 3.11), an exception-mapping context manager,
a checkpoint on every send and a pause and resume of reading around every receive; and before
reusing an idle connection, the pool asks each one whether it is readable, a ``select`` call
per idle connection per request. For a run that spends most of its own CPU making four small
requests a job, that was a quarter of each request's CPU (``bench/netio.py`` measures both
backends side by side).

Here a connection is an asyncio protocol on the loop's transport:

* received bytes wait in a buffer (reading pauses above ``HIGH_WATER`` until a read drains
  it), a read takes them or waits on one future, under ``asyncio.timeout`` only when httpx
  gave a timeout;
* a write hands the bytes to the transport and waits only while the transport pushes back;
* the protocol keeps reading while the connection is idle, so whether the server closed it
  (or sent anything unasked, such as a 408 before closing) is known from its state: an idle
  connection with either is never reused, and asking costs no system call;
* TLS is ``loop.start_tls`` with the handshake under the connect timeout; a refused
  certificate is a ``ConnectError``;
* errors become the httpcore exceptions that httpx turns into its own (``ConnectError``,
  ``ReadTimeout``, ``WriteError``, ...), as with anyio.

httpcore accepts a network backend (``AsyncConnectionPool(network_backend=...)``, public API
since httpcore 0.17), but httpx's transport does not pass one through (encode/httpx PR #3749
proposes it). :class:`Transport` is therefore httpx's own transport, request conversion and
exception mapping included, with its pool rebuilt on this backend. The one private name it
touches is that pool, ``_pool``; ``tests/test_netio.py`` fails if httpx stops sending
requests through it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from typing import Any, cast

import httpcore
import httpx

HIGH_WATER = 256 * 1024  # buffered bytes at which reading the socket pauses ...
LOW_WATER = 64 * 1024  # ... and below which it resumes
# A host with IPv6 and IPv4 addresses: the next address is tried this long after the first
# (RFC 8305), as anyio does, so a machine whose IPv6 route is broken does not wait out a
# connect timeout on every new connection.
HAPPY_EYEBALLS_S = 0.25
# How long closing a plain connection may wait for asyncio to report it closed (a turn of the
# loop, normally) before the socket is dropped; TLS connections are dropped at once (close()).
CLOSE_WAIT_S = 2.0
# get_extra_info's names, httpcore's -> the transport's.
_EXTRA = {
    "ssl_object": "ssl_object",
    "client_addr": "sockname",
    "server_addr": "peername",
    "socket": "socket",
}


class _Connection(asyncio.Protocol):
    """One socket's state: bytes received and not yet read, its end, write backpressure."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._eof = False
        self._error: OSError | None = None  # why the connection was lost, if it broke
        self._paused = False  # reading paused: the buffer is over HIGH_WATER
        self._pushback = False  # the transport's write buffer is full
        self._data: asyncio.Future[None] | None = None  # a read waiting for bytes
        self._drained: asyncio.Future[None] | None = None  # a write waiting for pushback to end
        self._lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though not always a subclass of asyncio.Transport (uvloop's).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._paused and len(self._buffer) >= HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True
        _wake(self._data)

    def eof_received(self) -> bool:
        self._eof = True
        _wake(self._data)
        return False  # the server is done: close our side too (HTTP/1.1 never half-closes)

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        # Kept as an OSError, which Stream maps to httpcore's ReadError and WriteError.
        if exc is not None:
            self._error = exc if isinstance(exc, OSError) else ConnectionResetError(_message(exc))
        _wake(self._data)
        _wake(self._drained)
        _wake(self._lost)

    def pause_writing(self) -> None:
        self._pushback = True

    def resume_writing(self) -> None:
        self._pushback = False
        _wake(self._drained)

    # -- what the stream needs -------------------------------------------------------------

    async def read(self, max_bytes: int) -> bytes:
        while not self._buffer and not self._eof:
            self._data = asyncio.get_running_loop().create_future()
            try:
                await self._data
            finally:
                self._data = None
        if self._buffer:
            if len(self._buffer) <= max_bytes:
                data = bytes(self._buffer)
                self._buffer.clear()
            else:
                data = bytes(self._buffer[:max_bytes])
                del self._buffer[:max_bytes]
            if self._paused and len(self._buffer) < LOW_WATER and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
            return data
        if self._error is not None:
            raise self._error
        return b""  # the server closed the connection: httpcore's end of stream

    async def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing() or self._lost.done():
            raise self._error or ConnectionResetError("the connection is closed")
        self.transport.write(data)
        while self._pushback and not self._lost.done():
            self._drained = asyncio.get_running_loop().create_future()
            try:
                await self._drained
            finally:
                self._drained = None
        if self._lost.done():
            raise self._error or ConnectionResetError("the connection was lost while sending")

    def idle_but_readable(self) -> bool:
        """Whether the server closed the connection or sent bytes nobody asked for."""
        return self._eof or bool(self._buffer)  # a lost connection has reached its end too

    async def close(self) -> None:
        if self.transport is None:
            return
        tls = self.transport.get_extra_info("ssl_object") is not None
        if tls or self.transport.get_write_buffer_size():
            # Nothing is owed to the peer when httpcore drops a connection: each HTTP/1.1
            # message is framed by its own length, so a TLS close_notify proves nothing. A
            # graceful TLS close waits a round trip for the server's close_notify (or, from a
            # server that never answers, until CLOSE_WAIT_S), one connection after another
            # when a pool closes: seconds at the end of a run. anyio, as httpcore uses it,
            # does not wait either. Bytes still unsent (a write that timed out) are moot too.
            self.transport.abort()
        else:
            self.transport.close()
        try:
            async with asyncio.timeout(CLOSE_WAIT_S):
                await asyncio.shield(self._lost)
        except TimeoutError:
            self.transport.abort()  # the socket is closed now, whatever the server does
        except asyncio.CancelledError:
            self.transport.abort()
            raise


def _wake(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


class Stream(httpcore.AsyncNetworkStream):
    """One connection as httpcore uses it."""

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn

    # The timeout parameters below are httpcore's interface, not a choice (ASYNC109).
    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        try:
            if timeout is None:
                return await self._conn.read(max_bytes)
            async with asyncio.timeout(timeout):
                return await self._conn.read(max_bytes)
        except TimeoutError:
            raise httpcore.ReadTimeout(f"nothing received for {timeout:g} s") from None
        except OSError as exc:
            raise httpcore.ReadError(_message(exc)) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        try:
            if timeout is None:
                await self._conn.write(buffer)
            else:
                async with asyncio.timeout(timeout):
                    await self._conn.write(buffer)
        except TimeoutError:
            raise httpcore.WriteTimeout(f"could not send for {timeout:g} s") from None
        except OSError as exc:
            raise httpcore.WriteError(_message(exc)) from exc

    async def aclose(self) -> None:
        await self._conn.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        conn = self._conn
        assert conn.transport is not None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                tls = await loop.start_tls(
                    conn.transport, conn, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError:
            conn.transport.abort()
            raise httpcore.ConnectTimeout(f"no TLS handshake in {timeout:g} s") from None
        except (OSError, ssl.SSLError) as exc:  # a refused certificate is an SSLError
            conn.transport.abort()
            raise httpcore.ConnectError(_message(exc)) from exc
        if tls is None:  # the connection was lost during the handshake
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        conn.transport = tls
        return self

    def get_extra_info(self, info: str) -> Any:
        transport = self._conn.transport
        if info == "is_readable":
            return self._conn.idle_but_readable()
        name = _EXTRA.get(info)
        return None if transport is None or name is None else transport.get_extra_info(name)


def _message(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _eyeballs(loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    # asyncio's own loops take the delay; others need not (uvloop, which a library caller
    # may run batchgen on, refuses the argument), and connect one address after another.
    return (
        {"happy_eyeballs_delay": HAPPY_EYEBALLS_S}
        if isinstance(loop, asyncio.BaseEventLoop)
        else {}
    )


class Backend(httpcore.AsyncNetworkBackend):
    """Connections for httpcore's pool, on the running asyncio loop."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = None if local_address is None else (local_address, 0)
        try:
            async with asyncio.timeout(timeout):
                transport, conn = await loop.create_connection(
                    _Connection, host, port, local_addr=local, **_eyeballs(loop)
                )
        except TimeoutError:
            message = f"no connection to {host}:{port} in {timeout:g} s"
            raise httpcore.ConnectTimeout(message) from None
        except OSError as exc:  # refused, unreachable, a name that does not resolve
            raise httpcore.ConnectError(_message(exc)) from exc
        sock = transport.get_extra_info("socket")
        if sock is not None:  # asyncio sets TCP_NODELAY; the caller's options go on top
            for option in socket_options or ():
                sock.setsockopt(*option)
        return Stream(conn)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Transport(httpx.AsyncHTTPTransport):
    """httpx's HTTP transport, its connection pool on :class:`Backend`."""

    def __init__(self, *, limits: httpx.Limits, verify: ssl.SSLContext) -> None:
        super().__init__(limits=limits, verify=verify)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=verify,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=Backend(),
        )
