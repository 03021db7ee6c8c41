"""BYOK requests in the emulator: the key check, the ``usage`` object, the echoed input.

A request is BYOK when it carries ``openai_api_key`` or is posted to a BYOK endpoint id (one
with a ``byok`` path segment, see ``batchgen.fal.byok``). fal documents the BYOK request shapes
(a required ``openai_api_key``, an extra ``usage`` in the output) but not how they fail, so
the emulator chooses the cases batchgen must survive, worst first:

* A BYOK endpoint id checks its input by the rules of the endpoint it names without the
  segment (``openai/gpt-image-2/byok`` follows ``openai/gpt-image-2``), and a missing or empty
  key is a 422 ``detail`` item at ``body.openai_api_key``.
* A key OpenAI would not accept (one that does not start with ``sk-``) is a 422 whose message
  quotes the key in full. OpenAI itself masks most of it; quoting all of it is the worst case
  for batchgen's scrubbing, which is the point.
* Every 422 item of a BYOK request echoes the whole request body as its ``input``, as a
  FastAPI model-level validator does, so the key is in the error body on every failure.
* A successful BYOK request gets ``usage`` with deterministic, plausible token counts: the
  output tokens are the published per-image price at $30 per million tokens (so the real
  cost lands near the estimate), text input is one token per 4 prompt characters, and each
  reference image or mask counts ``IMAGE_INPUT_TOKENS``.

The key is kept in the request's input in memory only, like any input; it never reaches a
log line, the stats route (which counts inputs by hash) or a response other than those 422s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from batchgen.fal.byok import KEY_FIELD, base_endpoint, is_byok_endpoint
from batchgen.planning import gptimage
from batchgen.planning.pricing import DEFAULT_TABLE, IMAGE_OUTPUT_PER_M

KEY_PREFIX = "sk-"  # what OpenAI keys look like; anything else is refused
IMAGE_INPUT_TOKENS = 765  # per reference image or mask (a 1024×1024 image in 512 px tiles)
CHARS_PER_TOKEN = 4


def is_byok(endpoint: str, body: Mapping[str, Any]) -> bool:
    return KEY_FIELD in body or is_byok_endpoint(endpoint)


def problems(endpoint: str, body: Mapping[str, Any]) -> list[gptimage.InputProblem]:
    """What is wrong with a BYOK request beyond the base rules (``[]`` for other requests)."""
    if not is_byok(endpoint, body):
        return []
    out: list[gptimage.InputProblem] = []
    if is_byok_endpoint(endpoint):
        # The plain ids are already checked by the model; a BYOK id follows its base's rules.
        out.extend(gptimage.validate_input(base_endpoint(endpoint), body, strict=False))
    key = body.get(KEY_FIELD)
    if not isinstance(key, str) or not key.strip():
        out.append(gptimage.InputProblem(KEY_FIELD, "Field required: a non-empty OpenAI key"))
    elif not key.startswith(KEY_PREFIX):
        out.append(gptimage.InputProblem(KEY_FIELD, f"Incorrect API key provided: {key}"))
    return out


def echo_input(
    detail: list[dict[str, Any]], endpoint: str, body: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """A BYOK request's 422 ``detail`` items with the whole body as their ``input``."""
    if not is_byok(endpoint, body):
        return detail
    return [{**item, "input": dict(body)} for item in detail]


def usage(endpoint: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``usage`` object of a successful BYOK request, or None for any other request."""
    if not is_byok(endpoint, body):
        return None
    base = base_endpoint(endpoint)
    spec = gptimage.with_defaults(base, body)
    n = spec.get("num_images", 1)
    count = n if isinstance(n, int) and 1 <= n <= gptimage.MAX_IMAGES else 1
    # Priced as text to image whatever the id: the per-image table is the same for both.
    price, _ = DEFAULT_TABLE.per_image(
        gptimage.TEXT_TO_IMAGE, spec.get("image_size"), spec.get("quality", "high")
    )
    output = round(price * 1_000_000 / IMAGE_OUTPUT_PER_M) * count
    prompt = spec.get("prompt")
    text = max(1, math.ceil(len(prompt) / CHARS_PER_TOKEN)) if isinstance(prompt, str) else 1
    urls = spec.get("image_urls")
    refs = len(urls) if isinstance(urls, list) else 0
    image = IMAGE_INPUT_TOKENS * (refs + (1 if spec.get("mask_url") else 0))
    return {
        "input_tokens": text + image,
        "input_tokens_details": {"text_tokens": text, "image_tokens": image},
        "output_tokens": output,
        "output_tokens_details": {"image_tokens": output, "text_tokens": 0},
        "total_tokens": text + image + output,
    }
