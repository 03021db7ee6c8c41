"""The cost estimate: fal's published per-image table for gpt-image-2 (docs/manifest.md, Cost).

fal really bills per token, so every figure here is an estimate. A size that is not in the
table uses the bucket nearest by pixel count; `auto` (edit: "as the inputs") and unknown sizes
use the 1024×1024 bucket and are flagged as assumed. A manifest's `pricing:` block overrides
the table (per bucket and quality) or sets one flat price per image for any endpoint.

Where a response carries `usage` (BYOK requests), `token_cost` prices its token counts at
fal's per-token prices: the real cost, reported beside the estimate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from batchgen.planning.gptimage import KNOWN_ENDPOINTS, QUALITIES, resolved_dimensions
from batchgen.planning.jobs import JobSpec

Prices = Mapping[str, float]  # quality -> USD per image

DEFAULT_BUCKETS: Mapping[tuple[int, int], Prices] = {
    (1024, 768): {"low": 0.01, "medium": 0.04, "high": 0.15},
    (1024, 1024): {"low": 0.01, "medium": 0.06, "high": 0.22},
    (1024, 1536): {"low": 0.01, "medium": 0.05, "high": 0.17},
    (1920, 1080): {"low": 0.01, "medium": 0.04, "high": 0.16},
    (2560, 1440): {"low": 0.01, "medium": 0.06, "high": 0.23},
    (3840, 2160): {"low": 0.02, "medium": 0.11, "high": 0.41},
}
ASSUMED_SIZE = (1024, 1024)


class Basis(StrEnum):
    """How a job's price was found, from most to least certain."""

    TABLE = "table"  # the size is a bucket of the table
    NEAREST = "nearest"  # the nearest bucket by pixel count
    ASSUMED = "assumed"  # `auto` or unknown size: priced as 1024×1024
    FLAT = "flat"  # the manifest's flat per-image price
    UNPRICED = "unpriced"  # an endpoint we have no price for: counted as 0


class PriceTable(BaseModel):
    """Per-image prices. `flat` (when set) wins over the buckets, for every endpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    buckets: dict[tuple[int, int], dict[str, float]] = {
        k: dict(v) for k, v in DEFAULT_BUCKETS.items()
    }
    flat: float | None = None

    def with_overrides(
        self, buckets: Mapping[tuple[int, int], Mapping[str, float]], flat: float | None
    ) -> PriceTable:
        """A copy with some buckets (or some qualities of a bucket) replaced or added."""
        merged = {k: dict(v) for k, v in self.buckets.items()}
        for size, prices in buckets.items():
            merged.setdefault(size, {}).update(prices)
        return PriceTable(buckets=merged, flat=self.flat if flat is None else flat)

    def per_image(self, endpoint: str, image_size: Any, quality: Any) -> tuple[float, Basis]:
        """USD per image for one request shape, and how sure we are of it."""
        if self.flat is not None:
            return self.flat, Basis.FLAT
        if endpoint not in KNOWN_ENDPOINTS:
            return 0.0, Basis.UNPRICED
        q = quality if quality in QUALITIES else "high"
        dims = resolved_dimensions(image_size)
        basis = Basis.TABLE
        if dims is None:
            dims, basis = ASSUMED_SIZE, Basis.ASSUMED
        elif dims not in self.buckets and dims[::-1] not in self.buckets:
            basis = Basis.NEAREST
        bucket = self._bucket(dims)
        if q not in bucket:  # an override table may lack a quality: fall back to the default
            return self._default_price(dims, q), basis
        return bucket[q], basis

    def _bucket(self, dims: tuple[int, int]) -> Mapping[str, float]:
        # The table is orientation-free: 768×1024 costs what 1024×768 costs.
        for key in (dims, (dims[1], dims[0])):
            if key in self.buckets:
                return self.buckets[key]
        pixels = dims[0] * dims[1]
        # Ties go to the smaller bucket: sorted() makes the choice independent of dict order.
        nearest = min(sorted(self.buckets), key=lambda s: abs(s[0] * s[1] - pixels))
        return self.buckets[nearest]

    def _default_price(self, dims: tuple[int, int], quality: str) -> float:
        return PriceTable()._bucket(dims).get(quality, 0.0)


DEFAULT_TABLE = PriceTable()

# Dollars as a user gets them (the summary, RunResult, --json, status, --notify): to a
# millionth, the price table's own precision, so sums of float prices do not show their
# binary noise (4.0199999999999925). The journal keeps every figure unrounded.
USD_DIGITS = 6


def usd(amount: float) -> float:
    """``amount`` rounded to ``USD_DIGITS`` places, for a user's eyes or a script."""
    return round(amount, USD_DIGITS)


def job_estimate(spec: JobSpec, table: PriceTable | None = None) -> tuple[float, Basis]:
    """USD for the whole job (per image × num_images) and the basis of the price."""
    t = DEFAULT_TABLE if table is None else table
    price, basis = t.per_image(
        spec.endpoint, spec.input.get("image_size"), spec.input.get("quality", "high")
    )
    return price * spec.num_images, basis


def estimate_cost(spec: JobSpec, table: PriceTable | None = None) -> float:
    """USD estimated for one job: the per-image price times `num_images`."""
    return job_estimate(spec, table)[0]


# -- the real cost, from the token counts a BYOK response carries ----------------------------

# fal's per-token prices for gpt-image-2, USD per million tokens (docs/manifest.md, BYOK).
TEXT_INPUT_PER_M = 5.0
IMAGE_INPUT_PER_M = 8.0
IMAGE_OUTPUT_PER_M = 30.0


@dataclass(frozen=True, slots=True)
class Tokens:
    """The token counts of one response, by the kinds fal prices."""

    text_input: int
    image_input: int
    output: int

    @property
    def usd(self) -> float:
        return (
            self.text_input * TEXT_INPUT_PER_M
            + self.image_input * IMAGE_INPUT_PER_M
            + self.output * IMAGE_OUTPUT_PER_M
        ) / 1_000_000


def usage_of(result: object) -> dict[str, Any] | None:
    """The ``usage`` object of a stored result (BYOK responses carry one), or None."""
    usage = result.get("usage") if isinstance(result, Mapping) else None
    return usage if isinstance(usage, dict) else None


def parse_usage(usage: object) -> Tokens | None:
    """The counts in a ``usage`` object (OpenAI's shape), or None when it has none.

    ``input_tokens_details`` splits the input into ``text_tokens`` and ``image_tokens``;
    without it every input token is priced as text (a text-to-image prompt is all text). Every
    output token is priced as image output: fal publishes no other output price. A count that
    is missing, negative or not a whole number is taken as 0.
    """
    if not isinstance(usage, Mapping):
        return None
    total_in, out = _count(usage, "input_tokens"), _count(usage, "output_tokens")
    details = usage.get("input_tokens_details")
    if isinstance(details, Mapping) and ("text_tokens" in details or "image_tokens" in details):
        text, image = _count(details, "text_tokens"), _count(details, "image_tokens")
    else:
        text, image = total_in, 0
    if not ({"input_tokens", "output_tokens"} & set(usage) or text or image):
        return None  # not token counts at all
    return Tokens(text_input=text, image_input=image, output=out)


def token_cost(usage: Mapping[str, Any]) -> float:
    """USD for one response from its ``usage`` token counts at fal's per-token prices (0.0 for a
    ``usage`` without counts)."""
    tokens = parse_usage(usage)
    return tokens.usd if tokens is not None else 0.0


def _count(doc: Mapping[str, Any], key: str) -> int:
    value = doc.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass(frozen=True, slots=True)
class ActualCost:
    """What the responses that carried ``usage`` really cost, and how many there were."""

    usd: float
    jobs: int
    images: int


def actual_cost(usages: Iterable[tuple[Any, int]]) -> ActualCost:
    """Sum ``(usage, images)`` pairs (one per completed job) into an ``ActualCost``; pairs whose
    usage has no token counts are left out."""
    usd, jobs, images = 0.0, 0, 0
    for usage, n in usages:
        tokens = parse_usage(usage)
        if tokens is None:
            continue
        usd += tokens.usd
        jobs += 1
        images += n
    return ActualCost(usd=usd, jobs=jobs, images=images)
