"""Quality flags of one image, measured from the small image the check already decoded
(:mod:`checks`: the gallery's thumbnail, 240-480 px on its long side): no second decode.

- ``blank``: a near-uniform image, as a refused or failed generation often returns (a black,
  grey or flat-colour frame). The test is the standard deviation of the thumbnail's grayscale
  pixels (0-255): below ``BLANK_STDDEV`` it is blank. A flat colour gives 0 in any of the
  three formats; a flat background with a line of words on it (the emulator's placeholders,
  tests/test_quality.py) stays far above. A real photograph this flat is itself a fault.
- ``phash``: a 64-bit difference hash (dHash) as 16 lowercase hex digits: the grayscale image
  averaged down to 9x8 pixels, one bit per pair of horizontal neighbours (1 where the left one
  is brighter), rows top to bottom, most significant bit first. Re-encoding, resizing or
  slight edits change few bits; different pictures differ in about half of them. A uniform
  image hashes to ``0000000000000000``. :mod:`neardup` groups hashes a few bits apart.

Pure: Pillow only, a function of the pixels, so a worker process computes it beside the
checks (its cost is well under a millisecond on a thumbnail).
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageStat

BLANK_STDDEV = 3.0  # grayscale standard deviation (of 255) below which an image is blank
HASH_W, HASH_H = 9, 8  # 8 comparisons a row, 8 rows: 64 bits


@dataclass(frozen=True, slots=True)
class Quality:
    blank: bool
    phash: str
    stddev: float


def measure(im: Image.Image) -> Quality:
    """The flags of a decoded image (any mode; best a thumbnail, as the checks pass)."""
    gray = im.convert("L")
    stddev = float(ImageStat.Stat(gray).stddev[0])
    return Quality(stddev < BLANK_STDDEV, dhash(gray), stddev)


def dhash(gray: Image.Image) -> str:
    """The difference hash of a grayscale image, 16 hex digits."""
    small = gray.resize((HASH_W, HASH_H), Image.Resampling.BOX)
    px = small.tobytes()
    bits = 0
    for y in range(HASH_H):
        row = px[y * HASH_W : (y + 1) * HASH_W]
        for x in range(HASH_W - 1):
            bits = (bits << 1) | (row[x] > row[x + 1])
    return f"{bits:016x}"
