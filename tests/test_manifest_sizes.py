"""`WIDTHxHEIGHT` sizes: the same text CSV takes is taken wherever a manifest sets a size, and
it makes the same job (and job id) as the `{width, height}` it stands for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchgen.manifest import load_manifest, plan
from batchgen.planning.gptimage import TEXT_TO_IMAGE, validate_input
from batchgen.planning.jobs import JobSpec, job_id

MAPPING = {"width": 1536, "height": 1024}


def specs(folder: Path, name: str, text: str) -> list[JobSpec]:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return list(plan(load_manifest(path)))


def expected_id(**fields: object) -> str:
    request = {
        "prompt": "a red fox",
        "image_size": MAPPING,
        "quality": "high",
        "num_images": 1,
        "output_format": "png",
        "sync_mode": False,
        **fields,
    }
    return job_id(TEXT_TO_IMAGE, request, 0)


@pytest.mark.parametrize(
    "yaml_text",
    [
        'defaults:\n  image_size: "1536x1024"\nprompts: [a red fox]\n',
        "defaults:\n  image_size: 1536 X 1024\nprompts: [a red fox]\n",
        'matrix:\n  image_size: ["1536x1024"]\nprompts: [a red fox]\n',
        'prompts:\n  - prompt: a red fox\n    image_size: "1536×1024"\n',
        'prompts:\n  - prompt: a red fox\n    image_size: ["1536x1024"]\n',
        "defaults:\n  image_size: {width: 1536, height: 1024}\nprompts: [a red fox]\n",
    ],
)
def test_yaml_text_size_is_the_same_job_as_the_mapping(tmp_path: Path, yaml_text: str) -> None:
    (spec,) = specs(tmp_path, "m.yaml", yaml_text)
    assert spec.input["image_size"] == MAPPING  # the request carries the mapping, as fal wants
    assert spec.job_id == expected_id()


def test_text_and_mapping_in_one_matrix_collapse_into_one_job(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        'matrix:\n  image_size: ["1536x1024", {width: 1536, height: 1024}]\nprompts: [a red fox]\n'
    )
    deduplicated = plan(load_manifest(path))
    assert [s.job_id for s in deduplicated] == [expected_id()]
    assert deduplicated.duplicates == 1


def test_csv_and_jsonl_sizes_match_the_yaml_job(tmp_path: Path) -> None:
    (from_csv,) = specs(tmp_path, "m.csv", "prompt,image_size\na red fox,1536x1024\n")
    line = {"id": "fox", "input": {"prompt": "a red fox", "image_size": "1536x1024"}}
    (from_jsonl,) = specs(tmp_path, "m.jsonl", json.dumps(line) + "\n")
    assert from_csv.job_id == from_jsonl.job_id == expected_id()
    assert from_jsonl.input["image_size"] == MAPPING


def test_text_sizes_are_checked_by_the_size_rules(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text('defaults:\n  image_size: "512x512"\nprompts: [a red fox]\n')
    with pytest.raises(Exception, match="512x512 is 262,144 pixels"):
        load_manifest(path)


def test_another_endpoint_gets_the_text_as_written(tmp_path: Path) -> None:
    # batchgen does not know what fal-ai/flux/dev takes: its fields are passed unchecked.
    (spec,) = specs(
        tmp_path,
        "m.yaml",
        'model: fal-ai/flux/dev\ndefaults: {image_size: "1024x768"}\nprompts: [a]\n',
    )
    assert spec.input["image_size"] == "1024x768"


def test_the_wire_still_takes_only_presets_and_mappings() -> None:
    # The emulator checks requests as fal would: text sizes exist only in manifests.
    (problem,) = validate_input(TEXT_TO_IMAGE, {"prompt": "a", "image_size": "1536x1024"})
    assert problem.message == (
        "unknown preset '1536x1024'; use one of square_hd, square, portrait_4_3, portrait_16_9, "
        "landscape_4_3, landscape_16_9, or a custom size as {width, height}"
    )
    assert (
        validate_input(TEXT_TO_IMAGE, {"prompt": "a", "image_size": "1536x1024"}, size_text=True)
        == []
    )
