"""The target model's input rules (shared by the manifest checker and the emulator)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchgen.planning.gptimage import (
    EDIT,
    MAX_PIXELS,
    MAX_SIDE,
    MIN_PIXELS,
    PRESETS,
    TEXT_TO_IMAGE,
    custom_size_problems,
    resolved_dimensions,
    validate_input,
    with_defaults,
)


def fields(endpoint: str, request: dict[str, Any], **kw: Any) -> list[str]:
    return [p.field for p in validate_input(endpoint, request, **kw)]


def test_a_minimal_request_is_valid() -> None:
    assert validate_input(TEXT_TO_IMAGE, {"prompt": "a fox"}) == []
    assert validate_input(EDIT, {"prompt": "blue", "image_urls": ["https://x/a.png"]}) == []


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "  "}, "prompt"),
        ({"prompt": 3}, "prompt"),
        ({"prompt": "a", "quality": "ultra"}, "quality"),
        ({"prompt": "a", "output_format": "gif"}, "output_format"),
        ({"prompt": "a", "num_images": 0}, "num_images"),
        ({"prompt": "a", "num_images": 5}, "num_images"),
        ({"prompt": "a", "num_images": True}, "num_images"),
        ({"prompt": "a", "num_images": 1.0}, "num_images"),
        ({"prompt": "a", "sync_mode": "yes"}, "sync_mode"),
        ({"prompt": "a", "image_size": "auto"}, "image_size"),  # auto is for edits only
        ({"prompt": "a", "image_size": "huge"}, "image_size"),
        ({"prompt": "a", "image_size": {"width": 1024}}, "image_size"),
        ({"prompt": "a", "image_size": {"width": 1024, "height": 1024, "d": 1}}, "image_size"),
        ({"prompt": "a", "image_size": [1024, 1024]}, "image_size"),
        ({"prompt": "a", "image_size": {"width": 1000, "height": 1024}}, "image_size.width"),
        ({"prompt": "a", "image_size": {"width": 1024, "height": 4096}}, "image_size.height"),
        ({"prompt": "a", "image_size": {"width": 3840, "height": 1024}}, "image_size"),
        ({"prompt": "a", "image_size": {"width": 512, "height": 512}}, "image_size"),
        ({"prompt": "a", "seed": 1}, "seed"),
    ],
)
def test_each_rule(request_: dict[str, Any], field: str) -> None:
    assert fields(TEXT_TO_IMAGE, request_) == [field]


def test_edit_rules() -> None:
    assert fields(EDIT, {"prompt": "a"}) == ["image_urls"]
    assert fields(EDIT, {"prompt": "a", "image_urls": []}) == ["image_urls"]
    assert fields(EDIT, {"prompt": "a", "image_urls": ["x"], "mask_url": 3}) == ["mask_url"]
    assert validate_input(EDIT, {"prompt": "a", "image_urls": ["x"], "image_size": "auto"}) == []


def test_unknown_fields_pass_when_not_strict_and_unknown_endpoints_pass() -> None:
    assert fields(TEXT_TO_IMAGE, {"prompt": "a", "seed": 1}, strict=False) == []
    assert validate_input("fal-ai/flux/dev", {"anything": object()}) == []
    assert fields(TEXT_TO_IMAGE, {"prompt": "a", "openai_api_key": "k"}) == []


def test_every_preset_is_valid_and_resolves() -> None:
    for name, (w, h) in PRESETS.items():
        assert validate_input(TEXT_TO_IMAGE, {"prompt": "a", "image_size": name}) == []
        assert resolved_dimensions(name) == (w, h)
        assert custom_size_problems(w, h) == []  # what we assume fal maps presets to is legal
    assert resolved_dimensions("auto") is None
    assert resolved_dimensions({"width": 1536, "height": 1024}) == (1536, 1024)
    assert resolved_dimensions({"width": "1536", "height": 1024}) is None


def test_defaults_fill_only_what_is_missing() -> None:
    assert with_defaults(TEXT_TO_IMAGE, {"prompt": "a", "quality": "low"}) == {
        "prompt": "a",
        "quality": "low",
        "image_size": "landscape_4_3",
        "num_images": 1,
        "output_format": "png",
        "sync_mode": False,
    }
    assert with_defaults(EDIT, {})["image_size"] == "auto"
    assert with_defaults("fal-ai/flux/dev", {"x": 1}) == {"x": 1}


@given(st.integers(-100, 5000), st.integers(-100, 5000))
def test_every_accepted_custom_size_satisfies_the_rules(w: int, h: int) -> None:
    if custom_size_problems(w, h):
        return
    assert w % 16 == 0 and h % 16 == 0
    assert 0 < max(w, h) <= MAX_SIDE
    assert max(w, h) / min(w, h) <= 3
    assert MIN_PIXELS <= w * h <= MAX_PIXELS


@given(
    st.integers(1, MAX_SIDE // 16).map(lambda k: k * 16),
    st.integers(1, MAX_SIDE // 16).map(lambda k: k * 16),
)
def test_sizes_within_the_rules_are_accepted(w: int, h: int) -> None:
    legal = max(w, h) <= 3 * min(w, h) and MIN_PIXELS <= w * h <= MAX_PIXELS
    assert (custom_size_problems(w, h) == []) == legal
