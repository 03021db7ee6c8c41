"""The run's sockets on asyncio's own transports (running/netio.py), over real loopback sockets.

Each server here is a few lines of asyncio that answer exactly as a test needs: slowly, not at
all, with a 408 on an idle connection, over TLS with a certificate made for the test. What is
asserted is what the run depends on: every byte arrives, timeouts and refusals surface as
httpx's own errors (which the retry rules classify), a connection the server closed is never
reused, and a certificate that does not verify is refused.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from test_tls_support import self_signed

from batchgen.running.netio import CLOSE_WAIT_S, HIGH_WATER, Stream
from batchgen.running.pools import ShardedTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
LIMITS = httpx.Limits(max_connections=8, max_keepalive_connections=8)


@asynccontextmanager
async def server(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """A loopback server running ``handler`` per connection; its base URL."""
    conns: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(writer)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        srv.close()
        for w in conns:
            w.transport.abort()  # a connection whose reading is paused would never close
        await srv.wait_closed()
        await asyncio.sleep(0)  # the aborted sockets close on the next turn of the loop


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's head (these tests send no bodies); b"" at end of input."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return b""


def answer(body: bytes, *, close: bool = False) -> bytes:
    head = f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\n"
    return (head + ("connection: close\r\n" if close else "") + "\r\n").encode() + body


def client(**kw: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=ShardedTransport(1, LIMITS), **kw)  # type: ignore[arg-type]


async def test_requests_go_over_asyncio_streams_and_keep_their_connection() -> None:
    """If httpx ever stops using the pool netio gives it, this is where it shows."""
    conns = 0

    async def keepalive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal conns
        conns += 1
        while await read_request(reader):
            writer.write(answer(b"hello"))
            await writer.drain()

    async with server(keepalive) as url, client() as c:
        for _ in range(5):
            r = await c.get(url)
            assert r.content == b"hello"
            assert isinstance(r.extensions["network_stream"], Stream)
    assert conns == 1


async def test_a_large_body_arrives_whole_when_read_slowly() -> None:
    """More than the buffer's high-water mark, read in small steps with pauses: reading the
    socket pauses and resumes, and no byte is lost or reordered."""
    body = bytes(range(256)) * (HIGH_WATER * 3 // 256 + 7)

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(body))
        await writer.drain()

    got = bytearray()
    async with server(big) as url, client() as c, c.stream("GET", url) as r:
        async for chunk in r.aiter_raw(chunk_size=16 * 1024):
            got += chunk
            await asyncio.sleep(0)
    assert bytes(got) == body


async def test_a_large_upload_waits_for_a_slow_reader_and_arrives_whole() -> None:
    """An edit's reference images are uploaded as request bodies of megabytes: the transport
    pushes back while the server reads slowly, and the write waits instead of failing."""
    body = bytes(range(256)) * (5 * 1024 * 1024 // 256)  # 5 MB

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_request(reader)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        got = bytearray()
        while len(got) < length:
            got += await reader.read(64 * 1024)
            await asyncio.sleep(0.001)
        digest = str(hash(bytes(got))).encode()
        writer.write(answer(digest))
        await writer.drain()

    async with server(slow) as url, client() as c:
        r = await c.post(url, content=body)
    assert r.content == str(hash(body)).encode()

    # A server that reads nothing: the write waits on the full transport (its memory stays
    # bounded) until the write timeout, rather than queueing all of it and then waiting for
    # an answer; and the connection is dropped at once, not closed gracefully after a wait
    # (CLOSE_WAIT_S) for a peer that will never read the rest.
    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    async with server(deaf) as url, client(timeout=httpx.Timeout(5.0, write=0.3)) as c:
        with pytest.raises(httpx.WriteTimeout):
            async with asyncio.timeout(CLOSE_WAIT_S - 0.5):
                await c.post(url, content=body)


async def test_an_idle_connection_the_server_closed_or_wrote_to_is_not_reused() -> None:
    """A server may close an idle keep-alive connection, some after writing a 408: the next
    request must go over a new connection and get its own answer, not the stale 408."""
    conns = 0

    async def one_then_408(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal conns
        conns += 1
        await read_request(reader)
        writer.write(answer(b"first"))
        await writer.drain()
        await asyncio.sleep(0.05)
        if conns == 1:  # a 408 on the idle connection, which stays open a while
            writer.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(1)
        # then close (the server's finally): the second connection right after its answer

    async with server(one_then_408) as url, client() as c:
        assert (await c.get(url)).content == b"first"
        await asyncio.sleep(0.3)  # the 408 and the close reach the idle connection
        r = await c.get(url)
        assert (r.status_code, r.content) == (200, b"first")
        await asyncio.sleep(0.3)
        assert (await c.get(url)).content == b"first"
    assert conns == 3


async def test_silence_is_a_read_timeout_and_a_closed_port_a_connect_error() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(10)

    async with server(silent) as url, client(timeout=httpx.Timeout(5.0, read=0.2)) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.get(url)
    async with server(silent) as url:
        pass  # now nothing listens on that port
    async with client() as c:
        with pytest.raises(httpx.ConnectError):
            await c.get(url)


async def test_a_connection_cut_mid_body_is_an_error_not_a_short_answer() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"x" * 10)
        await writer.drain()

    async with server(cut) as url, client() as c:
        with pytest.raises(httpx.RemoteProtocolError):
            await c.get(url)


async def test_a_request_cancelled_while_waiting_leaves_no_open_socket() -> None:
    """Cancelled (Ctrl-C twice, a deadline) while the server is silent: the socket is closed
    (this suite turns an unclosed socket's ResourceWarning into an error)."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(10)

    async with server(silent) as url, client() as c:
        task = asyncio.create_task(c.get(url))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_tls_verifies_the_server_and_refuses_a_certificate_it_cannot(
    tmp_path: Path,
) -> None:
    srv_ctx, trusting = self_signed(tmp_path)

    async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(3):
            await read_request(reader)
            writer.write(answer(b"secret hello"))
            await writer.drain()
        writer.transport.pause_reading()  # reads nothing more: a close_notify goes unanswered
        await asyncio.sleep(10)

    async with server(hello, tls=srv_ctx) as url:
        transport = ShardedTransport(1, LIMITS, lambda: trusting)
        async with httpx.AsyncClient(transport=transport) as c:
            for _ in range(3):
                r = await c.get(url)
                assert r.content == b"secret hello"
                assert r.extensions["network_stream"].get_extra_info("ssl_object") is not None
            # A server that stops reading (so it never answers a TLS close_notify) does not
            # hold the client's close: a pool closes its connections one after another.
            async with asyncio.timeout(CLOSE_WAIT_S - 0.5):
                await transport.aclose()
        # The default context (certifi's CAs) does not know this certificate: refused.
        async with client() as c:
            with pytest.raises(httpx.ConnectError):
                await c.get(url)


def test_it_also_runs_on_uvloop_for_a_library_caller() -> None:
    """batchgen's API may be called inside someone else's loop; uvloop's create_connection
    takes fewer arguments than asyncio's."""
    uvloop = pytest.importorskip("uvloop")

    async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader):
            writer.write(answer(b"hello"))
            await writer.drain()

    async def main() -> bytes:
        async with server(hello) as url, client() as c:
            return (await c.get(url)).content

    assert uvloop.run(main()) == b"hello"
