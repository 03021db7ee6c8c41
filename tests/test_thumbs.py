"""Gallery thumbnails made from the decode that checks the image.

A thumbnail must fit the gallery's card (at most THUMB_SIDE, at least THUMB_MIN on its long
side, never upscaled), look like its image, and the one decode that makes it must still
refuse a broken file: making thumbnails cheap must not make the check weaker.
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageStat

from batchgen.errors import DownloadError
from batchgen.outputs.checks import check_file
from batchgen.outputs.thumbs import THUMB_MIN, THUMB_SIDE, make_thumbnail, thumb_name

SIZES = [(1024, 1024), (1536, 1024), (1024, 1536), (816, 816), (1472, 1472), (3840, 2160)]


def scene(w: int, h: int) -> Image.Image:
    """Left half red, right half blue, a white bar across: colours a wrong scale would move."""
    im = Image.new("RGB", (w, h), (200, 30, 30))
    draw = ImageDraw.Draw(im)
    draw.rectangle((w // 2, 0, w, h), fill=(30, 30, 200))
    draw.rectangle((0, h // 3, w, h // 3 + h // 10), fill=(255, 255, 255))
    return im


def scaled(box: tuple[float, ...], w: int, h: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return int(x0 * w), int(y0 * h), int(x1 * w), int(y1 * h)


def write(tmp: Path, im: Image.Image, fmt: str) -> Path:
    path = tmp / f"img.{fmt}"
    im.save(path, {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt], quality=90)
    return path


def thumb_of(tmp: Path, path: Path, fmt: str) -> Image.Image:
    checked = check_file(str(path), fmt, durable=False, thumbs=str(tmp))
    assert checked.thumbnail
    with Image.open(tmp / thumb_name(checked.sha256)) as t:
        t.load()
        return t


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
@pytest.mark.parametrize(("w", "h"), SIZES)
def test_a_thumbnail_fits_the_card_and_looks_like_its_image(
    tmp_path: Path, fmt: str, w: int, h: int
) -> None:
    src = scene(w, h)
    t = thumb_of(tmp_path, write(tmp_path, src, fmt), fmt)
    assert t.format == "JPEG" and t.mode == "RGB"
    assert THUMB_MIN <= max(t.size) <= THUMB_SIDE
    assert abs(t.width / t.height - w / h) < 0.02  # the shape is kept
    # Never resampled: the image shrinks by a whole factor (the decoder's or reduce()'s).
    k = round(max(w, h) / max(t.size))
    assert k >= 1 and abs(max(w, h) / k - max(t.size)) <= 1, (k, t.size)
    # Same picture: each quarter's mean colour within a few levels of the source's.
    for box in [(0, 0, 0.25, 0.25), (0.75, 0.75, 1, 1), (0, 0.5, 0.5, 1), (0.5, 0, 1, 0.3)]:
        a = ImageStat.Stat(src.crop(scaled(box, w, h)))
        b = ImageStat.Stat(t.crop(scaled(box, *t.size)))
        assert max(abs(x - y) for x, y in zip(a.mean, b.mean, strict=True)) < 12, (box, a, b)


def test_a_small_image_is_not_upscaled_and_a_palette_one_is_averaged(tmp_path: Path) -> None:
    small = tmp_path / "small.jpg"
    scene(100, 80).save(small, "JPEG")
    assert make_thumbnail(small, tmp_path / "t1.jpg")
    with Image.open(tmp_path / "t1.jpg") as t1:
        assert t1.size == (100, 80)
    # One-pixel stripes of black and white: averaged, they are grey; picked by nearest
    # neighbour (what Pillow does to a palette image unless it is converted) they are not.
    stripes = Image.new("P", (1024, 1024), 0)
    stripes.putpalette([0, 0, 0, 255, 255, 255])
    draw = ImageDraw.Draw(stripes)
    for x in range(1, 1024, 2):
        draw.line((x, 0, x, 1023), fill=1)
    stripes.save(tmp_path / "p.png")
    assert make_thumbnail(tmp_path / "p.png", tmp_path / "t2.jpg")
    with Image.open(tmp_path / "t2.jpg") as t2:
        lo, hi = ImageStat.Stat(t2.convert("L")).extrema[0]
    assert lo > 100 and hi < 160


def test_the_thumbnails_decode_still_refuses_a_truncated_jpeg(tmp_path: Path) -> None:
    good = write(tmp_path, scene(1024, 1024), "jpeg").read_bytes()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(good[: len(good) * 2 // 3])
    with pytest.raises(DownloadError) as info:
        check_file(str(bad), "jpeg", durable=False, thumbs=str(tmp_path))
    assert info.value.reason == "not_image"
    assert not list((tmp_path / ".thumbs").rglob("*.jpg"))


def test_a_png_with_good_crcs_but_broken_pixels_is_refused_when_thumbnailed(
    tmp_path: Path,
) -> None:
    """Chunk CRCs alone pass a PNG whose compressed pixels are garbage; the thumbnail's
    decode reads them, so such a file is not saved as an image."""
    buf = io.BytesIO()
    scene(512, 512).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    at = data.index(b"IDAT")
    length = int.from_bytes(data[at - 4 : at], "big")
    body = bytearray(data[at + 4 : at + 4 + length])
    body[len(body) // 2 : len(body) // 2 + 64] = b"\xff" * 64  # garble the deflate stream
    crc = zlib.crc32(b"IDAT" + body).to_bytes(4, "big")
    data[at + 4 : at + 8 + length] = body + crc
    bad = tmp_path / "bad.png"
    bad.write_bytes(bytes(data))
    with pytest.raises(DownloadError) as info:
        check_file(str(bad), "png", durable=False, thumbs=str(tmp_path))
    assert info.value.reason == "not_image"
