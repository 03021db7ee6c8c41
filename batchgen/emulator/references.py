"""Edit requests on the emulator: which reference images it accepts, and what it keeps of them.

fal's edit app fetches every ``image_urls`` entry (and ``mask_url``) before it runs. The
emulator can only "fetch" what it holds, so it accepts a ``data:`` URI or a URL it handed out
itself (a file uploaded to its storage, or an image it generated) and refuses anything else as
an input error: the request completes with a 422 whose ``detail`` list names the field, as fal
reports validation errors (docs/fal.md, The result). A client that sends a local path, or forgot to
upload, therefore fails loudly in tests instead of passing unnoticed.

Of an accepted request it keeps a thumbnail of the first reference, which the rendered result
shows in its corner (so a test can tell an edit from a text-to-image job), and that image's
size, from which ``image_size: auto`` takes its aspect.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from PIL import Image

from batchgen.emulator.images import ImageSpec, render
from batchgen.emulator.storage import FileStore
from batchgen.planning import gptimage

THUMB_SIDE = 256  # the kept thumbnail's longest side
AUTO_PIXELS = 1024 * 1024  # what `auto` aims at: fal's usual 1-megapixel output


@dataclass(frozen=True, slots=True)
class Reference:
    """What the emulator keeps of a request's first reference image."""

    thumbnail: bytes  # PNG, longest side at most THUMB_SIDE
    width: int
    height: int


def check_references(
    body: Mapping[str, Any], *, base: str, files: FileStore, media: Mapping[str, ImageSpec]
) -> tuple[list[gptimage.InputProblem], Reference | None]:
    """(problems, first reference) of an edit request's image_urls and mask_url."""
    problems: list[gptimage.InputProblem] = []
    first: Reference | None = None
    urls = body.get("image_urls")
    named: list[tuple[str, Any]] = []
    if isinstance(urls, list):
        named += [(f"image_urls.{i}", u) for i, u in enumerate(urls)]
    if "mask_url" in body:
        named.append(("mask_url", body["mask_url"]))
    for where, url in named:
        if not isinstance(url, str):
            continue  # validate_input reports the type
        data = fetch(url, base=base, files=files, media=media)
        if data is None:
            problems.append(
                gptimage.InputProblem(
                    where,
                    f"could not fetch {url[:80]!r}: use a data URI or a URL from fal storage "
                    "(upload local files first)",
                )
            )
            continue
        try:
            ref = _reference(data, thumbnail=first is None and where != "mask_url")
        except ValueError:
            problems.append(gptimage.InputProblem(where, "the file is not an image"))
            continue
        if first is None and ref is not None:
            first = ref
    return problems, first


def fetch(url: str, *, base: str, files: FileStore, media: Mapping[str, ImageSpec]) -> bytes | None:
    """The bytes behind a data URI or one of this server's own URLs; None for anything else."""
    if url[:5].lower() == "data:":
        meta, sep, payload = url[5:].partition(",")
        if not sep or not meta.endswith(";base64"):
            return None
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            return None
    parts, mine = urlsplit(url), urlsplit(base)
    if (parts.scheme, parts.netloc) != (mine.scheme, mine.netloc):
        return None
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if len(segments) == 3 and segments[0] == "files":
        stored = files.files.get(segments[1])
        return stored.data if stored is not None else None
    if len(segments) == 3 and segments[0] == "media":
        spec = media.get(segments[1])
        return render(spec) if spec is not None else None
    return None


def _reference(data: bytes, *, thumbnail: bool) -> Reference | None:
    try:
        with Image.open(io.BytesIO(data)) as img:
            size = img.size
            if not thumbnail:
                img.verify()
                return None
            img.thumbnail((THUMB_SIDE, THUMB_SIDE))
            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="PNG")
    except Exception as exc:  # Pillow raises many kinds for a file that is not an image
        raise ValueError("not an image") from exc
    return Reference(buf.getvalue(), size[0], size[1])


def auto_size(width: int, height: int) -> tuple[int, int]:
    """The output size for ``image_size: auto``: the reference's aspect (clamped to 3:1) at
    about one megapixel, both sides multiples of 16, so it obeys the model's size rules."""
    ratio = min(max(width / max(height, 1), 1 / gptimage.MAX_RATIO), gptimage.MAX_RATIO)
    step = gptimage.SIDE_MULTIPLE
    w = max(step, round(math.sqrt(AUTO_PIXELS * ratio) / step) * step)
    h = max(step, round(math.sqrt(AUTO_PIXELS / ratio) / step) * step)
    # Rounding may push the ratio a hair past 3:1; grow the short side back inside.
    while max(w, h) > gptimage.MAX_RATIO * min(w, h):
        if w < h:
            w += step
        else:
            h += step
    return w, h
