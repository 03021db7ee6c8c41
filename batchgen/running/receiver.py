"""The webhook receiver (``--watch webhook``): the small HTTP app fal POSTs each result to,
served on ``--webhook-listen`` by uvicorn in the run's event loop.

It serves one path: the path of the URL fal is given. That is ``--webhook-url``'s own path,
whatever the user chose (a tunnel or a proxy that keeps paths needs no rewriting), or "/"
when it has none; without ``--webhook-url``, ``DEFAULT_PATH`` on the listen address. The URL
goes to fal as it was given: a trailing slash is ignored on arrival, in case a proxy adds or
drops it, and so is a query string, since the signature is what makes a delivery fal's.

The receiver sits behind a public address, so it answers everything itself and acts on
nothing but a delivery: another path is answered 404, another method 405, a body over
``MAX_BODY`` 413 (read as a stream and dropped once past the cap, never held whole), a
signature that does not check 401. Each is counted in the inbox (``Inbox.refuse``) and goes
to ``on_refused``, for the journal's audit trail.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from batchgen.errors import ProtocolError
from batchgen.fal.webhook import Verifier, WebhookRefused, parse_delivery
from batchgen.running.webhooks import Inbox

DEFAULT_PATH = "/batchgen/webhook"
# A delivery is the result's JSON: a gpt-image-2 result is a few KB (image URLs and their
# sizes), so 1 MiB is room for any number of images a request may ask for. Only a result
# with its images inline (``sync_mode``) is larger: refused, it is fetched by the late
# check's status and result requests like a lost delivery.
MAX_BODY = 1 << 20
SHOWN_PATH = 100  # characters of a stranger's path kept for the notice


def public_url(given: str | None, local: str) -> str:
    """The URL fal is given: ``--webhook-url`` as the user typed it, else the address the
    receiver listens on (``local``, no path) with ``DEFAULT_PATH``."""
    return given if given else local.rstrip("/") + DEFAULT_PATH


def served_path(url: str) -> str:
    """The path deliveries to ``url`` arrive at, as the receiver compares it: decoded (as a
    request's path is), without its query or trailing slash, "/" for none."""
    return _plain(urllib.parse.unquote(urllib.parse.urlsplit(url).path))


def shown_url(url: str) -> str:
    """``url`` for a notice: its query string may carry a proxy's token, so it is left out."""
    parts = urllib.parse.urlsplit(url)
    query = "?…" if parts.query else ""
    return urllib.parse.urlunsplit(parts._replace(query="", fragment="")) + query


def _plain(path: str) -> str:
    return path.rstrip("/") or "/"


def receiver_app(
    inbox: Inbox,
    verifier: Verifier,
    on_refused: Callable[[str], None],
    *,
    path: str,
    max_body: int = MAX_BODY,
) -> Starlette:
    """The receiver serving ``path``. One route takes every path and method, so each refusal
    is answered and counted here, not by the router on its own."""
    return Starlette(
        routes=[Route("/{rest:path}", _Receiver(inbox, verifier, on_refused, path, max_body))]
    )


class _Receiver:
    def __init__(
        self,
        inbox: Inbox,
        verifier: Verifier,
        on_refused: Callable[[str], None],
        path: str,
        max_body: int,
    ) -> None:
        self.inbox, self.verifier, self.on_refused = inbox, verifier, on_refused
        self.path, self.max_body = _plain(path), max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.answer(Request(scope, receive))
        if response is not None:
            await response(scope, receive, send)

    async def answer(self, request: Request) -> Response | None:
        path = request.scope["path"]
        if _plain(path) != self.path:
            shown = path[:SHOWN_PATH]
            return self._refuse("path", 404, f"a request at another path: {shown!r}", shown)
        if request.method != "POST":
            detail = f"a {request.method[:16]} request, not a POST"
            return self._refuse("method", 405, detail, headers={"Allow": "POST"})
        try:
            raw = await self._body(request)
        except ClientDisconnect:  # the sender went away: nobody to answer
            return None
        if raw is None:
            return self._refuse("size", 413, f"a body over {self.max_body:,} bytes")
        try:
            await self.verifier.verify(request.headers, raw)
            d = parse_delivery(raw)
        except (WebhookRefused, ProtocolError) as exc:
            return self._refuse("signature", 401, str(exc))
        self.inbox.put(d)
        return JSONResponse({"ok": True})

    async def _body(self, request: Request) -> bytes | None:
        """The body, or None once it is known to pass ``max_body``: by its Content-Length
        before a byte is read, else as the chunks come, each dropped with the rest."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            return None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def _refuse(
        self,
        why: str,
        status: int,
        detail: str,
        path: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        self.inbox.refuse(why, path)
        self.on_refused(detail)
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)


@contextlib.asynccontextmanager
async def receive(
    listen: str,
    given_url: str | None,
    inbox: Inbox,
    verifier: Verifier,
    on_refused: Callable[[str], None],
) -> AsyncIterator[str]:
    """Serve the receiver on ``listen`` (HOST:PORT, port 0 for any free one); yield the URL
    fal is given (``public_url``)."""
    from batchgen.emulator.server import serve_asgi  # uvicorn on loopback, in this loop

    host, _, port = listen.rpartition(":")  # checked as an option (option_rules.as_listen)
    path = served_path(given_url) if given_url else DEFAULT_PATH
    app = receiver_app(inbox, verifier, on_refused, path=path)
    async with serve_asgi(app, host, int(port)) as local:
        yield public_url(given_url, local)
