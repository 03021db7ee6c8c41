"""Hosting a local file on fal's storage, as fal-client does: the v3 CDN with a cached token,
and if that fails the initiate + signed PUT route. ``data_uri`` is the offline alternative.

The key authorises the token and the initiate call only: the CDN upload carries the token,
and a signed URL authorises by itself, so neither is sent the key and neither refusal is an
``AuthError``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import mimetypes
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx

from batchgen.errors import ProtocolError, QueueError, QueueHTTPError
from batchgen.fal.transport import (
    AUTH_STATUSES,
    Endpoints,
    Transport,
    exc_line,
    json_or_none,
    safe_url,
)

log = logging.getLogger(__name__)


class Storage:
    def __init__(self, t: Transport, endpoints: Endpoints, wall_clock: Callable[[], float]) -> None:
        self._t = t
        self._endpoints = endpoints
        self._wall_clock = wall_clock
        self._token: tuple[str, float] | None = None  # (Authorization value, expiry epoch)
        self._token_lock = asyncio.Lock()

    async def upload(
        self, data: bytes | Path, content_type: str | None = None, file_name: str | None = None
    ) -> str:
        """Host ``data`` (bytes, or a file's path) and return its URL. For a path the name and
        (unless given) the content type come from the file."""
        if isinstance(data, Path):
            file_name = file_name or data.name
            content_type = content_type or mimetypes.guess_type(data.name)[0]
            data = await asyncio.to_thread(data.read_bytes)
        content_type = content_type or "application/octet-stream"
        try:
            return await self._upload_cdn(data, content_type, file_name)
        except QueueError as exc:
            if isinstance(exc, QueueHTTPError) and exc.status in AUTH_STATUSES:
                self._token = None  # revoked or expired early: fetch a fresh one next time
            log.warning("CDN upload failed (%s); trying storage initiate", exc_line(exc))
        return await self._upload_initiate(data, content_type, file_name)

    async def _upload_cdn(self, data: bytes, content_type: str, file_name: str | None) -> str:
        token = await self._cdn_token()
        headers = {"Content-Type": content_type, "Authorization": token}
        if file_name:
            headers["X-Fal-File-Name"] = file_name
        # auth=False: the token, not the key, authorises this one; its refusal is no AuthError.
        resp = await self._t.retrying(
            "upload",
            "POST",
            f"{self._endpoints.cdn}/files/upload",
            content=data,
            extra=headers,
            auth=False,
        )
        return _url_field(resp, "access_url")

    async def _cdn_token(self) -> str:
        async with self._token_lock:
            # Renew a minute early: a token that expires mid-upload fails the upload.
            if self._token is None or self._wall_clock() >= self._token[1] - 60.0:
                resp = await self._t.retrying(
                    "upload",
                    "POST",
                    f"{self._endpoints.rest}/storage/auth/token",
                    params={"storage_type": "fal-cdn-v3"},
                    json={},
                )
                self._token = _parse_token(resp)
            return self._token[0]

    async def _upload_initiate(self, data: bytes, content_type: str, file_name: str | None) -> str:
        resp = await self._t.retrying(
            "upload",
            "POST",
            f"{self._endpoints.rest}/storage/upload/initiate",
            params={"storage_type": "gcs"},
            json={"file_name": file_name or "upload.bin", "content_type": content_type},
        )
        upload_url = _url_field(resp, "upload_url")
        file_url = _url_field(resp, "file_url")
        # A signed URL authorises by itself: the key is not sent to it (fal-client does).
        await self._t.retrying(
            "upload",
            "PUT",
            upload_url,
            content=data,
            extra={"Content-Type": content_type},
            auth=False,
        )
        return file_url


def data_uri(data: bytes, content_type: str) -> str:
    """The offline alternative to ``upload``: the bytes inline, as fal-client's ``encode``."""
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


def _parse_token(resp: httpx.Response) -> tuple[str, float]:
    body = json_or_none(resp.content)
    try:
        assert isinstance(body, dict)
        token, kind = body["token"], body.get("token_type") or "Bearer"
        expires = datetime.fromisoformat(body["expires_at"])
        assert isinstance(token, str) and isinstance(kind, str) and expires.tzinfo is not None
    except (AssertionError, KeyError, TypeError, ValueError):
        raise ProtocolError("CDN token answer without token / tz-aware expires_at") from None
    return f"{kind} {token}", expires.timestamp()


def _url_field(resp: httpx.Response, key: str) -> str:
    body = json_or_none(resp.content)
    value = body.get(key) if isinstance(body, dict) else None
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"{safe_url(str(resp.request.url))} answered without {key}")
    return value
