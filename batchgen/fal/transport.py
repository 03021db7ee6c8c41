"""One request to fal: our headers, per-request timeouts, error answers as exceptions.

``Transport`` is the plumbing under the queue client and the storage uploads, built on an
injected ``httpx.AsyncClient`` (the caller owns its pool) and on ``retry``'s one loop:

- ``send`` makes ONE request. No answer -> ``QueueTransportError`` (``sent`` says whether the
  request may have left us); an error answer -> ``QueueHTTPError`` (``ingress=True`` for a
  load balancer's HTML 502/503/504), or ``AuthError`` for 401/402/403 wherever our key was
  sent: the key or the account is wrong, stop the run. (A signed upload URL or a CDN token
  being refused is not that.)
- ``retrying`` repeats an idempotent request on what ``classify`` calls RETRY, a bounded
  number of times. A submit never goes through it.

The key is sent only where ``auth`` is true (never to a signed upload URL) and never printed;
every error body is scrubbed by ``redact`` before anything reads it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from batchgen._version import __version__
from batchgen.errors import AccountLocked, AuthError, QueueHTTPError, QueueTransportError
from batchgen.fal.auth import FalKey
from batchgen.fal.headers import TIMEOUT_TYPE
from batchgen.retry import (
    RetryEvent,
    RetryPolicy,
    Sleep,
    call_with_retries,
    nothing_sent,
    parse_retry_after,
)

T = TypeVar("T")

USER_AGENT = f"batchgen/{__version__}"
# Per request, whatever the injected client's default (httpx's is 5 s): a submit whose answer
# is slow must not be abandoned early, since an abandoned submit is an UNKNOWN, maybe billed twice.
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=15.0)
AUTH_STATUSES = frozenset({401, 402, 403})
_INGRESS_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Base URLs, without a trailing slash."""

    queue: str = "https://queue.fal.run"
    rest: str = "https://rest.fal.ai"
    cdn: str = "https://v3.fal.media"
    platform: str = "https://api.fal.ai/v1"  # the platform API: history, billing (platform.py)

    @classmethod
    def single(cls, base_url: str) -> Endpoints:
        """Every host at one server: ``--endpoint URL`` or the emulator (the platform API
        under ``URL/v1``, where the emulator serves it)."""
        base = base_url.rstrip("/")
        return cls(queue=base, rest=base, cdn=base, platform=f"{base}/v1")


class Transport:
    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        key: FalKey | None,
        sleep: Sleep,
        retry: RetryPolicy,
        on_retry: Callable[[RetryEvent], None] | None,
        timeout: httpx.Timeout,
        redact: Callable[[str], str] | None,
    ) -> None:
        self.http = http
        self.key = key
        # Applied to every error body: masks our key by default, every secret when given.
        self.redact = redact or (key.redact if key is not None else None)
        self.timeout = timeout
        self._sleep = sleep
        self._retry = retry
        self._on_retry = on_retry

    def headers(self, extra: Mapping[str, str] | None, auth: bool = True) -> dict[str, str]:
        headers = dict(extra) if extra else {}
        headers["User-Agent"] = USER_AGENT
        if auth and self.key is not None:
            headers["Authorization"] = self.key.header
        return headers

    async def send(
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
        """One request (see the module docstring for what it raises)."""
        try:
            resp = await self.http.request(
                method,
                url,
                params=params,
                json=json,
                content=content,
                headers=self.headers(extra, auth),
                timeout=self.timeout,
            )
        except httpx.TransportError as exc:
            raise QueueTransportError(
                f"{op} {safe_url(url)}: {exc_line(exc)}", sent=not nothing_sent(exc)
            ) from exc
        if check:
            self.raise_for(resp, keyed=auth)
        return resp

    def raise_for(self, resp: httpx.Response, *, keyed: bool = True) -> None:
        if resp.status_code < 300:
            return
        err = http_error(resp, self.redact)
        # A 403 from a signed upload URL (sent without our key) says nothing about the account.
        if keyed and err.status in AUTH_STATUSES:
            raise auth_error(err) from err
        raise err

    async def retrying(self, op: str, method: str, url: str, **kw: Any) -> httpx.Response:
        """``send``, repeated while ``classify`` says RETRY: for idempotent requests only."""

        def once() -> Awaitable[httpx.Response]:
            return self.send(op, method, url, **kw)

        return await self.with_retries(once, op)

    async def with_retries(self, once: Callable[[], Awaitable[T]], op: str) -> T:
        return await call_with_retries(
            once, op=op, policy=self._retry, sleep=self._sleep, on_retry=self._on_retry
        )


# ---------------------------------------------------------------------------- error answers


def http_error(resp: httpx.Response, redact: Callable[[str], str] | None = None) -> QueueHTTPError:
    """An error answer as a ``QueueHTTPError``; ``ingress`` marks a load balancer's error page
    (502/503/504, not JSON, no x-fal-request-id): no request reached fal behind it.

    ``redact`` scrubs the body before it is read: a 422 may echo the request's input, which
    for a BYOK request holds the user's OpenAI key, and nothing downstream may see it."""
    h = resp.headers
    request_id = h.get("x-fal-request-id")
    text = resp.text if redact is None else redact(resp.text)
    body = json_or_none(text)
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
        and TIMEOUT_TYPE not in h
    )
    retry_after = parse_retry_after(h.get("retry-after"))
    if retry_after is None:
        retry_after = parse_retry_after(h.get("x-ratelimit-reset"))
    return QueueHTTPError(
        resp.status_code,
        detail=detail,
        error_type=error_type,
        request_id=request_id,
        url=safe_url(str(resp.request.url)),
        retry_after=retry_after,
        retryable=_bool_header(h.get("x-fal-retryable")),
        ingress=ingress,
        timeout_type=h.get(TIMEOUT_TYPE),
    )


def auth_error(err: QueueHTTPError) -> AuthError:
    if err.locked:
        return AccountLocked(f"fal refused a new request ({err})")
    hint = "check FAL_KEY" if err.status == 401 else "check the key and the account's credit"
    return AuthError(f"fal refused the request ({err}); {hint}")


# ---------------------------------------------------------------------------- helpers


def json_or_none(raw: str | bytes) -> Any:
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


def excerpt(text: str) -> str:
    return text if len(text) <= 120 else text[:117] + "..."


def safe_url(url: str) -> str:
    """The URL without its query: signed upload URLs carry credentials there."""
    return url.split("?", 1)[0]


def exc_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
