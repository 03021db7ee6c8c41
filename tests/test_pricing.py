"""The cost estimate: fal's table, nearest bucket, assumed sizes, overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from batchgen.manifest import load_manifest
from batchgen.planning.gptimage import EDIT, TEXT_TO_IMAGE
from batchgen.planning.jobs import JobSpec
from batchgen.planning.pricing import Basis, PriceTable, estimate_cost, job_estimate


def spec(endpoint: str = TEXT_TO_IMAGE, **inp: Any) -> JobSpec:
    return JobSpec(job_id="0" * 64, endpoint=endpoint, input={"prompt": "a", **inp})


@pytest.mark.parametrize(
    ("size", "quality", "usd"),
    [
        ({"width": 1024, "height": 768}, "low", 0.01),
        ({"width": 1024, "height": 1024}, "medium", 0.06),
        ({"width": 1024, "height": 1536}, "high", 0.17),
        ({"width": 1920, "height": 1080}, "high", 0.16),
        ({"width": 2560, "height": 1440}, "medium", 0.06),
        ({"width": 3840, "height": 2160}, "high", 0.41),
        ({"width": 768, "height": 1024}, "high", 0.15),  # orientation does not matter
        ("landscape_4_3", "high", 0.15),
        ("square_hd", "low", 0.01),
    ],
)
def test_table_prices(size: Any, quality: str, usd: float) -> None:
    assert job_estimate(spec(image_size=size, quality=quality))[0] == pytest.approx(usd)


def test_exact_bucket_is_table_basis_and_custom_size_uses_the_nearest() -> None:
    assert job_estimate(spec(image_size="square_hd", quality="high"))[1] is Basis.TABLE
    # 2048x1152 = 2.36 MP: nearest is 1920x1080 (2.07 MP), not 2560x1440 (3.69 MP).
    usd, basis = job_estimate(spec(image_size={"width": 2048, "height": 1152}, quality="high"))
    assert (usd, basis) == (pytest.approx(0.16), Basis.NEAREST)
    # 3840x2048 is above every bucket: the largest one.
    big = spec(image_size={"width": 3840, "height": 2048}, quality="medium")
    assert estimate_cost(big) == pytest.approx(0.11)


def test_auto_and_missing_sizes_are_assumed_square() -> None:
    usd, basis = job_estimate(spec(EDIT, image_size="auto", quality="high"))
    assert (usd, basis) == (pytest.approx(0.22), Basis.ASSUMED)
    assert job_estimate(spec(quality="low"))[1] is Basis.ASSUMED


def test_quality_defaults_to_high_and_images_multiply() -> None:
    assert estimate_cost(spec(image_size="square_hd")) == pytest.approx(0.22)
    four = spec(image_size="square_hd", quality="medium", num_images=4)
    assert estimate_cost(four) == pytest.approx(0.24)


def test_unknown_endpoint_is_unpriced_unless_a_flat_price_is_set() -> None:
    flux = spec("fal-ai/flux/dev", num_images=2)
    assert job_estimate(flux) == (0.0, Basis.UNPRICED)
    flat = PriceTable().with_overrides({}, 0.025)
    assert job_estimate(flux, flat) == (pytest.approx(0.05), Basis.FLAT)


def test_overrides_change_one_quality_and_keep_the_rest() -> None:
    table = PriceTable().with_overrides({(1024, 1024): {"medium": 0.07}}, None)
    assert estimate_cost(spec(image_size="square_hd", quality="medium"), table) == 0.07
    assert estimate_cost(spec(image_size="square_hd", quality="high"), table) == 0.22
    added = PriceTable().with_overrides({(1536, 1024): {"low": 0.5}}, None)
    usd, basis = job_estimate(
        spec(image_size={"width": 1536, "height": 1024}, quality="low"), added
    )
    assert (usd, basis) == (0.5, Basis.TABLE)
    # A new bucket that lacks a quality falls back to the default table's price for that size.
    assert estimate_cost(
        spec(image_size={"width": 1536, "height": 1024}, quality="high"), added
    ) == pytest.approx(0.17)


def test_manifest_pricing_block(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        "pricing:\n  table:\n    1024x1024: {high: 1.5}\nprompts: [a]\n"
        "defaults: {image_size: square_hd}\n"
    )
    m = load_manifest(path)
    assert m.pricing.buckets[(1024, 1024)] == {"low": 0.01, "medium": 0.06, "high": 1.5}
    (job,) = list(m.expand())
    assert estimate_cost(job, m.pricing) == 1.5
    assert estimate_cost(job) == 0.22
