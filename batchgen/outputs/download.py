"""Fetch one image to disk: stream, then hash, verify and fsync, then rename into place.

The contract a user depends on: a file at an image's final path is always complete and verified.
Bytes go to ``<name>.part`` first, the length, type and size cap are checked as they arrive,
then the file is hashed and its image format checked (:mod:`checks`), and only then does
``os.replace`` put it in place. Anything else removes the ``.part`` and raises
:class:`~batchgen.errors.DownloadError` with a short ``reason``.

Each received chunk is written on the event loop, as plain httpx streaming does: microseconds
per chunk into the page cache. What takes milliseconds — the sha256 of the file, Pillow's
check, the fsync, and in a run the gallery's thumbnail — is one call of
:func:`checks.check_file` per image: in one of the run's worker processes when a
:class:`~batchgen.outputs.workers.CheckPool` is given (other cores, other GILs),
else in a worker thread. Either way only this process renames, after the answer: a check
killed half-way leaves a ``.part``, never a file in place.

Only ``http``, ``https`` and ``data`` URLs are fetched. httpx follows the redirects, at most
:data:`MAX_REDIRECTS` whatever the client's own limit, and only to http(s): a redirect to
``file://`` is refused. Credentials never travel: the client may carry fal's
``Authorization`` header, which a CDN — or whatever host a redirect names — must never see.
httpx reads a redirect's own body (a few bytes from any CDN) before the next hop: the size
cap is the image's.

The HTTP client, the sleep between attempts and the retry policy (its jitter included) are
injected, so tests run against an in-process server with zero waits.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from batchgen.errors import DownloadError
from batchgen.outputs.checks import FORMATS, Checked, check_file, mime_of
from batchgen.outputs.workers import CheckPool
from batchgen.planning.disk import over_limit_text, size_text
from batchgen.retry import MEDIA, RetryPolicy, classify

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
MAX_REDIRECTS = 5  # the run's media client is built with it (running/setup.py)
# Headers that identify us to fal; an image host never needs them.
_PRIVATE_HEADERS = ("authorization", "cookie", "proxy-authorization")

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Downloaded:
    """A verified image in its final place. ``content_type`` is what the bytes are (by Pillow),
    not what the server claimed."""

    path: Path
    sha256: str
    bytes: int
    width: int
    height: int
    content_type: str
    blank: bool | None = None  # outputs/quality.py: measured by the check's decode
    phash: str | None = None


def _downloaded(dest: Path, c: Checked) -> Downloaded:
    return Downloaded(dest, c.sha256, c.size, c.width, c.height, mime_of(c.fmt), c.blank, c.phash)


def part_path(dest: Path) -> Path:
    """Where ``dest`` is written before it is verified (``x.png`` -> ``x.png.part``)."""
    return dest.with_name(dest.name + ".part")


def sweep_parts(root: Path) -> int:
    """Remove every ``*.part`` left below ``root`` by a crash; returns how many were removed."""
    removed = 0
    for p in root.rglob("*.part"):
        if p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed += 1
    return removed


async def download_image(
    http: httpx.AsyncClient,
    url: str,
    dest: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    expected_format: str | None,
    sleep: Sleep = asyncio.sleep,
    retry: RetryPolicy = MEDIA,
    expected_sha256: str | None = None,
    durable: bool = True,
    checks: CheckPool | None = None,
    thumbs: Path | None = None,
) -> Downloaded:
    """Fetch ``url`` to ``dest`` (a path from :func:`batchgen.planning.paths.image_path`), verified.

    ``expected_format`` is the requested ``output_format`` (``png``, ``jpeg``, ``webp``) or
    ``None`` for any of them. With ``expected_sha256``, a file already at ``dest`` with that
    checksum is returned as is, without a request. Transport errors, truncation, 429 and 5xx
    are tried again as ``retry`` says (``retry.MEDIA``: 3 tries in all); anything else fails
    at once.

    ``durable`` fsyncs the file before the rename, so not even a power cut can leave a partial
    file under the final name; it costs real disk bandwidth (see bench/download.py). Without
    it a killed process still never leaves one (the rename is atomic), and a power cut can be
    caught by the index checksums (``batchgen index --rebuild``).

    ``checks`` runs the checks in its worker processes (else a worker thread does), and then,
    given the output folder as ``thumbs``, also writes the gallery's thumbnail of the image.
    """
    if expected_format is not None and expected_format.lower() not in FORMATS:
        raise ValueError(f"unknown image format {expected_format!r}")
    if expected_sha256 is not None:
        try:
            c = await _check(checks, dest, expected_format, False, thumbs, expected_sha256)
            return _downloaded(dest, c)
        except DownloadError:
            pass  # no file, another file, or not a whole image: fetched again
    scheme = _scheme(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    attempt = 0
    while True:
        attempt += 1
        part.unlink(missing_ok=True)  # a stale .part from a crash, or from the last attempt
        try:
            if scheme == "data":
                size = await _write_data_uri(url, part, max_bytes, expected_format)
            else:
                size = await _fetch(http, url, part, max_bytes, expected_format)
            c = await _check(checks, part, expected_format, durable, thumbs, None)
            if c.size != size:  # not what was written: something else touched the .part
                raise DownloadError(
                    f"{part.name} changed on disk ({c.size} of {size} bytes)",
                    retryable=True,
                    reason="changed",
                )
            os.replace(part, dest)
            return _downloaded(dest, c)
        except DownloadError as exc:
            outcome = classify(exc, op="media")
            if not retry.again(attempt, outcome):
                raise
        finally:
            part.unlink(missing_ok=True)
        await sleep(retry.delay(attempt, outcome))


async def _check(
    checks: CheckPool | None,
    path: Path,
    expected_format: str | None,
    durable: bool,
    thumbs: Path | None,
    expected_sha256: str | None,
) -> Checked:
    """:func:`checks.check_file` in a worker process, or without a pool in a worker thread
    (thumbnails there would take the GIL from the event loop: the gallery makes them)."""
    if checks is not None:
        return await checks.check(
            path, expected_format, durable=durable, thumbs=thumbs, expected_sha256=expected_sha256
        )
    return await asyncio.to_thread(
        check_file, str(path), expected_format, durable=durable, expected_sha256=expected_sha256
    )


def _scheme(url: str) -> str:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in ("http", "https", "data"):
        raise DownloadError(
            f"refusing to fetch a {scheme or 'relative'!s} URL: {_short(url)}", reason="bad_url"
        )
    return scheme


def _short(url: str) -> str:
    """A URL fit for a message: data URIs and long query strings cut down."""
    if url[:5].lower() == "data:":
        return url[: url.find(",") + 1] + "…" if "," in url else "data:…"
    return url if len(url) <= 200 else url[:200] + "…"


def _check_type(declared: str, expected_format: str | None, url: str) -> None:
    """Refuse a declared content type that is not an image, or not the format asked for.

    An absent type or ``application/octet-stream`` is let through: Pillow decides.
    """
    ctype = declared.split(";", 1)[0].strip().lower()
    if not ctype or ctype == "application/octet-stream":
        return
    if not ctype.startswith("image/"):
        raise DownloadError(
            f"not an image: content type {ctype!r} at {_short(url)}", reason="wrong_type"
        )
    if ctype == "image/jpg":
        ctype = "image/jpeg"
    if expected_format is not None and ctype != mime_of(expected_format):
        raise DownloadError(
            f"asked for {expected_format}, the server sent {ctype} at {_short(url)}",
            reason="wrong_type",
        )


def _too_large(limit: int, size: int | None = None) -> DownloadError:
    """An image over --max-image-bytes: its size (when known) and the cap in the same units,
    and the flag as the user gave it (in bytes)."""
    if size is None:
        return DownloadError(
            f"image over the cap of {size_text(limit)} (--max-image-bytes {limit})",
            reason="too_large",
        )
    shown, cap = over_limit_text(size, limit)
    return DownloadError(
        f"image of {shown} is over the cap of {cap} (--max-image-bytes {limit})",
        reason="too_large",
    )


async def _write_data_uri(url: str, part: Path, max_bytes: int, expected_format: str | None) -> int:
    """Decode a ``data:`` URI (fal's ``sync_mode``) to ``part``; returns its size."""
    header, comma, payload = url[5:].partition(",")
    if not comma:
        raise DownloadError("a data URI without a comma", reason="bad_url")
    params = header.split(";")
    _check_type(params[0], expected_format, url)
    is_b64 = "base64" in (p.strip().lower() for p in params[1:])
    # Refuse before decoding: base64 is 4 characters per 3 bytes.
    if (len(payload) * 3 // 4 if is_b64 else len(payload) // 3) > max_bytes:
        raise _too_large(max_bytes)
    try:
        data = (
            base64.b64decode(payload, validate=True)
            if is_b64
            else urllib.parse.unquote_to_bytes(payload)
        )
    except (binascii.Error, ValueError):
        raise DownloadError("a data URI with bad base64", reason="bad_url") from None
    if len(data) > max_bytes:
        raise _too_large(max_bytes, len(data))
    await asyncio.to_thread(part.write_bytes, data)
    return len(data)


async def _fetch(
    http: httpx.AsyncClient, url: str, part: Path, max_bytes: int, expected_format: str | None
) -> int:
    """GET ``url`` (following at most MAX_REDIRECTS http(s) redirects) into ``part``; its size."""
    request = http.build_request(
        "GET", url, headers={"Accept": "image/*", "Accept-Encoding": "identity"}
    )
    # Off the first request, so off every hop: httpx carries its headers on to each redirect
    # (Authorization too, within one origin); a hop's Cookie comes from the client's jar.
    for name in _PRIVATE_HEADERS:
        request.headers.pop(name, None)
    try:
        response = await http.send(request, stream=True, follow_redirects=True)
    except httpx.TooManyRedirects:
        raise _too_many(url) from None
    except httpx.UnsupportedProtocol:  # a TransportError, but one no retry can pass
        # ``url`` is http(s) (_scheme): a redirect named another scheme, which httpx's
        # transport refuses before connecting.
        raise DownloadError(
            f"refusing a redirect from {_short(url)} to a non-http(s) URL", reason="bad_redirect"
        ) from None
    except httpx.TransportError as exc:
        raise DownloadError(
            f"{type(exc).__name__} fetching {_short(url)}", retryable=True, reason="transport"
        ) from None
    try:
        _check_hops(response, url)
        return await _save_body(response, part, max_bytes, expected_format)
    finally:
        await response.aclose()


def _check_hops(response: httpx.Response, url: str) -> None:
    """The redirect rules, for a client that does not keep them itself: one with more than
    MAX_REDIRECTS allowed (httpx's default is 20; the run's media client has MAX_REDIRECTS),
    or one whose transport answered a non-http(s) URL (an in-process app)."""
    if len(response.history) > MAX_REDIRECTS:
        raise _too_many(url)
    for hop in (*response.history, response):
        if hop.url.scheme not in ("http", "https"):
            raise DownloadError(
                f"refusing a redirect to {_short(str(hop.url))}", reason="bad_redirect"
            )


def _too_many(url: str) -> DownloadError:
    return DownloadError(
        f"more than {MAX_REDIRECTS} redirects from {_short(url)}", reason="too_many_redirects"
    )


async def _save_body(
    response: httpx.Response, part: Path, max_bytes: int, expected_format: str | None
) -> int:
    url = str(response.url)
    status = response.status_code
    if status != 200:
        retryable = status >= 500 or status in (408, 429)
        raise DownloadError(
            f"HTTP {status} fetching {_short(url)}", retryable=retryable, reason=f"http_{status}"
        )
    _check_type(response.headers.get("content-type", ""), expected_format, url)
    declared = _declared_length(response)
    if declared is not None and declared > max_bytes:
        raise _too_large(max_bytes, declared)
    size = 0
    # Each chunk (up to 64 KB, as the socket gives it) is written right here, on the event
    # loop: microseconds per chunk into the page cache. Handing blocks to a worker thread
    # instead cost 15-20% more CPU per image in bench/download.py (GIL hand-offs on every
    # block). The sha256 is taken afterwards from the file, with the other checks (_check).
    with part.open("wb") as f:
        try:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise _too_large(max_bytes)
                f.write(chunk)
        except httpx.TransportError as exc:  # the connection died mid-body: usually truncation
            raise DownloadError(
                f"{type(exc).__name__} after {size} bytes of {_short(url)}",
                retryable=True,
                reason="truncated",
            ) from None
    if declared is not None and size != declared:
        raise DownloadError(
            f"truncated: {size} of {declared} bytes from {_short(url)}",
            retryable=True,
            reason="truncated",
        )
    if size == 0:
        raise DownloadError(f"empty body from {_short(url)}", retryable=True, reason="truncated")
    return size


def _declared_length(response: httpx.Response) -> int | None:
    """Content-Length, when it describes the bytes we read (no content coding applied)."""
    coding = response.headers.get("content-encoding", "identity").strip().lower()
    raw = response.headers.get("content-length")
    if raw is None or coding not in ("", "identity"):
        return None
    try:
        return int(raw)
    except ValueError:
        return None
