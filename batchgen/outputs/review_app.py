"""The review page's server (``batchgen review OUT``): a Starlette app over one output folder.

It answers on loopback only (the command binds 127.0.0.1) and only to whoever holds the token
printed in its URL: every request (the page, its script, the API, each image) carries it as
``?t=`` (or an ``X-Review-Token`` header), compared with :func:`secrets.compare_digest`.
Without it the answer is 401. A request whose ``Origin`` is not the page's own is refused
(403) before anything runs, and no CORS header is ever sent: another site open in the same
browser can neither read nor mark. Images are served from inside ``OUT/images`` only: the
name must pass :func:`marks.check_name` and resolve (symlinks followed) within that folder.

Marks are written at once (:meth:`Marks.set`, ``source="review"``): one committed
transaction a click, so a closed tab loses nothing, and ``batchgen mark`` may write meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import secrets
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from batchgen.outputs.gallery_data import size_of
from batchgen.outputs.marks import Mark, MarkError, Marks, check_name, read_marks
from batchgen.outputs.review_rows import (
    BLOCK_ROWS,
    FILTERS,
    HAS_BLANK,
    RowIndex,
    near_duplicates,
)

MAX_WINDOW = 200
FIRST_BLOCK = 500
POLL_S = 2.0
CSP = (
    "default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
_ASSETS = {"review.js": "text/javascript", "review.css": "text/css"}


def new_token() -> str:
    return secrets.token_urlsafe(24)


def _refuse(status: int, text: str) -> Response:
    return Response(text, status, media_type="text/plain", headers=_HEADERS)


def _own_origins(scope: Scope) -> set[str]:
    """``http://host:port`` as the server was reached by address (and as localhost)."""
    host, port = scope.get("server") or ("127.0.0.1", None)
    names = {str(host), "localhost", "127.0.0.1"}
    found = {f"http://{h}:{port or 80}" for h in names}
    return found | ({f"http://{h}" for h in names} if port in (None, 80) else set())


def guard(app: ASGIApp, token: str) -> ASGIApp:
    """The token on every request, no foreign Origin, the safety headers on every answer."""
    expected = token.encode()

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        request = Request(scope)
        origin = request.headers.get("origin")
        if origin is not None and origin not in _own_origins(scope):
            await _refuse(403, "refused: another site's request")(scope, receive, send)
            return
        given = request.query_params.get("t") or request.headers.get("x-review-token") or ""
        if not secrets.compare_digest(given.encode(), expected):
            await _refuse(401, "refused: the review page's token is missing or wrong")(
                scope, receive, send
            )
            return

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [
                    (k.lower().encode(), v.encode())
                    for k, v in _HEADERS.items()
                    if k.lower().encode() not in names
                ]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await app(scope, receive, with_headers)

    return guarded


class Review:
    """One folder under review: its rows (read incrementally) and its marks."""

    def __init__(self, out: Path, token: str) -> None:
        self.out = out
        self.images = (out / "images").resolve()
        self.token = token
        self.rows = RowIndex(out)
        self.groups = near_duplicates()
        self.following = False  # a background task keeps the rows up to date

    async def follow(self) -> None:
        """Read the index as it grows, a block at a time, in a worker thread."""
        self.following = True
        block = FIRST_BLOCK  # a small first block: the first screen waits for it alone
        try:
            while True:
                if not await asyncio.to_thread(self.rows.update, block):
                    await asyncio.sleep(POLL_S)
                block = BLOCK_ROWS
        finally:
            self.following = False

    def catch_up(self) -> None:
        """Without the background task (an app driven by a test client): read it all now."""
        if not self.following:
            while self.rows.update():
                pass

    def counts(self, marks: dict[str, Mark]) -> dict[str, int]:
        picked = sum(m is Mark.PICKED for m in marks.values())
        rejected = len(marks) - picked
        unmarked = max(0, len(self.rows) - picked - rejected)
        return {"picked": picked, "rejected": rejected, "unmarked": unmarked}

    def state(self) -> dict[str, Any]:
        self.catch_up()
        marks = read_marks(self.out)
        rows = self.rows
        return {
            "rows": len(rows),
            "reading": rows.end < _size(rows.path),
            "counts": self.counts(marks),
            "filters": {
                "blank": bool(rows.seen & HAS_BLANK),
                "near": self.groups is not None and len(rows.phashes) > 0,
            },
        }

    def window(self, which: str, start: int, count: int) -> dict[str, Any]:
        self.catch_up()
        marks = read_marks(self.out)
        groups = self.groups if which == "near" else None
        chosen = self.rows.select(which, marks, groups)
        total = len(self.rows) if chosen is None else len(chosen)
        start = max(0, min(start, max(0, total - 1)))
        stop = min(total, start + count)
        wanted = range(start, stop) if chosen is None else chosen[start:stop]
        found = [self._card(r, marks) for r in self.rows.rows(list(wanted))]
        return {"filter": which, "total": total, "start": start, "rows": found}

    @staticmethod
    def _card(r: dict[str, Any], marks: dict[str, Mark]) -> dict[str, Any]:
        name = str(r["file_name"])
        mark = marks.get(name)
        return {
            "i": r["i"],
            "file_name": name,
            "job_id": r.get("job_id"),
            "prompt": str(r.get("prompt") or ""),
            "prompt_id": str(r.get("prompt_id") or ""),
            "size": size_of(r),
            "quality": str(r.get("quality") or ""),
            "cost": r.get("cost_estimate"),
            "width": r.get("width"),
            "height": r.get("height"),
            "blank": r.get("blank") is True,
            "mark": None if mark is None else str(mark),
        }

    def image(self, name: str) -> Path | None:
        """The file of an image of the folder, or None for anything else."""
        try:
            rel = check_name(name)
        except MarkError:
            return None
        path = (self.out / rel).resolve()
        if not path.is_relative_to(self.images) or not path.is_file():
            return None
        return path


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


def page(token: str, title: str) -> str:
    t = html.escape(token)
    text = resources.files("batchgen.outputs.gallery_assets").joinpath("review.html")
    return text.read_text("utf-8").replace("{title}", html.escape(title)).replace("{t}", t)


def create_review_app(out: Path, token: str, *, follow: bool = True) -> ASGIApp:
    review = Review(out, token)
    body = page(token, out.resolve().name)

    async def index(request: Request) -> Response:
        return Response(body, media_type="text/html", headers={"Content-Security-Policy": CSP})

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _ASSETS:
            return _refuse(404, "not found")
        text = resources.files("batchgen.outputs.gallery_assets").joinpath(name)
        return Response(text.read_text("utf-8"), media_type=_ASSETS[name])

    async def state(request: Request) -> Response:
        return JSONResponse(review.state())

    async def rows(request: Request) -> Response:
        which = request.query_params.get("filter", "all")
        if which not in FILTERS:
            return _refuse(400, f"no such filter: {which}")
        start = _int(request.query_params.get("start"), 0)
        count = max(1, min(MAX_WINDOW, _int(request.query_params.get("count"), 20)))
        # In a worker thread: a view by mark or near duplicates may pass over every row.
        return JSONResponse(await asyncio.to_thread(review.window, which, start, count))

    async def mark(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
            name = check_name(str(body["file_name"]))
            value = None if body.get("mark") is None else Mark(body["mark"])
            job = body.get("job_id")
        except (ValueError, KeyError, TypeError, MarkError):
            return _refuse(400, "a mark is {file_name, job_id, mark: picked|rejected|null}")

        def write() -> None:  # off the event loop: another writer may hold the lock a moment
            with Marks.open(out) as marks:
                marks.set([(name, job if isinstance(job, str) else None)], value, source="review")

        await asyncio.to_thread(write)
        return JSONResponse({"file_name": name, "mark": value, **review.state()})

    async def image(request: Request) -> Response:
        path = review.image(request.query_params.get("f", ""))
        if path is None:
            return _refuse(404, "not an image of this folder")
        return FileResponse(path)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(review.follow()) if follow else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    routes = [
        Route("/", index),
        Route("/assets/{name}", asset),
        Route("/api/state", state),
        Route("/api/rows", rows),
        Route("/api/mark", mark, methods=["POST"]),
        Route("/image", image),
    ]
    return guard(Starlette(routes=routes, lifespan=lifespan), token)
