"""The fal queue client: submit, status (polled or streamed), result, cancel, upload.

Built directly on an injected ``httpx.AsyncClient`` (the caller owns its pool; the per-request
timeouts are set here) and on ``retry.py``'s one loop. What each call does when things go wrong
is the contract the scheduler relies on:

- ``submit`` is ONE POST and is never retried here, because a repeated POST can pay twice.
  Nothing sent (connect error, pool timeout) -> ``QueueTransportError(sent=False)``; sent with
  no answer (read error or timeout, connection dropped) -> ``UnknownOutcome``; an error answer
  -> ``QueueHTTPError`` (``ingress=True`` for a load balancer's HTML 502/503/504).
- ``status``, ``result``, ``cancel`` and the upload steps are idempotent and retried inside on
  what ``classify`` calls RETRY (transport errors, 429 with Retry-After, ingress 5xx), a bounded
  number of times. ``result`` raises ``QueueHTTPError`` for the request's own failure (422 with
  its detail list, 5xx with a runner ``error_type``, 404 after expiry) for the caller to classify.
- 401/402/403 wherever our key was sent raise ``AuthError``: the key or the account is wrong,
  stop the run. (A signed upload URL or a CDN token being refused is not that.)

The key is sent only to fal's own hosts (never to a signed upload URL) and never printed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import mimetypes
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import SSEError, aconnect_sse

from batchgen._version import __version__
from batchgen.errors import (
    AuthError,
    ProtocolError,
    QueueError,
    QueueHTTPError,
    QueueTransportError,
    StatusStreamError,
    UnknownOutcome,
)
from batchgen.fal.auth import FalKey
from batchgen.fal.retry import (
    RetryEvent,
    RetryPolicy,
    Sleep,
    call_with_retries,
    nothing_sent,
    parse_retry_after,
)

log = logging.getLogger(__name__)

USER_AGENT = f"batchgen/{__version__}"
# Per request, whatever the injected client's default (httpx's is 5 s): a submit whose answer
# is slow must not be abandoned early, since an abandoned submit is an UNKNOWN, maybe billed twice.
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=15.0)
_AUTH_STATUSES = frozenset({401, 402, 403})
_INGRESS_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Base URLs, without a trailing slash."""

    queue: str = "https://queue.fal.run"
    rest: str = "https://rest.fal.ai"
    cdn: str = "https://v3.fal.media"

    @classmethod
    def single(cls, base_url: str) -> Endpoints:
        """All three hosts at one server: ``--endpoint URL`` or the emulator."""
        base = base_url.rstrip("/")
        return cls(queue=base, rest=base, cdn=base)


@dataclass(frozen=True, slots=True)
class Handle:
    """A submitted request, with the URLs exactly as the submit answer gave them (fal builds
    them from owner/app only; an emulator may point them anywhere)."""

    request_id: str
    status_url: str
    response_url: str
    cancel_url: str

    def to_json(self) -> dict[str, str]:
        return {
            "request_id": self.request_id,
            "status_url": self.status_url,
            "response_url": self.response_url,
            "cancel_url": self.cancel_url,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Handle:
        """Strict: the submit answer and journal rows alike must carry all four strings."""
        values = {}
        for name in ("request_id", "status_url", "response_url", "cancel_url"):
            v = d.get(name)
            if not isinstance(v, str) or not v:
                raise ProtocolError(f"request handle without a {name}")
            values[name] = v
        return cls(**values)


# ---------------------------------------------------------------------------- statuses


@dataclass(frozen=True, slots=True)
class Queued:
    position: int  # 0 = next to start


@dataclass(frozen=True, slots=True)
class InProgress:
    logs: list[dict[str, Any]] | None


@dataclass(frozen=True, slots=True)
class Completed:
    """Finished, well or not: fal has no FAILED status, a failure is COMPLETED with ``error``."""

    error: str | None = None
    error_type: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    logs: list[dict[str, Any]] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def inference_time(self) -> float | None:
        """fal's own run time of the request, in seconds, when its metrics say."""
        t = self.metrics.get("inference_time")
        return float(t) if isinstance(t, int | float) else None


Status = Queued | InProgress | Completed


def parse_status(body: object) -> Status:
    """A status body, as strictly as fal-client reads it: IN_QUEUE needs ``queue_position``,
    IN_PROGRESS and COMPLETED need the ``logs`` key, any other status is an error."""
    if not isinstance(body, dict):
        raise ProtocolError(f"status body is not a JSON object: {_excerpt(repr(body))}")
    state = body.get("status")
    if state == "IN_QUEUE":
        pos = body.get("queue_position")
        if isinstance(pos, bool) or not isinstance(pos, int) or pos < 0:
            raise ProtocolError(f"IN_QUEUE status without a valid queue_position: {pos!r}")
        return Queued(pos)
    if state == "IN_PROGRESS":
        return InProgress(_logs(body))
    if state == "COMPLETED":
        metrics = body.get("metrics")
        metrics = {} if metrics is None else metrics
        if not isinstance(metrics, dict):
            raise ProtocolError("COMPLETED status with non-object metrics")
        return Completed(
            error=_opt_str(body, "error"),
            error_type=_opt_str(body, "error_type"),
            metrics=metrics,
            logs=_logs(body),
        )
    raise ProtocolError(f"unknown queue status {_excerpt(repr(state))}")


def _logs(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    if "logs" not in body:
        raise ProtocolError(f"{body.get('status')} status without the logs key")
    logs = body["logs"]
    if logs is None:
        return None
    if not isinstance(logs, list) or not all(isinstance(x, dict) for x in logs):
        raise ProtocolError("status logs are not a list of objects")
    return logs


def _opt_str(body: dict[str, Any], key: str) -> str | None:
    v = body.get(key)
    if v is None or isinstance(v, str):
        return v
    raise ProtocolError(f"status {key} is not a string")


# ---------------------------------------------------------------------------- error answers


def http_error(resp: httpx.Response, redact: Callable[[str], str] | None = None) -> QueueHTTPError:
    """An error answer as a ``QueueHTTPError``; ``ingress`` marks a load balancer's error page
    (502/503/504, not JSON, no x-fal-request-id): no request reached fal behind it.

    ``redact`` scrubs the body before it is read: a 422 may echo the request's input, which
    for a BYOK request holds the user's OpenAI key, and nothing downstream may see it."""
    h = resp.headers
    request_id = h.get("x-fal-request-id")
    text = resp.text if redact is None else redact(resp.text)
    body = _json_or_none(text)
    detail: Any
    error_type: str | None = None
    if isinstance(body, dict):
        detail = body.get("detail")
        if isinstance(body.get("error_type"), str):
            error_type = body["error_type"]
        if request_id is None and isinstance(body.get("request_id"), str):
            request_id = body["request_id"]
    else:
        detail = _page_text(text) or None
    error_type = error_type or h.get("x-fal-error-type")
    ingress = (
        resp.status_code in _INGRESS_STATUSES
        and request_id is None
        and not isinstance(body, dict)
        and "x-fal-request-timeout-type" not in h
    )
    retry_after = parse_retry_after(h.get("retry-after"))
    if retry_after is None:
        retry_after = parse_retry_after(h.get("x-ratelimit-reset"))
    return QueueHTTPError(
        resp.status_code,
        detail=detail,
        error_type=error_type,
        request_id=request_id,
        url=_safe_url(str(resp.request.url)),
        retry_after=retry_after,
        retryable=_bool_header(h.get("x-fal-retryable")),
        ingress=ingress,
    )


def _auth_error(err: QueueHTTPError) -> AuthError:
    hint = "check FAL_KEY" if err.status == 401 else "check the key and the account's credit"
    return AuthError(f"fal refused the request ({err}); {hint}")


# ---------------------------------------------------------------------------- the client


class QueueClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        endpoints: Endpoints | None = None,
        key: FalKey | str | None,
        sleep: Sleep = asyncio.sleep,
        retry: RetryPolicy | None = None,
        on_retry: Callable[[RetryEvent], None] | None = None,
        wall_clock: Callable[[], float] = time.time,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        self._http = http
        self.endpoints = endpoints or Endpoints()
        self._key = FalKey(key) if isinstance(key, str) else key
        # Applied to every error body: masks our key by default, every secret when given.
        self._redact = redact or (self._key.redact if self._key is not None else None)
        self._sleep = sleep
        self._retry = retry or RetryPolicy()
        self._on_retry = on_retry
        self._wall_clock = wall_clock
        self._timeout = timeout
        self._token: tuple[str, float] | None = None  # (Authorization value, expiry epoch)
        self._token_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"QueueClient(endpoints={self.endpoints!r}, key={self._key!r})"

    # -- the queue

    async def submit(
        self,
        endpoint: str,
        input: Mapping[str, Any],
        *,
        webhook: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Handle:
        """One POST, never retried here (see the module docstring for what it raises)."""
        path = endpoint.strip("/")
        if not path or "?" in path or "#" in path or ".." in path.split("/"):
            raise ValueError(f"not an endpoint id: {endpoint!r}")
        url = f"{self.endpoints.queue}/{path}"
        params = {"fal_webhook": webhook} if webhook else None
        try:
            resp = await self._send("submit", "POST", url, json=input, params=params, extra=headers)
        except QueueTransportError as exc:
            if exc.sent:
                raise UnknownOutcome(f"submit to {path}: {exc}; a job may exist") from exc
            raise
        body = _json_or_none(resp.content)
        if not isinstance(body, dict):
            raise ProtocolError(f"submit to {path} answered {resp.status_code} without JSON")
        return Handle.from_json(body)

    async def status(self, h: Handle, *, logs: bool = False) -> Status:
        resp = await self._retrying("status", "GET", h.status_url, params=_logs_param(logs))
        return parse_status(_json_or_none(resp.content))

    async def stream_status(
        self, h: Handle, *, logs: bool = False, inactivity_timeout: float = 30.0
    ) -> AsyncGenerator[Status, None]:
        """Statuses from the SSE stream until Completed (the last one yielded).

        ``inactivity_timeout`` bounds the silence between any two bytes; fal's keep-alive
        comments (every 15 s) count as activity. Any failure other than a refused key raises
        ``StatusStreamError``: the caller falls back to polling, whose answer is authoritative.
        An async generator: close it (``contextlib.aclosing``) to end the HTTP stream at once.
        """
        watch = _Watch(asyncio.get_running_loop(), inactivity_timeout)
        phase = "open"  # which silence timed out: the answer's headers, or the events
        async with contextlib.AsyncExitStack() as stack:
            try:
                async with watch.guard():
                    source = await stack.enter_async_context(
                        aconnect_sse(
                            self._http,
                            "GET",
                            f"{h.status_url}/stream",
                            params=_logs_param(logs),
                            headers=self._headers(None),
                            # The watchdog is the inactivity timeout; no read timeout under it.
                            timeout=httpx.Timeout(**{**self._timeout.as_dict(), "read": None}),
                        )
                    )
                    resp = source.response
                    if resp.status_code >= 300:
                        await resp.aread()
                        err = http_error(resp, self._redact)
                        if err.status in _AUTH_STATUSES:
                            raise _auth_error(err) from err
                        raise StatusStreamError(f"status stream refused: {err}") from err
                    resp.stream = _Activity(resp.stream, watch.touch)
                phase = "events"
                events = source.aiter_sse()
                while True:
                    async with watch.guard():
                        sse = await anext(events)
                    status = parse_status(_json_or_none(sse.data))
                    yield status
                    if isinstance(status, Completed):
                        return
            except StopAsyncIteration:
                raise StatusStreamError("status stream closed before COMPLETED") from None
            except TimeoutError:
                what = "no answer to the stream request" if phase == "open" else "stream silent"
                raise StatusStreamError(f"status {what} for {inactivity_timeout:g} s") from None
            except (httpx.TransportError, SSEError, ProtocolError) as exc:
                raise StatusStreamError(f"status stream broke: {_exc_line(exc)}") from exc

    async def result(self, h: Handle) -> dict[str, Any]:
        resp = await self._retrying("result", "GET", h.response_url)
        body = _json_or_none(resp.content)
        if not isinstance(body, dict):
            raise ProtocolError(f"result of {h.request_id} is not a JSON object")
        return body

    async def cancel(self, h: Handle) -> str:
        """The answer's ``status``: CANCELLATION_REQUESTED, ALREADY_COMPLETED, NOT_FOUND, OK."""

        async def once() -> str:
            resp = await self._send("cancel", "PUT", h.cancel_url, check=False)
            body = _json_or_none(resp.content)
            # fal answers 400 ALREADY_COMPLETED (404 NOT_FOUND, likely): answers, not failures.
            if resp.status_code < 500 and isinstance(body, dict):
                state = body.get("status")
                if isinstance(state, str) and resp.status_code not in _AUTH_STATUSES:
                    return state
            self._raise_for(resp)
            raise ProtocolError(f"cancel of {h.request_id} answered without a status")

        return await call_with_retries(
            once, op="cancel", policy=self._retry, sleep=self._sleep, on_retry=self._on_retry
        )

    # -- storage

    async def upload(
        self, data: bytes | Path, content_type: str | None = None, file_name: str | None = None
    ) -> str:
        """Host ``data`` (bytes, or a file's path) on fal's CDN and return its URL: the v3 CDN
        with a cached token, and if that fails the initiate + signed PUT route, as fal-client.
        For a path the name and (unless given) the content type come from the file."""
        if isinstance(data, Path):
            file_name = file_name or data.name
            content_type = content_type or mimetypes.guess_type(data.name)[0]
            data = await asyncio.to_thread(data.read_bytes)
        content_type = content_type or "application/octet-stream"
        try:
            return await self._upload_cdn(data, content_type, file_name)
        except QueueError as exc:
            if isinstance(exc, QueueHTTPError) and exc.status in _AUTH_STATUSES:
                self._token = None  # revoked or expired early: fetch a fresh one next time
            log.warning("CDN upload failed (%s); trying storage initiate", _exc_line(exc))
        return await self._upload_initiate(data, content_type, file_name)

    async def _upload_cdn(self, data: bytes, content_type: str, file_name: str | None) -> str:
        token = await self._cdn_token()
        headers = {"Content-Type": content_type, "Authorization": token}
        if file_name:
            headers["X-Fal-File-Name"] = file_name
        # auth=False: the token, not the key, authorises this one; its refusal is no AuthError.
        resp = await self._retrying(
            "upload",
            "POST",
            f"{self.endpoints.cdn}/files/upload",
            content=data,
            extra=headers,
            auth=False,
        )
        return _url_field(resp, "access_url")

    async def _cdn_token(self) -> str:
        async with self._token_lock:
            # Renew a minute early: a token that expires mid-upload fails the upload.
            if self._token is None or self._wall_clock() >= self._token[1] - 60.0:
                resp = await self._retrying(
                    "upload",
                    "POST",
                    f"{self.endpoints.rest}/storage/auth/token",
                    params={"storage_type": "fal-cdn-v3"},
                    json={},
                )
                self._token = _parse_token(resp)
            return self._token[0]

    async def _upload_initiate(self, data: bytes, content_type: str, file_name: str | None) -> str:
        resp = await self._retrying(
            "upload",
            "POST",
            f"{self.endpoints.rest}/storage/upload/initiate",
            params={"storage_type": "gcs"},
            json={"file_name": file_name or "upload.bin", "content_type": content_type},
        )
        upload_url = _url_field(resp, "upload_url")
        file_url = _url_field(resp, "file_url")
        # A signed URL authorises by itself: the key is not sent to it (fal-client does).
        await self._retrying(
            "upload",
            "PUT",
            upload_url,
            content=data,
            extra={"Content-Type": content_type},
            auth=False,
        )
        return file_url

    # -- plumbing

    def _headers(self, extra: Mapping[str, str] | None, auth: bool = True) -> dict[str, str]:
        headers = dict(extra) if extra else {}
        headers["User-Agent"] = USER_AGENT
        if auth and self._key is not None:
            headers["Authorization"] = self._key.header
        return headers

    async def _send(
        self,
        op: str,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        content: bytes | None = None,
        extra: Mapping[str, str] | None = None,
        auth: bool = True,
        check: bool = True,
    ) -> httpx.Response:
        """One request. No answer -> QueueTransportError (``sent`` says if it left us);
        an error answer -> QueueHTTPError, or AuthError for 401/402/403."""
        try:
            resp = await self._http.request(
                method,
                url,
                params=params,
                json=json,
                content=content,
                headers=self._headers(extra, auth),
                timeout=self._timeout,
            )
        except httpx.TransportError as exc:
            raise QueueTransportError(
                f"{op} {_safe_url(url)}: {_exc_line(exc)}", sent=not nothing_sent(exc)
            ) from exc
        if check:
            self._raise_for(resp, keyed=auth)
        return resp

    def _raise_for(self, resp: httpx.Response, *, keyed: bool = True) -> None:
        if resp.status_code < 300:
            return
        err = http_error(resp, self._redact)
        # A 403 from a signed upload URL (sent without our key) says nothing about the account.
        if keyed and err.status in _AUTH_STATUSES:
            raise _auth_error(err) from err
        raise err

    async def _retrying(self, op: str, method: str, url: str, **kw: Any) -> httpx.Response:
        def once() -> Awaitable[httpx.Response]:
            return self._send(op, method, url, **kw)

        return await call_with_retries(
            once, op=op, policy=self._retry, sleep=self._sleep, on_retry=self._on_retry
        )


def data_uri(data: bytes, content_type: str) -> str:
    """The offline alternative to ``upload``: the bytes inline, as fal-client's ``encode``."""
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


# ---------------------------------------------------------------------------- helpers


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


def _logs_param(logs: bool) -> dict[str, str]:
    # fal's docs and fal-js send 1/0 (fal-client sends true/false; fal accepts both).
    return {"logs": "1" if logs else "0"}


def _parse_token(resp: httpx.Response) -> tuple[str, float]:
    body = _json_or_none(resp.content)
    try:
        assert isinstance(body, dict)
        token, kind = body["token"], body.get("token_type") or "Bearer"
        expires = datetime.fromisoformat(body["expires_at"])
        assert isinstance(token, str) and isinstance(kind, str) and expires.tzinfo is not None
    except (AssertionError, KeyError, TypeError, ValueError):
        raise ProtocolError("CDN token answer without token / tz-aware expires_at") from None
    return f"{kind} {token}", expires.timestamp()


def _url_field(resp: httpx.Response, key: str) -> str:
    body = _json_or_none(resp.content)
    value = body.get(key) if isinstance(body, dict) else None
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"{_safe_url(str(resp.request.url))} answered without {key}")
    return value


def _json_or_none(raw: str | bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _bool_header(value: str | None) -> bool | None:
    if value is None:
        return None
    v = value.strip().lower()
    return True if v in ("true", "1", "yes") else False if v in ("false", "0", "no") else None


_TAGS = re.compile(r"<[^>]+>")


def _page_text(text: str) -> str:
    """An HTML error page as one short line ("503 Service Temporarily Unavailable nginx")."""
    text = _TAGS.sub(" ", text)
    return " ".join(text.split())[:200]


def _excerpt(text: str) -> str:
    return text if len(text) <= 120 else text[:117] + "..."


def _safe_url(url: str) -> str:
    """The URL without its query: signed upload URLs carry credentials there."""
    return url.split("?", 1)[0]


def _exc_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
