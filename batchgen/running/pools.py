"""Connection pools that stay cheap with many connections open: several small httpcore pools
behind one httpx transport (issue 12).

Why: httpcore's pool does work proportional to its size on every request and every response
closed. It walks every connection, asks each idle one whether the server closed it (a
``select`` on its socket, through anyio's typed attributes), and counts the idle ones again
for each idle one it meets. At 64 jobs in flight (a stream each) and 64 downloads, that walk
cost more CPU per job than the download's own request (py-spy, ``bench/run.py --profile``), and
it is why more download slots made a run slower, not faster. Split into shards of a few
connections, the walk is short.

Requests take the shards in turn. Each shard may open the whole limit of connections, so an
unlucky shard that holds more long streams than its share never makes a request queue; the
total stays bounded by the requests the run has in flight. The idle connections kept are
shared out, so the sum is the limit asked for.
"""

from __future__ import annotations

import ssl

import httpx

CONNECTIONS_PER_SHARD = 8  # a walk over ~8 connections costs less than the request itself


class ShardedTransport(httpx.AsyncBaseTransport):
    """``shards`` :class:`httpx.AsyncHTTPTransport` pools behind one transport."""

    def __init__(self, shards: int, limits: httpx.Limits, verify: ssl.SSLContext | bool = True):
        if shards < 1:
            raise ValueError("at least one shard")
        keep = limits.max_keepalive_connections
        each = httpx.Limits(
            max_connections=limits.max_connections,
            max_keepalive_connections=None if keep is None else max(1, -(-keep // shards)),
            keepalive_expiry=limits.keepalive_expiry,
        )
        if verify is True and shards > 1:
            verify = httpx.create_ssl_context()  # one CA bundle loaded, not one per shard
        self._shards = [httpx.AsyncHTTPTransport(limits=each, verify=verify) for _ in range(shards)]
        self._next = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._next = (self._next + 1) % len(self._shards)
        return await self._shards[self._next].handle_async_request(request)

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()


def shards_for(connections: int) -> int:
    """How many shards keep each near ``CONNECTIONS_PER_SHARD`` connections."""
    return max(1, -(-connections // CONNECTIONS_PER_SHARD))
