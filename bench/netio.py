"""CPU per HTTP request on the run's sockets (running/netio.py) vs httpx's default (anyio).

Measures, never asserts. A plain asyncio HTTP/1.1 server runs in its own process on loopback
and answers keep-alive GETs with a small JSON body or a 200 KB one (an image). The client
process makes the same requests through one pool on netio and through httpx's own transport
(one pool on anyio), in alternating rounds, and reports its CPU per request (the server's is not
counted)::

    python bench/netio.py                  # 3 rounds of 2,000 requests of each kind

It also prints what a small GET costs entered at each layer above the sockets: httpx's
client (as a run makes it), httpx's transport alone, and httpcore's pool alone.
    python bench/netio.py --requests 5000 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import ssl
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpcore
import httpx

from batchgen.running.netio import Backend, Transport

SMALL = b'{"status":"COMPLETED","request_id":"0123456789abcdef"}'
BIG = bytes(range(256)) * 800  # 200 KB


def serve(port_out: multiprocessing.connection.Connection) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                body = BIG if b" /big " in head.split(b"\r\n", 1)[0] + b" " else SMALL
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                    b"content-length: %d\r\n\r\n" % len(body) + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        srv = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=512)
        port_out.send(srv.sockets[0].getsockname()[1])
        await srv.serve_forever()

    asyncio.run(main())


async def one_round(url: str, transport: httpx.AsyncBaseTransport, n: int) -> float:
    """CPU µs per request over ``n`` requests, 8 at once (a shard of the run's pool)."""
    sem = asyncio.Semaphore(8)
    async with httpx.AsyncClient(transport=transport) as client:

        async def get() -> None:
            async with sem:
                r = await client.get(url)
                assert r.status_code == 200

        return await timed(get, n)


async def timed(get: Callable[[], Awaitable[None]], n: int) -> float:
    """CPU µs per call of ``get`` over ``n`` calls, after 64 to open connections."""
    await asyncio.gather(*(get() for _ in range(64)))  # connections opened, code warm
    cpu = time.process_time()
    await asyncio.gather(*(get() for _ in range(n)))
    return (time.process_time() - cpu) / n * 1e6


async def layers_round(url: str, limits: httpx.Limits, n: int) -> dict[str, float]:
    """CPU µs per small GET on netio, entering at each layer: httpx's client (as a run
    does), httpx's transport (no client: no request building from defaults, cookies, auth
    or redirect hooks), and httpcore's pool alone (no httpx at all)."""
    plain = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # unused: plain http
    sem = asyncio.Semaphore(8)
    out = {"client": await one_round(url, Transport(limits=limits, verify=plain), n)}
    transport = Transport(limits=limits, verify=plain)

    async def via_transport() -> None:
        async with sem:
            r = await transport.handle_async_request(httpx.Request("GET", url))
            await r.aread()
            assert r.status_code == 200

    out["transport"] = await timed(via_transport, n)
    await transport.aclose()
    pool = httpcore.AsyncConnectionPool(
        max_connections=8, max_keepalive_connections=8, network_backend=Backend()
    )

    async def via_httpcore() -> None:
        async with sem:
            r = await pool.request("GET", url)
            assert r.status == 200

    out["httpcore"] = await timed(via_httpcore, n)
    await pool.aclose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.get_context("spawn").Process(target=serve, args=(child,), daemon=True)
    proc.start()
    port = parent.recv()
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    print(
        f"bench/netio.py: client CPU µs per request, {a.requests} requests x {a.rounds} "
        "rounds, 8 at once over 8 connections, keep-alive, loopback; median (all rounds)"
    )
    try:
        for kind in ("small", "big"):
            url = f"http://127.0.0.1:{port}/{kind}"
            got: dict[str, list[float]] = {"netio": [], "anyio": []}
            for _ in range(a.rounds):
                plain = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # unused: plain http
                ours = Transport(limits=limits, verify=plain)
                got["netio"].append(asyncio.run(one_round(url, ours, a.requests)))
                theirs = httpx.AsyncHTTPTransport(limits=limits)
                got["anyio"].append(asyncio.run(one_round(url, theirs, a.requests)))
            med = {k: statistics.median(v) for k, v in got.items()}
            body = len(SMALL) if kind == "small" else len(BIG)
            print(
                f"  {kind} ({body} B): netio {med['netio']:.0f}, anyio {med['anyio']:.0f}, "
                f"ratio {med['netio'] / med['anyio']:.2f}  "
                f"({', '.join(f'{x:.0f}' for x in got['netio'])} | "
                f"{', '.join(f'{x:.0f}' for x in got['anyio'])})"
            )
        # What each layer above the sockets costs: where a request's CPU goes.
        url = f"http://127.0.0.1:{port}/small"
        got_l: dict[str, list[float]] = {"client": [], "transport": [], "httpcore": []}
        for _ in range(a.rounds):
            for k, v in asyncio.run(layers_round(url, limits, a.requests)).items():
                got_l[k].append(v)
        med = {k: statistics.median(v) for k, v in got_l.items()}
        print(
            f"  small GET on netio, entered at: httpx's client {med['client']:.0f}, its "
            f"transport {med['transport']:.0f}, httpcore's pool {med['httpcore']:.0f} µs "
            f"(client layer {1 - med['transport'] / med['client']:.0%} of a request)"
        )
    finally:
        proc.terminate()
        proc.join()


if __name__ == "__main__":
    main()
