"""How much disk a set of jobs will take: an estimate by size, quality and format, made
before the first submit so that a run which cannot fit is said to be so while nothing is
paid for yet (``batchgen plan`` and ``batchgen run``).

The figures are averages, not promises: an image's bytes depend on what it shows. For fal's
real output they are assumed from typical gpt-image files (a photographic PNG keeps about half
of its 3 MB of raw pixels per megapixel; JPEG and WebP at the model's default compression of
100 keep far less); for the emulator they are measured from its own placeholders (flat colour
and a line of text, as ``emulator/images.py`` renders them). docs/outputs.md, Disk
space, lists them. Each image also costs its thumbnail, its index row and its journal entry.
"""

from __future__ import annotations

from collections.abc import Iterable

from batchgen.planning.gptimage import DEFAULTS, resolved_dimensions
from batchgen.planning.jobs import JobSpec

MB = 1_000_000
# Bytes per megapixel of fal's output, by format and quality (assumed averages).
REAL_PER_MEGAPIXEL: dict[str, dict[str, float]] = {
    "png": {"low": 1.2 * MB, "medium": 1.5 * MB, "high": 1.8 * MB},
    "jpeg": {"low": 0.45 * MB, "medium": 0.6 * MB, "high": 0.75 * MB},
    "webp": {"low": 0.3 * MB, "medium": 0.4 * MB, "high": 0.5 * MB},
}
# The emulator's placeholders, measured (any quality): flat colour compresses to almost
# nothing as PNG.
EMULATED_PER_MEGAPIXEL: dict[str, float] = {"png": 0.003 * MB, "jpeg": 0.04 * MB, "webp": 0.02 * MB}
# The thumbnail (a small JPEG), the index row and the journal's share of one image.
PER_IMAGE = 24_000
# `auto` lets the model pick: 1024x1024 or 1536x1024, about 1.3 megapixels on average.
AUTO_MEGAPIXELS = 1.3


def image_bytes(spec: JobSpec, *, emulated: bool) -> int:
    """The disk one image of ``spec`` is expected to take, everything included."""
    request = {**DEFAULTS.get(spec.endpoint, {}), **spec.input}
    fmt = str(request.get("output_format", "png")).lower()
    dims = resolved_dimensions(request.get("image_size"))
    megapixels = dims[0] * dims[1] / 1e6 if dims is not None else AUTO_MEGAPIXELS
    if emulated:
        per = EMULATED_PER_MEGAPIXEL.get(fmt, EMULATED_PER_MEGAPIXEL["jpeg"])
    else:
        by_quality = REAL_PER_MEGAPIXEL.get(fmt, REAL_PER_MEGAPIXEL["png"])
        per = by_quality.get(str(request.get("quality", "high")), by_quality["high"])
    return int(per * megapixels) + PER_IMAGE


def jobs_bytes(specs: Iterable[JobSpec], *, emulated: bool) -> int:
    """The disk every image of ``specs`` is expected to take."""
    return sum(image_bytes(s, emulated=emulated) * s.num_images for s in specs)


# Every size batchgen prints is in binary units (1 KiB = 1,024 bytes), as ls -lh and df -h
# count: the limits it sets are round in them (a 32 MiB manifest, a 50 MiB reference image).
SIZE_UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB")


def size_text(n: float) -> str:
    """Bytes for a person, in binary units: "900 bytes", "812 KiB", "3.4 GiB", "50 MiB"."""
    for unit in SIZE_UNITS:
        if abs(n) < 1024 or unit == SIZE_UNITS[-1]:
            if unit in SIZE_UNITS[:2]:
                return f"{n:.0f} {unit}"
            return f"{n:.1f}".removesuffix(".0") + f" {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def over_limit_text(size: int, limit: int) -> tuple[str, str]:
    """``size`` and the ``limit`` it passes, in the same units; in bytes when rounding would
    show them equal (a file one byte over 50 MiB is not "50 MiB, at most 50 MiB")."""
    shown = size_text(size), size_text(limit)
    return shown if shown[0] != shown[1] else (f"{size:,} bytes", f"{limit:,} bytes")
