"""The cost estimate: fal's published per-image table for gpt-image-2 (shared/gpt-image-2.md).

fal really bills per token, so every figure here is an estimate. A size that is not in the
table uses the bucket nearest by pixel count; `auto` (edit: "as the inputs") and unknown sizes
use the 1024×1024 bucket and are flagged as assumed. A manifest's `pricing:` block overrides
the table (per bucket and quality) or sets one flat price per image for any endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from batchgen.gptimage import KNOWN_ENDPOINTS, QUALITIES, resolved_dimensions
from batchgen.jobs import JobSpec

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
