"""Fetch one image to disk: stream, hash, verify, then rename into place.

The contract a user depends on: a file at an image's final path is always complete and verified.
Bytes go to ``<name>.part`` first (hashed as they arrive), the length, type, size cap and image
format are checked, and only then ``os.replace`` puts the file in place. Anything else removes
the ``.part`` and raises :class:`~batchgen.errors.DownloadError` with a short ``reason``.

Each received chunk is hashed and written on the event loop, as plain httpx streaming does:
microseconds per chunk into the page cache. Thread hops per block (aiofiles, or our own) cost
more CPU than they saved (bench/download.py), on a machine where the client's CPU is what
limits the rate. What takes milliseconds — Pillow's verification and the fsync — runs in one
worker-thread hop per image, so the scheduler's status streams never wait on it.

Only ``http``, ``https`` and ``data`` URLs are fetched. Redirects are followed here, not by
httpx, so each hop's scheme can be checked (a redirect to ``file://`` is refused), loops are
caught, and credentials never travel: the shared client may carry fal's ``Authorization``
header, which a CDN — or whatever host a redirect names — must never see.

The HTTP client, the sleep between attempts and the random jitter are injected, so tests run
against an in-process server with zero waits.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import random
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image, UnidentifiedImageError

from batchgen.errors import DownloadError

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
MAX_REDIRECTS = 5
# Chunks are gathered into blocks this big, each hashed and written in one hop to a worker
# thread: a hop per 64 KB network chunk would cost more CPU than the hashing.
WRITE_BLOCK = 1024 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Headers that identify us to fal; an image host never needs them.
_PRIVATE_HEADERS = ("authorization", "cookie", "proxy-authorization")

Sleep = Callable[[float], Awaitable[None]]

# The formats gpt-image-2 returns, by request name, and Pillow's name -> MIME type. Only these
# decoders ever see downloaded bytes: no exotic Pillow plugin parses what a server sends.
FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}
_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


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


def backoff(
    attempt: int, *, base: float = 0.5, cap: float = 10.0, rng: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before attempt ``attempt + 1``: capped exponential with half jitter."""
    return min(cap, base * 2.0**attempt) * (0.5 + rng() / 2)


async def download_image(
    http: httpx.AsyncClient,
    url: str,
    dest: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    expected_format: str | None,
    sleep: Sleep = asyncio.sleep,
    attempts: int = 3,
    expected_sha256: str | None = None,
    rng: Callable[[], float] = random.random,
    durable: bool = True,
) -> Downloaded:
    """Fetch ``url`` to ``dest`` (a path from :func:`batchgen.planning.paths.image_path`), verified.

    ``expected_format`` is the requested ``output_format`` (``png``, ``jpeg``, ``webp``) or
    ``None`` for any of them. With ``expected_sha256``, a file already at ``dest`` with that
    checksum is returned as is, without a request. Transport errors, truncation, 429 and 5xx
    are tried ``attempts`` times in all; anything else fails at once.

    ``durable`` fsyncs the file before the rename, so not even a power cut can leave a partial
    file under the final name; it costs real disk bandwidth (see bench/download.py). Without
    it a killed process still never leaves one (the rename is atomic), and a power cut can be
    caught by the index checksums (``batchgen index --rebuild``).
    """
    if expected_format is not None and expected_format.lower() not in FORMATS:
        raise ValueError(f"unknown image format {expected_format!r}")
    if expected_sha256 is not None:
        existing = await asyncio.to_thread(_existing, dest, expected_sha256, expected_format)
        if existing is not None:
            return existing
    scheme = _scheme(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    for attempt in range(attempts):
        part.unlink(missing_ok=True)  # a stale .part from a crash, or from the last attempt
        try:
            if scheme == "data":
                size, digest = await _write_data_uri(url, part, max_bytes, expected_format)
            else:
                size, digest = await _fetch(http, url, part, max_bytes, expected_format)
            width, height, fmt = await asyncio.to_thread(
                _verify_and_sync, part, expected_format, durable
            )
            os.replace(part, dest)
            return Downloaded(dest, digest, size, width, height, mime_of(fmt))
        except DownloadError as exc:
            if not exc.retryable or attempt + 1 >= attempts:
                raise
        finally:
            part.unlink(missing_ok=True)
        await sleep(backoff(attempt, rng=rng))
    raise AssertionError("unreachable")  # the loop returns or raises


def mime_of(fmt: str) -> str:
    """``png``/``PNG`` -> ``image/png``, and so on."""
    return _MIME[FORMATS.get(fmt.lower(), fmt.upper())]


def sha256_file(path: Path) -> tuple[int, str]:
    """(size, sha256 hex) of a file, read in blocks."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while block := f.read(WRITE_BLOCK):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def inspect_image(path: Path, expected_format: str | None = None) -> tuple[int, int, str]:
    """(width, height, Pillow format) of a verified image file, or :class:`DownloadError`.

    Pillow's decompression-bomb guard stays on. A full decode of a 4K PNG costs more than
    downloading it over a fast link, so each format gets the cheapest check that still reads
    every byte: PNG checks the CRC of every chunk through IEND; JPEG decodes at 1/8 scale
    (the whole entropy-coded stream, a fraction of the pixels); WebP decodes.
    """
    try:
        with Image.open(path, formats=list(_MIME)) as im:
            fmt = str(im.format)
            width, height = im.size
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and width * height > limit:
                raise DownloadError(f"{width}x{height} is too many pixels", reason="too_large")
            if expected_format is not None and fmt != FORMATS[expected_format.lower()]:
                raise DownloadError(
                    f"asked for {expected_format}, got a {fmt} image", reason="wrong_format"
                )
            if fmt == "PNG":
                im.verify()
            else:
                if fmt == "JPEG":
                    im.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                im.load()
    except DownloadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DownloadError("refusing a decompression bomb", reason="too_large") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DownloadError(f"not a valid image: {exc}"[:300], reason="not_image") from None
    return width, height, fmt


def _existing(dest: Path, sha256: str, expected_format: str | None) -> Downloaded | None:
    if not dest.is_file():
        return None
    size, digest = sha256_file(dest)
    if digest != sha256:
        return None
    try:
        width, height, fmt = inspect_image(dest, expected_format)
    except DownloadError:
        return None
    return Downloaded(dest, digest, size, width, height, mime_of(fmt))


def _verify_and_sync(
    part: Path, expected_format: str | None, durable: bool
) -> tuple[int, int, str]:
    result = inspect_image(part, expected_format)
    if durable:
        # Without this, a power cut after the rename can leave an empty file under the final
        # name: exactly the partial file this module promises never to leave.
        fd = os.open(part, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return result


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


async def _write_data_uri(
    url: str, part: Path, max_bytes: int, expected_format: str | None
) -> tuple[int, str]:
    """Decode a ``data:`` URI (fal's ``sync_mode``) to ``part``; returns (size, sha256)."""
    header, comma, payload = url[5:].partition(",")
    if not comma:
        raise DownloadError("a data URI without a comma", reason="bad_url")
    params = header.split(";")
    _check_type(params[0], expected_format, url)
    is_b64 = "base64" in (p.strip().lower() for p in params[1:])
    # Refuse before decoding: base64 is 4 characters per 3 bytes.
    if (len(payload) * 3 // 4 if is_b64 else len(payload) // 3) > max_bytes:
        raise DownloadError(f"image larger than the cap of {max_bytes} bytes", reason="too_large")
    try:
        data = (
            base64.b64decode(payload, validate=True)
            if is_b64
            else urllib.parse.unquote_to_bytes(payload)
        )
    except (binascii.Error, ValueError):
        raise DownloadError("a data URI with bad base64", reason="bad_url") from None
    if len(data) > max_bytes:
        raise DownloadError(f"image larger than the cap of {max_bytes} bytes", reason="too_large")
    digest = await asyncio.to_thread(_write_all, part, data)
    return len(data), digest


def _write_all(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


async def _fetch(
    http: httpx.AsyncClient, url: str, part: Path, max_bytes: int, expected_format: str | None
) -> tuple[int, str]:
    """GET ``url`` (following at most 5 http(s) redirects) into ``part``; (size, sha256)."""
    seen = {url}
    current = url
    for _hop in range(MAX_REDIRECTS + 1):
        request = http.build_request(
            "GET", current, headers={"Accept": "image/*", "Accept-Encoding": "identity"}
        )
        for name in _PRIVATE_HEADERS:
            request.headers.pop(name, None)
        try:
            response = await http.send(request, stream=True, follow_redirects=False)
        except httpx.TransportError as exc:
            raise DownloadError(
                f"{type(exc).__name__} fetching {_short(current)}",
                retryable=True,
                reason="transport",
            ) from None
        try:
            if response.status_code in _REDIRECTS and "location" in response.headers:
                current = _next_hop(response, seen)
                continue
            return await _save_body(response, part, max_bytes, expected_format)
        finally:
            await response.aclose()
    raise DownloadError(
        f"more than {MAX_REDIRECTS} redirects from {_short(url)}", reason="too_many_redirects"
    )


def _next_hop(response: httpx.Response, seen: set[str]) -> str:
    try:
        target = str(response.url.join(response.headers["location"]))
    except httpx.InvalidURL:
        raise DownloadError("a redirect to an invalid URL", reason="bad_redirect") from None
    if target.split(":", 1)[0].lower() not in ("http", "https"):
        raise DownloadError(f"refusing a redirect to {_short(target)}", reason="bad_redirect")
    if target in seen:
        raise DownloadError(f"redirect loop at {_short(target)}", reason="redirect_loop")
    seen.add(target)
    return target


async def _save_body(
    response: httpx.Response, part: Path, max_bytes: int, expected_format: str | None
) -> tuple[int, str]:
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
        raise DownloadError(
            f"image of {declared} bytes is over the cap of {max_bytes}", reason="too_large"
        )
    hasher = hashlib.sha256()
    size = 0
    # Each chunk (up to 64 KB, as the socket gives it) is hashed and written right here, on
    # the event loop: tens of microseconds per chunk into the page cache. Handing 1 MB blocks
    # to a worker thread instead cost 15-20% more CPU per image in bench/download.py (GIL
    # hand-offs between the loop and the thread on every block), on a machine where the
    # client's CPU is what limits the rate. The verification and the fsync, which take
    # milliseconds, still run in a worker thread (download_image).
    with part.open("wb") as f:
        try:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise DownloadError(
                        f"image over the cap of {max_bytes} bytes", reason="too_large"
                    )
                hasher.update(chunk)
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
    return size, hasher.hexdigest()


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
