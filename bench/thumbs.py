"""What a gallery thumbnail costs per image, and what it weighs, for the thumbnail range in use
and for the earlier 240-320 px one. Measures, never asserts.

    python bench/thumbs.py                 # every size and format below, 40 images each
    python bench/thumbs.py --count 100 --formats jpeg

Each image goes through ``check_file`` exactly as a run's check worker calls it (sha256, the
scaled decode that checks it, the thumbnail, no fsync), on this thread, timed by its CPU
clock. "earlier" swaps in the 240-320 px ``shrink`` kept below as the reference: it resampled
(bilinear) whatever no integer scale brought under 320 px. Both run in the same process,
alternating image by image, so the ratio holds on a noisy machine.

The pictures are synthetic (no photos ship with the project): a smooth colour field with
grain, which compresses like a photo does, and the emulator's own picture.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image, ImageFilter

from batchgen.emulator.images import ImageSpec, render
from batchgen.outputs import checks
from batchgen.outputs.thumbs import THUMB_MIN, shrink, thumb_name

SIZES = [
    (1024, 1024),
    (1536, 1024),
    (1024, 1536),
    (816, 816),
    (1312, 1312),
    (1472, 1472),
    (3840, 2160),
]
PIL_FORMAT = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


def earlier_shrink(im: Image.Image) -> Image.Image:
    """The 240-320 px thumbnail as it was made before (reference only)."""
    if im.mode not in ("RGB", "RGBA", "L", "LA"):
        im = im.convert("RGB")
    k = max(im.size) // THUMB_MIN
    if k >= 2:
        im = im.reduce(k)
    if max(im.size) > 320:
        im.thumbnail((320, 320), resample=Image.Resampling.BILINEAR, reducing_gap=None)
    return im.convert("RGB")


def photo_like(w: int, h: int, seed: int) -> Image.Image:
    """Smooth colour regions plus fine grain: entropy close to a photograph's."""
    small = Image.effect_noise((max(1, w // 64), max(1, h // 64)), 60 + seed % 7)
    field = Image.merge("RGB", [small.point(lambda v, o=o: (v + o) % 256) for o in (0, 85, 170)])
    field = field.resize((w, h), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(3))
    grain = Image.effect_noise((w, h), 12).convert("RGB")
    return Image.blend(field, grain, 0.12)


def encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, PIL_FORMAT[fmt], quality=90)
    return buf.getvalue()


def measure(files: list[Path], fmt: str, folder: Path) -> dict[str, tuple[float, float]]:
    """{variant: (median CPU ms per image, mean thumbnail KB)}, alternating the variants."""
    variants: dict[str, Callable[[Image.Image], Image.Image]] = {
        "now": shrink,
        "earlier": earlier_shrink,
    }
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    size: dict[str, list[int]] = {v: [] for v in variants}
    for i, path in enumerate(files):
        for name, fn in variants.items():
            thumbs = folder / f"t-{name}-{i}"
            checks.shrink = fn  # the name check_file calls
            t0 = time.thread_time()
            got = checks.check_file(str(path), fmt, durable=False, thumbs=str(thumbs))
            cpu[name].append(time.thread_time() - t0)
            size[name].append((thumbs / thumb_name(got.sha256)).stat().st_size)
    checks.shrink = shrink
    return {
        v: (statistics.median(cpu[v]) * 1e3, statistics.fmean(size[v]) / 1024) for v in variants
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=40, help="images per size, format and kind")
    ap.add_argument("--formats", nargs="+", default=["jpeg", "png", "webp"])
    a = ap.parse_args()
    print(
        f"bench/thumbs.py: check_file with a thumbnail, {a.count} images each; CPU ms per "
        "image (median) and thumbnail KB (mean), the range in use vs the earlier 240-320 px"
    )
    print(
        f"{'picture':<10} {'size':>10} {'format':>6} {'ms now':>7} {'earlier':>8} "
        f"{'ratio':>6} {'KB now':>7} {'earlier':>8}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for kind in ("photo", "emulator"):
            for w, h in SIZES:
                for fmt in a.formats:
                    files = []
                    for i in range(a.count):
                        if kind == "photo":
                            data = encode(photo_like(w, h, i), fmt)
                        else:  # distinct prompts: distinct files and thumbnails
                            data = render(ImageSpec(f"thumbs bench {i}", w, h, fmt))
                        path = folder / f"{kind}-{w}x{h}-{i}.{fmt}"
                        path.write_bytes(data)
                        files.append(path)
                    got = measure(files, fmt, folder)
                    (now, kb), (old, kb_old) = got["now"], got["earlier"]
                    print(
                        f"{kind:<10} {f'{w}x{h}':>10} {fmt:>6} {now:>7.2f} {old:>8.2f} "
                        f"{now / old:>6.2f} {kb:>7.1f} {kb_old:>8.1f}",
                        flush=True,
                    )
                    for path in files:
                        path.unlink()


if __name__ == "__main__":
    main()
