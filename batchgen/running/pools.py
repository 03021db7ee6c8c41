"""Connection pools that stay cheap with many connections open: several small httpcore pools
behind one httpx transport (issue 12).

Why: httpcore's pool does work proportional to its size on every request and every response
closed. It walks every connection, asks each idle one whether the server closed it (on anyio a
``select`` on its socket; on :mod:`netio`, which the shards use, a look at its state), and
counts the idle ones again for each idle one it meets. At 64 jobs in flight (a stream each) and
64 downloads, that walk cost more CPU per job than the download's own request (py-spy,
``bench/run.py --profile``), and it is why more download slots made a run slower, not faster.
Split into shards of a few connections, the walk is short.

Requests take the shards in turn. Each shard may open the whole limit of connections, so an
unlucky shard that holds more long streams than its share never makes a request queue; the
total stays bounded by the requests the run has in flight. The idle connections kept are
shared out, so the sum is the limit asked for.

Plain ``http://`` and ``https://`` requests get shards of their own, each set made at its
first request. A run against the emulator (loopback, plain HTTP) so never loads the CA
bundle: ``httpx.create_ssl_context()`` costs 30-50 ms of CPU, a tenth of a short run's
start-up. The plain shards hold an SSL context that trusts no certificate at all: they never
open TLS, and if one somehow did, it would fail closed, never unverified.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable

import httpx

from batchgen.running.netio import Transport

CONNECTIONS_PER_SHARD = 8  # a walk over ~8 connections costs less than the request itself


class ShardedTransport(httpx.AsyncBaseTransport):
    """``shards`` connection pools per scheme behind one transport, each httpx's transport on
    asyncio's own sockets (:mod:`netio`).

    ``tls`` gives the context for ``https://`` (called once, at the first such request;
    share one :func:`tls_context` between clients)."""

    def __init__(
        self,
        shards: int,
        limits: httpx.Limits,
        tls: Callable[[], ssl.SSLContext] | None = None,
    ) -> None:
        if shards < 1:
            raise ValueError("at least one shard")
        keep = limits.max_keepalive_connections
        self._limits = httpx.Limits(
            max_connections=limits.max_connections,
            max_keepalive_connections=None if keep is None else max(1, -(-keep // shards)),
            keepalive_expiry=limits.keepalive_expiry,
        )
        self._count = shards
        self._tls = tls or tls_context
        self._groups: dict[bool, list[Transport]] = {}  # secure? -> shards
        self._next = 0

    def _shards(self, secure: bool) -> list[Transport]:
        group = self._groups.get(secure)
        if group is None:
            context = self._tls() if secure else _TRUSTS_NOTHING
            group = [Transport(limits=self._limits, verify=context) for _ in range(self._count)]
            self._groups[secure] = group
        return group

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._next = (self._next + 1) % self._count
        shards = self._shards(request.url.scheme != "http")
        return await shards[self._next].handle_async_request(request)

    async def aclose(self) -> None:
        for group in self._groups.values():
            for shard in group:
                await shard.aclose()


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's default verifying context (certifi's CA bundle), made once per process."""
    return httpx.create_ssl_context()


# For the plain-HTTP shards, which never open TLS: verifies everything, trusts no CA.
_TRUSTS_NOTHING = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def shards_for(connections: int) -> int:
    """How many shards keep each near ``CONNECTIONS_PER_SHARD`` connections."""
    return max(1, -(-connections // CONNECTIONS_PER_SHARD))
