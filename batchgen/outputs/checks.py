"""The CPU-bound half of saving an image: hash the file, check it with Pillow, make its gallery
thumbnail, fsync it. Pure functions of a path, so they run the same in a worker thread or in
one of the run's worker processes (:mod:`batchgen.outputs.workers`).

Why a separate module: a worker process imports only this (hashlib, os, Pillow and the
thumbnail maker), not httpx or the journal, so it starts in tens of milliseconds.

The hash is taken from the file as it lies on disk, after the download closed it: exactly the
bytes that the rename will put in place, read back from the page cache. Hashing each chunk on
the event loop as it arrived was cheap for small images but cost the loop's core 2-3 ms per
4 MB PNG (bench/download.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from batchgen.errors import DownloadError
from batchgen.journal.walsync import fsync_path
from batchgen.outputs.quality import measure
from batchgen.outputs.thumbs import plan_decode, save_thumbnail, shrink, thumb_name

READ_BLOCK = 1024 * 1024

# The formats gpt-image-2 returns, by request name, and Pillow's name -> MIME type. Only these
# decoders ever see downloaded bytes: no exotic Pillow plugin parses what a server sends.
FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}
MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


@dataclass(frozen=True, slots=True)
class Checked:
    """What the checks found: the file's size and sha256, the image's size and Pillow format,
    whether a gallery thumbnail was written for it, and the quality flags of its pixels."""

    size: int
    sha256: str
    width: int
    height: int
    fmt: str
    thumbnail: bool = False
    blank: bool | None = None  # outputs/quality.py; None when no small image could be made
    phash: str | None = None


def mime_of(fmt: str) -> str:
    """``png``/``PNG`` -> ``image/png``, and so on."""
    return MIME[FORMATS.get(fmt.lower(), fmt.upper())]


def sha256_file(path: Path | str) -> tuple[int, str]:
    """(size, sha256 hex) of a file, read in blocks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(READ_BLOCK):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def inspect_image(path: Path | str, expected_format: str | None = None) -> tuple[int, int, str]:
    """(width, height, Pillow format) of a verified image file, or :class:`DownloadError`.

    Pillow's decompression-bomb guard stays on. A full decode of a 4K PNG costs more than
    downloading it over a fast link, so each format gets the cheapest check that still reads
    every byte: PNG checks the CRC of every chunk through IEND; JPEG decodes at 1/8 scale
    (the whole entropy-coded stream, a fraction of the pixels); WebP decodes.
    """
    width, height, fmt, _ = _inspect(path, expected_format, thumbnail=False)
    return width, height, fmt


def inspect_and_thumbnail(
    path: Path | str, expected_format: str | None = None
) -> tuple[int, int, str, Image.Image | None]:
    """:func:`inspect_image` and the gallery's thumbnail, from one decode where the format
    allows: the thumbnail's scaled JPEG decode, or WebP's full one, is the check itself. A
    PNG's chunk CRCs are checked first, then it is decoded for the thumbnail. A decode that
    fails fails the check; a whole image that cannot be made small (an unusual mode) only
    goes without a thumbnail (None), as it always has."""
    return _inspect(path, expected_format, thumbnail=True)


def inspect_quality(
    path: Path | str, expected_format: str | None = None
) -> tuple[int, int, str, bool | None, str | None]:
    """(width, height, Pillow format, blank, phash) of a verified image: the checks of
    :func:`inspect_and_thumbnail` and the quality flags (:mod:`quality`) of its small image,
    as a run records them (``batchgen index`` computes them so for older folders)."""
    width, height, fmt, thumb = _inspect(path, expected_format, thumbnail=True)
    if thumb is None:
        return width, height, fmt, None, None
    q = measure(thumb)
    return width, height, fmt, q.blank, q.phash


def _inspect(
    path: Path | str, expected_format: str | None, *, thumbnail: bool
) -> tuple[int, int, str, Image.Image | None]:
    thumb = None
    try:
        with Image.open(path, formats=list(MIME)) as im:
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
                im.verify()  # leaves ``im`` unusable: a thumbnail opens the file again
            elif thumbnail:
                plan_decode(im)
                im.load()
                thumb = _shrunk(im)
            else:
                if fmt == "JPEG":
                    im.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                im.load()
        if fmt == "PNG" and thumbnail:
            with Image.open(path, formats=["PNG"]) as im:
                im.load()
                thumb = _shrunk(im)
    except DownloadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DownloadError("refusing a decompression bomb", reason="too_large") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DownloadError(f"not a valid image: {exc}"[:300], reason="not_image") from None
    return width, height, fmt, thumb


def _shrunk(im: Image.Image) -> Image.Image | None:
    try:
        return shrink(im)
    except (OSError, ValueError, MemoryError):
        return None


def check_file(
    path: str,
    expected_format: str | None,
    *,
    durable: bool,
    thumbs: str | None = None,
    expected_sha256: str | None = None,
) -> Checked:
    """Hash ``path``, check it is a whole image of ``expected_format``, fsync it (``durable``)
    and, given an output folder ``thumbs``, write the gallery's thumbnail of it there when it
    is missing. The quality flags (:mod:`quality`) come from the same decode. With
    ``expected_sha256`` a file of another checksum is refused
    (``reason='checksum'``) before anything else is done with it."""
    try:
        size, digest = sha256_file(path)
    except OSError as exc:
        message = f"cannot read {Path(path).name}: {exc.strerror}"
        raise DownloadError(message, reason="unreadable") from None
    if expected_sha256 is not None and digest != expected_sha256:
        raise DownloadError("the file on disk has another checksum", reason="checksum")
    # The gallery makes only the thumbnails it lacks: one made here is one it skips. The
    # thumbnail's decode is the check itself (and the quality flags are measured on it), so
    # every image is decoded once, whether or not its thumbnail is written.
    dest = None if thumbs is None else Path(thumbs) / thumb_name(digest)
    width, height, fmt, thumb = inspect_and_thumbnail(path, expected_format)
    blank = phash = None
    made = False
    if thumb is not None:
        q = measure(thumb)
        blank, phash = q.blank, q.phash
        if dest is not None and not dest.is_file():
            save_thumbnail(thumb, dest)
            made = True
    if durable:
        # Without this, a power cut after the rename can leave an empty file under the final
        # name: exactly the partial file the download promises never to leave.
        fsync_path(path)
    return Checked(size, digest, width, height, fmt, made, blank, phash)
