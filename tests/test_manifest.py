"""Reading manifests into jobs: YAML, CSV, JSONL, prompts files, overrides, ids, laziness."""

from __future__ import annotations

import gc
import hashlib
import inspect
import itertools
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from batchgen.manifest import Manifest, PromptEntry, load_manifest, plan
from batchgen.planning.gptimage import EDIT, OUTPUT_FORMATS, PRESETS, QUALITIES, TEXT_TO_IMAGE
from batchgen.planning.jobs import DEFAULT_OUTPUT_TEMPLATE, JobSpec, job_id

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "manifests"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def jobs(path: Path) -> list[JobSpec]:
    return list(plan(load_manifest(path)))


# --- YAML ---------------------------------------------------------------------------------


def test_demo_manifest_expands_to_twelve_cheap_jobs() -> None:
    m = load_manifest(EXAMPLES / "demo.yaml")
    specs = list(plan(m))
    assert m.name == "demo"
    assert len(specs) == 12
    assert {s.input["quality"] for s in specs} == {"low"}
    assert {s.prompt_id for s in specs} == {"forest", "portrait", "sketch"}
    first = specs[0]
    assert first.endpoint == TEXT_TO_IMAGE
    assert first.input == {
        "prompt": "a red fox in a misty pine forest at dawn, soft light",
        "image_size": "square_hd",
        "quality": "low",
        "num_images": 1,
        "output_format": "jpeg",
        "sync_mode": False,
    }
    assert first.vars == {"animal": "red fox"}
    assert first.tags == ["nature"]
    assert first.source == f"{EXAMPLES / 'demo.yaml'}:12"
    assert first.output_template == DEFAULT_OUTPUT_TEMPLATE
    sketch = next(s for s in specs if s.prompt_id == "sketch")
    assert sketch.tags == ["pencil"]
    assert m.sha256 == hashlib.sha256((EXAMPLES / "demo.yaml").read_bytes()).hexdigest()


def test_every_example_manifest_loads() -> None:
    counts = {p.name: len(jobs(p)) for p in sorted(EXAMPLES.glob("*.yaml"))}
    counts["portraits.csv"] = len(jobs(EXAMPLES / "portraits.csv"))
    assert counts == {
        "byok.yaml": 2,
        "demo.yaml": 12,
        "edit.yaml": 5,
        "everything.yaml": 80,
        "portraits.csv": 5,
        "products.yaml": 6,
    }


def test_job_ids_are_the_documented_hash(tmp_path: Path) -> None:
    for spec in jobs(EXAMPLES / "everything.yaml"):
        assert spec.job_id == job_id(spec.endpoint, spec.input, spec.variant)


def test_job_id_is_pinned_across_versions(tmp_path: Path) -> None:
    # Changing this id means every existing journal re-runs its jobs: it must never drift.
    path = write(tmp_path, "m.yaml", "prompts: [a red fox]\n")
    (spec,) = jobs(path)
    doc = {
        "endpoint": "openai/gpt-image-2",
        "input": {
            "image_size": "landscape_4_3",
            "num_images": 1,
            "output_format": "png",
            "prompt": "a red fox",
            "quality": "high",
            "sync_mode": False,
        },
        "variant": 0,
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    assert spec.job_id == hashlib.sha256(text.encode()).hexdigest()


def test_yaml_key_order_does_not_change_job_ids(tmp_path: Path) -> None:
    a = write(
        tmp_path,
        "a.yaml",
        "defaults: {quality: low, output_format: webp}\n"
        "matrix: {image_size: [square_hd, landscape_4_3], num_images: [1, 2]}\n"
        "prompts: [a red fox]\n",
    )
    b = write(
        tmp_path,
        "b.yaml",
        "prompts: [a red fox]\n"
        "matrix: {num_images: [1, 2], image_size: [square_hd, landscape_4_3]}\n"
        "defaults: {output_format: webp, quality: low}\n",
    )
    assert {s.job_id for s in jobs(a)} == {s.job_id for s in jobs(b)}


def test_editing_a_prompt_makes_a_new_job_and_keeps_the_others(tmp_path: Path) -> None:
    before = {s.job_id for s in jobs(write(tmp_path, "m.yaml", "prompts: [a fox, an owl]\n"))}
    after = {s.job_id for s in jobs(write(tmp_path, "m.yaml", "prompts: [a fox, a cat]\n"))}
    assert len(before & after) == 1


def test_prompt_overrides_fix_or_replace_an_axis(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.yaml",
        """
matrix:
  quality: [low, medium]
  image_size: [square_hd]
repeat: 2
prompts:
  - id: fixed
    prompt: a fox
    quality: high
  - id: own
    prompt: an owl
    image_size: [portrait_4_3, portrait_16_9]
    repeat: 1
  - id: field
    prompt: a cat
    output_format: webp
""",
    )
    specs = jobs(path)
    by = {pid: [s for s in specs if s.prompt_id == pid] for pid in ("fixed", "own", "field")}
    assert [s.input["quality"] for s in by["fixed"]] == ["high", "high"]
    assert sorted((s.input["quality"], s.input["image_size"]) for s in by["own"]) == [
        ("low", "portrait_16_9"),
        ("low", "portrait_4_3"),
        ("medium", "portrait_16_9"),
        ("medium", "portrait_4_3"),
    ]
    assert {s.variant for s in by["own"]} == {0}
    assert len(by["field"]) == 4 and {s.input["output_format"] for s in by["field"]} == {"webp"}


def test_vars_expand_only_over_the_vars_a_prompt_uses(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.yaml",
        """
vars:
  animal: [fox, owl, cat]
  style: [oil, ink]
prompts:
  - "a {animal}"
  - "a {animal} in {style}, {style} only"
""",
    )
    specs = jobs(path)
    assert [s.prompt for s in specs[:3]] == ["a fox", "a owl", "a cat"]
    assert len(specs) == 3 + 6
    assert specs[-1].prompt == "a cat in ink, ink only"
    assert specs[-1].vars == {"animal": "cat", "style": "ink"}


def test_identical_jobs_collapse_and_are_counted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.yaml",
        """
matrix:
  quality: [low, low, high]
prompts:
  - a fox
  - id: again
    prompt: a fox
""",
    )
    m = load_manifest(path)
    assert len(list(m.expand())) == 6
    deduped = plan(m)
    kept = list(deduped)
    assert len(kept) == 2
    assert deduped.duplicates == 4
    assert {s.prompt_id for s in kept} == {"a-fox"}


def test_default_prompt_ids_are_readable_and_unique(tmp_path: Path) -> None:
    path = write(tmp_path, "m.yaml", "prompts: ['A Red Fox!', 'a red fox?', 'Über {{x}}']\n")
    assert [s.prompt_id for s in jobs(path)] == ["a-red-fox", "a-red-fox-2", "uber-x"]
    assert jobs(path)[2].prompt == "Über {x}"  # {{ }} are literal braces


def test_anchors_and_merge_keys_work(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.yaml",
        """
base: &base
  quality: low
""".replace("base: &base", "defaults: &base")
        + "prompts:\n  - {<<: *base, prompt: a fox}\n",
    )
    (spec,) = jobs(path)
    assert spec.input["quality"] == "low"


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_bytes("\ufeffprompts: [un café]\n".encode())
    assert jobs(path)[0].prompt == "un café"


def test_unknown_model_passes_input_through_with_a_notice(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.yaml",
        "model: fal-ai/flux/dev\ndefaults: {guidance_scale: 3.5, loras: [a, b]}\n"
        "prompts: [a fox]\npricing: {per_image: 0.025}\n",
    )
    m = load_manifest(path)
    (spec,) = list(plan(m))
    assert spec.endpoint == "fal-ai/flux/dev"
    assert spec.input == {"guidance_scale": 3.5, "loras": ["a", "b"], "prompt": "a fox"}
    assert any("fal-ai/flux/dev is not one batchgen knows" in n for n in m.notices)


def test_edit_manifest_keeps_local_paths_relative_to_the_manifest() -> None:
    m = load_manifest(EXAMPLES / "edit.yaml")
    specs = list(plan(m))
    assert {s.endpoint for s in specs} == {EDIT}
    masked = next(s for s in specs if s.prompt_id == "masked")
    assert masked.input["image_urls"] == ["refs/room.png"]
    assert masked.input["mask_url"] == "refs/mask.png"
    assert masked.input["image_size"] == "auto"
    assert any("local files" in n for n in m.notices)


def test_output_template_with_vars_and_tags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.yaml",
        """
vars: {animal: [fox]}
output: "{tag_set}/{animal}/{quality}/{job_id16}_{n}.{ext}"
prompts:
  - prompt: "a {animal}"
    tags: {set: Winter Set}
""",
    )
    (spec,) = jobs(path)
    assert spec.output_template == "{tag_set}/{animal}/{quality}/{job_id16}_{n}.{ext}"


def test_byok_flag_reaches_the_jobs(tmp_path: Path) -> None:
    path = write(tmp_path, "m.yaml", "byok: true\nprompts: [a fox]\n")
    assert jobs(path)[0].byok is True


# --- CSV and JSONL ------------------------------------------------------------------------


def test_csv_manifest_columns_become_fields_and_tags() -> None:
    specs = jobs(EXAMPLES / "portraits.csv")
    astronaut = specs[0]
    assert astronaut.prompt_id == "astronaut"
    assert astronaut.input["image_size"] == {"width": 1536, "height": 1024}
    assert astronaut.input["output_format"] == "jpeg"
    assert astronaut.tags == {"style": "photo", "subject": "space"}
    assert astronaut.source.endswith("portraits.csv:2")
    baker = specs[1]
    assert baker.input["num_images"] == 2 and baker.num_images == 2


def test_csv_quoted_newlines_keep_line_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", 'prompt,quality\n"a fox\non two lines",low\nan owl,high\n')
    specs = jobs(path)
    assert [s.source.rsplit(":", 1)[1] for s in specs] == ["2", "4"]
    assert specs[0].prompt == "a fox\non two lines"


def test_csv_with_image_urls_targets_edit(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    path = write(
        tmp_path,
        "m.csv",
        "prompt,image_urls,repeat\nmake it blue,a.png|https://x.test/b.png,2\ndraw a fox,,\n",
    )
    specs = jobs(path)
    assert [(s.endpoint, s.variant) for s in specs] == [(EDIT, 0), (EDIT, 1), (TEXT_TO_IMAGE, 0)]
    assert specs[0].input["image_urls"] == ["a.png", "https://x.test/b.png"]


def test_jsonl_manifest_sends_each_request_as_written(tmp_path: Path) -> None:
    lines = [
        {"id": "fox", "input": {"prompt": "a fox", "quality": "low"}, "tags": {"k": "v"}},
        {"id": "flux", "endpoint": "fal-ai/flux/dev", "input": {"prompt": "x", "seed": 7}},
    ]
    path = write(tmp_path, "m.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    m = load_manifest(path)
    fox, flux = list(plan(m))
    assert fox.input["quality"] == "low" and fox.input["output_format"] == "png"
    assert fox.tags == {"k": "v"} and fox.prompt == "a fox"
    assert flux.input == {"prompt": "x", "seed": 7}
    assert flux.endpoint == "fal-ai/flux/dev"
    assert any("fal-ai/flux/dev" in n for n in m.notices)


def test_prompts_file_csv_and_jsonl_are_templated_with_vars(tmp_path: Path) -> None:
    write(tmp_path, "p.csv", "id,prompt,mood\nh,a harbour in {place},dark\n")
    write(tmp_path, "p.jsonl", json.dumps({"id": "j", "prompt": "a cafe in {place}"}) + "\n")
    base = "vars: {place: [Kyoto, Lisbon]}\nmatrix: {quality: [low, high]}\n"
    csv_specs = jobs(write(tmp_path, "a.yaml", base + "prompts_file: p.csv\n"))
    assert len(csv_specs) == 4
    assert csv_specs[0].prompt == "a harbour in Kyoto" and csv_specs[0].tags == {"mood": "dark"}
    assert csv_specs[0].source.endswith("p.csv:2")
    jsonl_specs = jobs(write(tmp_path, "b.yaml", base + "prompts_file: p.jsonl\n"))
    assert [s.prompt for s in jsonl_specs][::2] == ["a cafe in Kyoto", "a cafe in Lisbon"]


# --- laziness and properties --------------------------------------------------------------


def test_expansion_is_lazy_even_for_a_trillion_jobs(tmp_path: Path) -> None:
    names = [f"v{i}" for i in range(6)]
    var_lines = "".join(f"  {n}: [{', '.join(str(k) for k in range(100))}]\n" for n in names)
    prompt = " ".join("{" + n + "}" for n in names)
    path = write(tmp_path, "m.yaml", f"vars:\n{var_lines}prompts: ['{prompt}']\n")
    m = load_manifest(path)
    started = time.perf_counter()
    jobs_iter = plan(m)
    assert inspect.isgenerator(m.expand())
    first_ten = list(itertools.islice(jobs_iter, 10))
    assert len(first_ten) == 10
    assert time.perf_counter() - started < 1.0


AXES = {
    "quality": st.lists(st.sampled_from(QUALITIES), min_size=1, max_size=3, unique=True),
    "output_format": st.lists(st.sampled_from(OUTPUT_FORMATS), min_size=1, max_size=3, unique=True),
    "num_images": st.lists(st.integers(1, 4), min_size=1, max_size=4, unique=True),
    "image_size": st.lists(st.sampled_from(sorted(PRESETS)), min_size=1, max_size=3, unique=True),
}


@st.composite
def manifests(draw: st.DrawFn) -> dict[str, Any]:
    axes = draw(st.dictionaries(st.sampled_from(sorted(AXES)), st.just(0), max_size=4))
    matrix = {name: draw(AXES[name]) for name in axes}
    var_names = draw(st.lists(st.sampled_from(["a", "b", "c"]), max_size=3, unique=True))
    variables = {
        n: draw(
            st.lists(st.text("xyz", min_size=1, max_size=3), min_size=1, max_size=3, unique=True)
        )
        for n in var_names
    }
    n_prompts = draw(st.integers(1, 3))
    placeholders = " ".join("{" + n + "}" for n in var_names)
    prompts = [f"prompt {i} {placeholders}" for i in range(n_prompts)]
    doc: dict[str, Any] = {"repeat": draw(st.integers(1, 3)), "prompts": prompts}
    if matrix:
        doc["matrix"] = matrix
    if variables:
        doc["vars"] = variables
    return doc


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifests())
def test_expansion_count_is_the_product_of_everything(doc: dict[str, Any]) -> None:
    expected = doc["repeat"] * len(doc["prompts"])
    for values in [*doc.get("matrix", {}).values(), *doc.get("vars", {}).values()]:
        expected *= len(values)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.yaml"
        path.write_text(yaml.safe_dump(doc))
        m = load_manifest(path)
        deduped = plan(m)
        specs = list(deduped)
    assert len(specs) == expected
    assert deduped.duplicates == 0
    assert len({s.job_id for s in specs}) == expected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(st.text(min_size=1, max_size=6), json_values, max_size=5),
    st.integers(1, 4),
    st.text(min_size=1, max_size=12),
)
def test_fast_ids_equal_job_id(fields: dict[str, Any], repeat: int, endpoint: str) -> None:
    # Expansion hashes each combination once and each repeat incrementally; it must give the
    # same ids as the reference `jobs.job_id`.
    m = Manifest(
        name="p",
        path=Path("p.jsonl"),
        sha256="0" * 64,
        endpoint=endpoint,
        repeat=repeat,
        prompts=(PromptEntry(id="x", text="", templated=False, fields=fields, source="p.jsonl:1"),),
    )
    specs = list(m.expand())
    assert len(specs) == repeat
    for spec in specs:
        assert spec.job_id == job_id(endpoint, fields, spec.variant)


def test_plan_keeps_no_jobs_alive() -> None:
    # Dedup remembers digests, never the JobSpecs: after a pass none is left in memory.
    m = Manifest(
        name="p",
        path=Path("p.yaml"),
        sha256="0" * 64,
        repeat=5000,
        prompts=(PromptEntry(id="x", text="a fox", source="p.yaml:1"),),
    )
    deduped = plan(m)
    assert sum(1 for _ in deduped) == 5000
    gc.collect()
    assert sum(isinstance(o, JobSpec) for o in gc.get_objects()) < 10


@pytest.mark.parametrize("suffix", [".yml", ".ndjson"])
def test_other_suffixes(tmp_path: Path, suffix: str) -> None:
    text = "prompts: [a fox]\n" if suffix == ".yml" else '{"input": {"prompt": "a fox"}}\n'
    assert len(jobs(write(tmp_path, "m" + suffix, text))) == 1
