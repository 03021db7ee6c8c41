"""Prompt and output templates: placeholders, slugs, and output paths that cannot escape."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchgen.manifest import load_manifest
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


def test_prompts_without_ascii_get_meaningful_ids(tmp_path: Path) -> None:
    # They were all `x`, `x-2`, `x-3`: now their own letters, or a short hash of an emoji-only
    # prompt (stable from run to run, different for different prompts).
    path = tmp_path / "m.yaml"
    prompts = ["赤い狐が雪の中を歩く", "Лиса в снегу", "🦊🌲", "🦉", "🦉 at night", "a fox 狐"]
    path.write_text(f"prompts: [{', '.join(prompts)}]\n", encoding="utf-8")
    ids = [p.id for p in load_manifest(path).prompts]
    emoji = "p-" + hashlib.sha256("🦊🌲".encode()).hexdigest()[:8]
    owl = "p-" + hashlib.sha256("🦉".encode()).hexdigest()[:8]
    assert ids == ["赤い狐が雪の中を歩く", "лиса-в-снегу", emoji, owl, "at-night", "a-fox"]
    assert load_manifest(path).prompts[2].id == emoji  # the same on every load


@given(st.text())
def test_prompt_slug_is_always_one_safe_segment(value: str) -> None:
    s = prompt_slug(value)
    assert s and "/" not in s and "\\" not in s and not s.startswith((".", "-"))


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
