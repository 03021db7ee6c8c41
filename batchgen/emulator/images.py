"""Real image files for the emulator's results: the requested size and format, one colour per
prompt (from its hash) with the prompt's text drawn on it, so a gallery of emulated output
shows at a glance which prompt made which picture.

Rendering a 4K PNG costs tens of milliseconds, and a run asks for the same bytes twice (once
for ``file_size`` in the result, once for the download), so rendered files are cached.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import textwrap
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont
from starlette.concurrency import run_in_threadpool

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
CACHE_ENTRIES = 128


@dataclass(frozen=True, slots=True)
class ImageSpec:
    """Everything that decides an image's bytes; equal specs render identical files."""

    prompt: str
    width: int
    height: int
    fmt: str  # png | jpeg | webp
    index: int = 0  # which of num_images
    reference: bytes | None = None  # an edit's first reference (PNG thumbnail), shown inset
    blank: bool = False  # one flat colour, nothing drawn (faults: blank)

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.fmt]

    @property
    def extension(self) -> str:
        return "jpg" if self.fmt == "jpeg" else self.fmt


def colour_for(prompt: str, index: int = 0) -> tuple[int, int, int]:
    """A saturated colour from the prompt's hash; later images of a request shift the hue."""
    digest = hashlib.sha256(prompt.encode()).digest()
    hue = (digest[0] / 256 + index * 0.17) % 1.0
    sat = 0.45 + digest[1] / 255 * 0.4
    val = 0.55 + digest[2] / 255 * 0.35
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return int(r * 255), int(g * 255), int(b * 255)


def render(spec: ImageSpec) -> bytes:
    """The encoded image (cached)."""
    return _render_cached(spec)


async def render_async(spec: ImageSpec) -> bytes:
    """``render`` off the event loop: Pillow releases the GIL while encoding, so a big image
    does not stall every other request the emulator is serving."""
    return await run_in_threadpool(_render_cached, spec)


@lru_cache(maxsize=CACHE_ENTRIES)
def _render_cached(spec: ImageSpec) -> bytes:
    if spec.fmt not in _PIL_FORMATS:
        raise ValueError(f"unsupported image format {spec.fmt!r}")
    bg = colour_for(spec.prompt, spec.index)
    fg = (0, 0, 0) if sum(bg) > 382 else (255, 255, 255)
    # A two-colour palette image: PNG encodes it ~10x faster than RGB (1 byte per pixel and
    # long runs), which is what keeps a 4K run from burning the CPU.
    img = Image.new("P", (spec.width, spec.height), 0)
    img.putpalette([*bg, *fg])
    if spec.blank:  # what a refused or failed generation often returns: nothing on it
        return _encoded(img, spec.fmt)
    draw = ImageDraw.Draw(img)
    # Text scales with the short side so it stays readable in thumbnails and at 4K.
    size = max(12, min(spec.width, spec.height) // 18)
    font = ImageFont.load_default(size=size)
    chars = max(10, int(spec.width / (size * 0.6)) - 2)
    lines = textwrap.wrap(spec.prompt, chars)[:8] or ["(empty prompt)"]
    lines.append(f"#{spec.index}  {spec.width}x{spec.height}")
    y = size
    for line in lines:
        draw.text((size, y), line, fill=1, font=font)
        y += int(size * 1.3)
    if spec.reference is not None:
        img = _inset(img, spec.reference)
    return _encoded(img, spec.fmt)


def _encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG")
    elif fmt == "webp":
        img.convert("RGB").save(buf, format="WEBP", quality=80, method=0)  # method 0: fastest
    else:
        img.convert("RGB").save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def inset_box(width: int, height: int) -> tuple[int, int, int, int]:
    """Where an edit shows its reference: within a square a third of the short side, bottom
    right (the thumbnail keeps its aspect and sits in that square's bottom-right corner)."""
    side = max(8, min(width, height) // 3)
    margin = max(2, min(width, height) // 24)
    left, top = width - side - margin, height - side - margin
    return left, top, left + side, top + side


def _inset(img: Image.Image, reference: bytes) -> Image.Image:
    """The picture with the reference's thumbnail pasted in (a white frame around it), so an
    edit's output visibly used its input."""
    out = img.convert("RGB")
    left, top, right, bottom = inset_box(*out.size)
    with Image.open(io.BytesIO(reference)) as ref:
        scale = min((right - left) / ref.width, (bottom - top) / ref.height)
        size = (max(1, round(ref.width * scale)), max(1, round(ref.height * scale)))
        thumb = ref.convert("RGB").resize(size)
    left, top = right - thumb.width, bottom - thumb.height
    frame = max(1, (right - left) // 32)
    ImageDraw.Draw(out).rectangle(
        (left - frame, top - frame, right + frame - 1, bottom + frame - 1), fill=(255, 255, 255)
    )
    out.paste(thumb, (left, top))
    return out
