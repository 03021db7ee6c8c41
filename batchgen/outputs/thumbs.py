"""The gallery's thumbnails: one small JPEG per image, named by the image's sha256.

Kept apart from :mod:`gallery` so that a worker process can make a thumbnail the moment an
image lands (:mod:`checks`) by importing Pillow and this, not the gallery's page, data and
journal modules.

A thumbnail fits in ``THUMB_SIDE``×``THUMB_SIDE`` and its longest side is at least ``THUMB_MIN``
(or the image's own, if smaller). The range is what makes thumbnails cheap: it spans a factor of
two, so every image of ``THUMB_MIN`` px or more has a free integer scale that lands in it, and
none is ever resampled. A JPEG is decoded at 1/2, 1/4 or 1/8 of its size by its own IDCT (1024
px at 1/4 is 256 px, 1536 px at 1/4 is 384 px); a PNG or WebP is averaged down by an integer
factor (Pillow's ``reduce``, a box filter). With the earlier 240-320 px range, most sizes still
needed a bilinear resize after the scaled decode, and on the benchmark machine that resize cost
as much as the decode itself (``bench/thumbs.py``). The gallery's cards are 220 px wide or more,
shown square: a thumbnail in the range fills one at a 1:1 pixel ratio, and up to 2:1 on a
high-density screen.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

THUMBS = ".thumbs"
THUMB_SIDE = 480  # the longest side at most ...
THUMB_MIN = THUMB_SIDE // 2  # ... and at least this, when the image is bigger
THUMB_QUALITY = 80
# Modes whose pixels average meaningfully as they are; others are converted first (a palette
# image would otherwise be resampled by nearest neighbour).
_AVERAGEABLE = frozenset({"RGB", "RGBA", "L", "LA"})


def thumb_name(sha256: str) -> str:
    return f"{THUMBS}/{sha256[:2]}/{sha256}.jpg"


def plan_decode(im: Image.Image) -> None:
    """Before ``im`` is loaded: ask a JPEG for the smallest IDCT scale (1/2, 1/4, 1/8) that
    keeps its longest side at least ``THUMB_MIN``. The scaled decode still reads the whole
    entropy-coded stream, so it checks the file as well as a full decode would. Other formats
    ignore it."""
    w, h = im.size
    k = max(w, h) // THUMB_MIN
    if k >= 2:
        # draft() picks the largest power of two within min(w // rw, h // rh) of the box asked.
        im.draft("RGB", (max(1, w // k), max(1, h // k)))


def shrink(im: Image.Image) -> Image.Image:
    """The RGB thumbnail of a loaded image."""
    if im.mode not in _AVERAGEABLE:
        transparent = im.mode in ("P", "PA") and "transparency" in im.info
        im = im.convert("RGBA" if transparent or im.mode == "PA" else "RGB")
    # k = floor(side / THUMB_MIN) leaves side / k in [THUMB_MIN, 2 * THUMB_MIN): within the
    # range, since THUMB_SIDE is twice THUMB_MIN. No resampling is ever needed.
    k = max(im.size) // THUMB_MIN
    if k >= 2:
        im = im.reduce(k)
    return im.convert("RGB")


def save_thumbnail(thumb: Image.Image, dest: Path) -> None:
    """Write ``thumb`` at ``dest`` by a rename, so a reader never sees half a JPEG."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.part")
    thumb.save(tmp, "JPEG", quality=THUMB_QUALITY)
    os.replace(tmp, dest)


def make_thumbnail(src: Path, dest: Path) -> bool:
    """Write the thumbnail of ``src`` at ``dest``; False if ``src`` is unreadable."""
    try:
        with Image.open(src, formats=["PNG", "JPEG", "WEBP"]) as im:
            plan_decode(im)
            im.load()
            thumb = shrink(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False
    save_thumbnail(thumb, dest)
    return True
