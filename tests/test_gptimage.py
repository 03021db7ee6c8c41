"""The target model's input rules (shared by the manifest checker and the emulator)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given
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


def legal(w: int, h: int) -> bool:
    """gpt-image-2's custom size rules, written out apart from gptimage's own code."""
    return (
        all(0 < v <= MAX_SIDE and v % 16 == 0 for v in (w, h))
        and max(w, h) <= 3 * min(w, h)
        and MIN_PIXELS <= w * h <= MAX_PIXELS
    )


def heights_for(w: int) -> range:
    """Every legal height for width ``w`` (a multiple of 16), smallest first."""
    lo = max(16, -(-w // 3), -(-MIN_PIXELS // w))
    hi = min(MAX_SIDE, 3 * w, MAX_PIXELS // w)
    return range(-(-lo // 16) * 16, hi + 1, 16)


WIDTHS = [w for w in range(16, MAX_SIDE + 1, 16) if heights_for(w)]


@st.composite
def legal_sizes(draw: st.DrawFn) -> tuple[int, int]:
    """Only sizes within the rules, from the smallest to the largest legal one."""
    w = draw(st.sampled_from(WIDTHS))
    return w, draw(st.sampled_from(heights_for(w)))


@given(legal_sizes())
def test_every_size_within_the_rules_is_accepted(size: tuple[int, int]) -> None:
    w, h = size
    assert legal(w, h)  # the strategy makes no other kind
    assert custom_size_problems(w, h) == []
    assert custom_size_problems(h, w) == []  # portrait and landscape alike


@st.composite
def edge_sizes(draw: st.DrawFn) -> tuple[int, int]:
    """A width, and a height at an end of its legal range or just past it (by one grid step
    or one pixel): where a rule drawn one step off would show."""
    w = draw(st.sampled_from(WIDTHS))
    legal_h = heights_for(w)
    h = draw(st.sampled_from([legal_h[0], legal_h[-1]]))
    return w, h + draw(st.sampled_from([0, 0, -16, 16, -1, 1]))


@given(edge_sizes())
# The corners, always: the fewest pixels (640x1024), the most (3840x2160), ratio exactly 3.
@example((640, 1024))
@example((624, 1040))
@example((3840, 2160))
@example((3840, 2176))
@example((1536, 512))
@example((1536, 496))
def test_the_edges_of_the_rules(size: tuple[int, int]) -> None:
    w, h = size
    assert (custom_size_problems(w, h) == []) == legal(w, h)
    assert (custom_size_problems(h, w) == []) == legal(h, w)


# Sides on the 16-pixel grid, next to it, and anywhere: each example is either accepted or
# refused, and both answers are checked (a test that asserts only on acceptance reached its
# asserts about once in a hundred examples drawn from plain integers).
SIDES = st.one_of(
    st.integers(1, MAX_SIDE // 16).map(lambda k: 16 * k),
    st.tuples(st.integers(1, MAX_SIDE // 16 + 1), st.sampled_from([-1, 1, 8])).map(
        lambda t: 16 * t[0] + t[1]
    ),
    st.integers(-100, 5000),
)


@given(SIDES, SIDES)
def test_a_custom_size_is_accepted_exactly_when_it_follows_the_rules(w: int, h: int) -> None:
    problems = custom_size_problems(w, h)
    assert (problems == []) == legal(w, h), problems
