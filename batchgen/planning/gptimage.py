"""What `openai/gpt-image-2` and `openai/gpt-image-2/edit` accept (docs/manifest.md, Request
fields).

Pure rules, shared by the manifest validator (plan time) and the emulator (server side), so
the two can never disagree about what a valid request is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TEXT_TO_IMAGE = "openai/gpt-image-2"
EDIT = "openai/gpt-image-2/edit"
KNOWN_ENDPOINTS = frozenset({TEXT_TO_IMAGE, EDIT})

QUALITIES = ("low", "medium", "high")
OUTPUT_FORMATS = ("jpeg", "png", "webp")
MIN_IMAGES, MAX_IMAGES = 1, 4
MIN_PIXELS, MAX_PIXELS = 655_360, 8_294_400
MAX_SIDE = 3840
MAX_RATIO = 3.0
SIDE_MULTIPLE = 16

# fal's usual preset dimensions. Two of them fall below the model's pixel minimum; we assume
# fal maps those up (square -> 1024², 16:9 -> 1360×768) — an assumption, so batchgen always
# records the size of the image actually received and never trusts this table for that.
PRESETS: Mapping[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (1024, 1024),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (768, 1360),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1360, 768),
}
AUTO = "auto"  # edit only: infer from the reference images
# A custom size written as text ("1536x1024", "1536 X 1024", "1536×1024"): what a manifest
# accepts besides {width, height}; the request itself always carries the mapping.
_SIZE_TEXT = re.compile(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*")

DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    TEXT_TO_IMAGE: {
        "image_size": "landscape_4_3",
        "quality": "high",
        "num_images": 1,
        "output_format": "png",
        "sync_mode": False,
    },
    EDIT: {
        "image_size": AUTO,
        "quality": "high",
        "num_images": 1,
        "output_format": "png",
        "sync_mode": False,
    },
}

FIELDS: Mapping[str, frozenset[str]] = {
    TEXT_TO_IMAGE: frozenset(DEFAULTS[TEXT_TO_IMAGE]) | {"prompt"},
    EDIT: frozenset(DEFAULTS[EDIT]) | {"prompt", "image_urls", "mask_url"},
}


# An unknown endpoint id this close to a known one (edits, case aside) is taken for a typo of
# it: `openai/gpt-image2` would otherwise run unchecked and unpriced. Two edits catch a
# dropped, doubled or swapped character without reaching other real ids.
TYPO_DISTANCE = 2


def resembles_known(endpoint: str) -> str | None:
    """The known endpoint id that ``endpoint`` looks like a typo of, or None.

    Ids that differ from a known one only in digits (``openai/gpt-image-1``) name another
    version of the model, not a typo, and are left alone.
    """
    if endpoint in KNOWN_ENDPOINTS:
        return None
    best: tuple[int, str] | None = None
    for known in sorted(KNOWN_ENDPOINTS):
        a, b = endpoint.lower(), known.lower()
        if a != b and _only_digits_differ(a, b):
            continue
        d = _distance(a, b)
        if d <= TYPO_DISTANCE and (best is None or d < best[0]):
            best = (d, known)
    return best[1] if best else None


def _only_digits_differ(a: str, b: str) -> bool:
    return len(a) == len(b) and all(
        x == y or (x.isdigit() and y.isdigit()) for x, y in zip(a, b, strict=True)
    )


def _distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        cur = [i]
        for j, y in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


@dataclass(frozen=True, slots=True)
class InputProblem:
    field: str  # dotted path inside the request input, e.g. "image_size.width"
    message: str


def custom_size_problems(width: Any, height: Any) -> list[InputProblem]:
    """Every rule a custom {width, height} breaks (empty when it is valid)."""
    out: list[InputProblem] = []
    sides = {"width": width, "height": height}
    for name, v in sides.items():
        if isinstance(v, bool) or not isinstance(v, int):
            out.append(InputProblem(f"image_size.{name}", f"must be an integer, got {v!r}"))
        elif v <= 0:
            out.append(InputProblem(f"image_size.{name}", f"must be positive, got {v}"))
        elif v % SIDE_MULTIPLE:
            out.append(InputProblem(f"image_size.{name}", f"must be a multiple of 16, got {v}"))
        elif v > MAX_SIDE:
            out.append(InputProblem(f"image_size.{name}", f"must be at most {MAX_SIDE}, got {v}"))
    if out:
        return out
    w, h = int(width), int(height)
    if max(w, h) / min(w, h) > MAX_RATIO:
        out.append(InputProblem("image_size", f"aspect ratio of {w}x{h} is over 3:1"))
    pixels = w * h
    if not MIN_PIXELS <= pixels <= MAX_PIXELS:
        out.append(
            InputProblem(
                "image_size",
                f"{w}x{h} is {pixels:,} pixels; it must be between {MIN_PIXELS:,} and "
                f"{MAX_PIXELS:,}",
            )
        )
    return out


def parse_size_text(text: str) -> dict[str, int] | None:
    """``"1536x1024"`` as ``{"width": 1536, "height": 1024}``; None when it is not that form."""
    m = _SIZE_TEXT.fullmatch(text)
    return {"width": int(m.group(1)), "height": int(m.group(2))} if m else None


def size_problems(value: Any, *, endpoint: str, size_text: bool = False) -> list[InputProblem]:
    """Every rule an ``image_size`` breaks. ``size_text``: the value comes from a manifest,
    which also takes ``WIDTHxHEIGHT`` text (checked as the mapping it stands for)."""
    if isinstance(value, str):
        if value in PRESETS or (value == AUTO and endpoint == EDIT):
            return []
        parsed = parse_size_text(value) if size_text else None
        if parsed is not None:
            return custom_size_problems(parsed["width"], parsed["height"])
        allowed = ", ".join([*PRESETS, *([AUTO] if endpoint == EDIT else [])])
        custom = "{width, height}"
        if size_text:
            custom = "WIDTHxHEIGHT (like 1536x1024) or " + custom
        return [
            InputProblem(
                "image_size",
                f"unknown preset {value!r}; use one of {allowed}, or a custom size as {custom}",
            )
        ]
    if isinstance(value, Mapping):
        extra = set(value) - {"width", "height"}
        if extra:
            return [InputProblem("image_size", f"unknown keys {sorted(extra)}; use width, height")]
        if "width" not in value or "height" not in value:
            return [InputProblem("image_size", "a custom size needs both width and height")]
        return custom_size_problems(value["width"], value["height"])
    forms = "WIDTHxHEIGHT text, " if size_text else ""
    return [
        InputProblem(
            "image_size", f"must be a preset name, {forms}or {{width, height}}, got {value!r}"
        )
    ]


def validate_input(
    endpoint: str, request: Mapping[str, Any], *, strict: bool = True, size_text: bool = False
) -> list[InputProblem]:
    """Every problem with one request body for a known endpoint ([] for unknown endpoints).

    ``strict`` rejects unknown fields (the manifest wants typos caught); the emulator passes
    ``strict=False`` because fal's apps ignore fields they do not know. ``size_text`` accepts
    ``WIDTHxHEIGHT`` text for ``image_size``, as a manifest does (never on the wire).
    """
    if endpoint not in KNOWN_ENDPOINTS:
        return []
    out: list[InputProblem] = []
    if strict:
        for key in sorted(set(request) - FIELDS[endpoint] - {"openai_api_key"}):
            out.append(InputProblem(key, f"unknown field for {endpoint}"))
    prompt = request.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        out.append(InputProblem("prompt", "must be a non-empty string"))
    if "image_size" in request:
        out.extend(size_problems(request["image_size"], endpoint=endpoint, size_text=size_text))
    q = request.get("quality", "high")
    if q not in QUALITIES:
        out.append(InputProblem("quality", f"must be one of {', '.join(QUALITIES)}, got {q!r}"))
    f = request.get("output_format", "png")
    if f not in OUTPUT_FORMATS:
        out.append(
            InputProblem("output_format", f"must be one of {', '.join(OUTPUT_FORMATS)}, got {f!r}")
        )
    n = request.get("num_images", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not MIN_IMAGES <= n <= MAX_IMAGES:
        out.append(InputProblem("num_images", f"must be an integer from 1 to 4, got {n!r}"))
    if not isinstance(request.get("sync_mode", False), bool):
        out.append(InputProblem("sync_mode", "must be true or false"))
    if endpoint == EDIT:
        urls = request.get("image_urls")
        if (
            not isinstance(urls, list)
            or not urls
            or not all(isinstance(u, str) and u for u in urls)
        ):
            out.append(InputProblem("image_urls", "must be a non-empty list of URLs"))
        if "mask_url" in request and not isinstance(request["mask_url"], str):
            out.append(InputProblem("mask_url", "must be a URL string"))
    return out


def resolved_dimensions(image_size: Any) -> tuple[int, int] | None:
    """The (width, height) a size asks for, or None for `auto` / unknown values."""
    if isinstance(image_size, str):
        return PRESETS.get(image_size)
    if isinstance(image_size, Mapping):
        w, h = image_size.get("width"), image_size.get("height")
        if isinstance(w, int) and isinstance(h, int):
            return (w, h)
    return None


def with_defaults(endpoint: str, request: Mapping[str, Any]) -> dict[str, Any]:
    """The request with the endpoint's documented defaults filled in (known endpoints only)."""
    return {**DEFAULTS.get(endpoint, {}), **request}
