"""Output names: slugged fields, and no template or field value can place a file elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchgen.planning.jobs import JobSpec, job_id
from batchgen.planning.paths import (
    TemplateError,
    image_path,
    render_template,
    slug,
    template_fields,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("cat", "cat"),
        ("a cat / on a mat", "a-cat-on-a-mat"),
        ("..", "_"),
        ("../../etc/x", "etc-x"),
        (".hidden", "hidden"),
        ("CON", "_CON"),
        ("nul.txt", "_nul.txt"),
        ("a\x00b\nc\x1bd", "abcd"),
        ("", "_"),
        ("C:\\Windows", "C-Windows"),
        ("café 東京", "café-東京"),
        (7, "7"),
    ],
)
def test_slug_table(value: object, expected: str) -> None:
    assert slug(value) == expected


def test_long_values_are_cut_but_stay_distinct() -> None:
    a, b = slug("x" * 200 + "a"), slug("x" * 200 + "b")
    assert len(a) <= 80 and len(b) <= 80
    assert a != b


@given(st.text())
def test_any_field_value_is_one_safe_segment(value: str) -> None:
    s = slug(value)
    assert s and "/" not in s and "\\" not in s
    assert s not in (".", "..") and not s.startswith(".")
    assert all(ch.isprintable() for ch in s)


@given(st.text(), st.text())
def test_any_field_values_stay_inside_images(
    tmp_path_factory: pytest.TempPathFactory, a: str, b: str
) -> None:
    out = tmp_path_factory.getbasetemp() / "out"
    p = image_path(out, "{a}/{b}_{n}.{ext}", {"a": a, "b": b, "n": 0, "ext": "png"})
    assert p.is_relative_to((out / "images").resolve())


@pytest.mark.parametrize(
    "template",
    [
        "../{n}.png",
        "/etc/{n}.png",
        "a/../../{n}.png",
        ".hidden/{n}.png",
        "{n.__class__}.png",
        "{n[0]}.png",
        "{n!r}.png",
        "{n:>10}.png",
        "{nope}.png",
        "a\\..\\{n}.png",
        "{n",
        "",
    ],
)
def test_bad_templates_are_refused(tmp_path: Path, template: str) -> None:
    with pytest.raises(TemplateError):
        image_path(tmp_path, template, {"n": 1})


def test_symlinked_folder_pointing_outside_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (out / "images" / "p").symlink_to(outside)
    with pytest.raises(TemplateError):
        image_path(out, "{d}/{n}.png", {"d": "p", "n": 0})


def test_default_template_names_by_prompt_and_job(tmp_path: Path) -> None:
    inp = {"prompt": "a cat", "output_format": "jpeg", "quality": "low"}
    spec = JobSpec(
        job_id=job_id("openai/gpt-image-2", inp, 0),
        endpoint="openai/gpt-image-2",
        input=inp,
        prompt_id="cats/../../etc",
        prompt="a cat",
    )
    p = image_path(tmp_path, spec.output_template, template_fields(spec, 2))
    assert p == (tmp_path / "images" / "cats-etc" / f"{spec.job_id[:16]}_2.jpg").resolve()


def test_template_fields_include_vars_and_tags() -> None:
    spec = JobSpec(
        job_id="f" * 64,
        endpoint="e",
        input={"image_size": {"width": 1024, "height": 1536}},
        vars={"animal": "owl"},
        tags={"set": "A/B"},
    )
    rel = render_template("{tag_set}/{animal}-{size}-{ext}", template_fields(spec, 0))
    assert rel.as_posix() == "A-B/owl-1024x1536-png"
