"""Prompt and output templates: placeholders, slugs, and output paths that cannot escape."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchgen.manifest.templates import (
    TemplateError,
    output_template_problems,
    parse,
    prompt_slug,
    slug,
)
from batchgen.planning.jobs import JobSpec
from batchgen.planning.summary import output_path


def test_parse_and_render() -> None:
    tpl = parse("a {animal} and a {animal} in {{braces}} {style}")
    assert tpl.names == ("animal", "style")
    assert tpl.render({"animal": "fox", "style": "ink"}) == "a fox and a fox in {braces} ink"
    assert tpl.literal_length == len("a  and a  in {braces} ")


@pytest.mark.parametrize("text", ["{a.b}", "{a[0]}", "{a!r}", "{a:>10}", "{}", "{0}", "{ a}"])
def test_only_plain_names_are_placeholders(text: str) -> None:
    with pytest.raises(TemplateError, match="must be a plain name"):
        parse(text)


@pytest.mark.parametrize("text", ["a { b", "a } b"])
def test_unbalanced_braces(text: str) -> None:
    with pytest.raises(TemplateError, match="literal brace"):
        parse(text)


def test_slugs() -> None:
    assert slug("Über Straße / ../etc") == "uber-strae-etc"
    assert slug("...") == "x"
    assert prompt_slug("A red {animal} in the snow at dawn, softly") == "a-red-animal-in-the-snow"


@given(st.text())
def test_slug_is_always_one_safe_segment(value: str) -> None:
    s = slug(value)
    assert s and "/" not in s and s not in {".", ".."} and not s.startswith(".")


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{prompt_id}/{job_id16}_{n}.{ext}", None),
        ("{quality}/{size}/{job_id}-{n}-{variant}.{ext}", None),
        ("{tag_set}/{job_id16}_{n}.{ext}", None),
        ("{prompt_id}.{ext}", "must contain {job_id16}"),
        ("{job_id16}.{ext}", "must contain {job_id16}"),
        ("/abs/{job_id16}_{n}.{ext}", "stays inside"),
        ("../{job_id16}_{n}.{ext}", "stays inside"),
        (".hidden/{job_id16}_{n}.{ext}", "stays inside"),
        ("a b/{job_id16}_{n}.{ext}", "may only hold"),
        ("c:\\{job_id16}_{n}.{ext}", "may only hold"),
        ("{model}/{job_id16}_{n}.{ext}", "unknown field {model}"),
        ("{job_id16.x}_{n}.{ext}", "plain name"),
    ],
)
def test_output_template_rules(template: str, problem: str | None) -> None:
    found = output_template_problems(template, var_names=[])
    if problem is None:
        assert found == []
    else:
        assert any(problem in p for p in found), found


@given(st.text(min_size=1), st.dictionaries(st.text(min_size=1, max_size=5), st.text()))
def test_output_paths_stay_under_images(prompt_id: str, tags: dict[str, str]) -> None:
    spec = JobSpec(
        job_id="ab" * 32,
        endpoint="e",
        input={"output_format": "jpeg", "quality": "../..", "image_size": "/etc"},
        prompt_id=prompt_id,
        output_template="{prompt_id}/{quality}/{size}/{job_id16}_{n}.{ext}",
    )
    path = output_path(spec)
    assert path.startswith("images/") and path.endswith("/abababababababab_0.jpg")
    assert all(seg not in {"", ".", ".."} for seg in path.split("/"))
