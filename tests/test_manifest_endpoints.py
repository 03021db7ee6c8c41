"""Endpoint ids: a near miss of a known id is a typo with a "did you mean"; a manifest may insist
(`allow_unknown_model`); any other unknown id runs unchecked, with its notice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchgen.cli import main
from batchgen.manifest import load_manifest, plan
from batchgen.planning.gptimage import EDIT, TEXT_TO_IMAGE, resembles_known


def run_plan(capsys: pytest.CaptureFixture[str], path: Path, *extra: str) -> tuple[int, str, str]:
    code = main(["plan", str(path), *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_typo_in_the_model_is_an_error_with_a_did_you_mean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("model: openai/gpt-image2\nprompts: [a red fox]\n")
    code, out, err = run_plan(capsys, path)
    assert (code, out) == (2, "")
    assert err == (
        "batchgen: 1 problem in the manifest:\n"
        f"  {path}:1: model: 'openai/gpt-image2' is not an endpoint batchgen knows (did you "
        "mean 'openai/gpt-image-2'?); if the id is right, add allow_unknown_model: true\n"
    )


def test_allow_unknown_model_runs_the_id_as_written_with_its_notice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        "model: openai/gpt-image2\nallow_unknown_model: true\n"
        "defaults: {seed: 7}\nprompts: [a red fox]\n"
    )
    code, out, _ = run_plan(capsys, path, "--json")
    assert code == 0
    doc = json.loads(out)
    assert any("openai/gpt-image2 is not one batchgen knows" in n for n in doc["notices"])
    (spec,) = plan(load_manifest(path))
    assert spec.endpoint == "openai/gpt-image2"
    assert spec.input == {"prompt": "a red fox", "seed": 7}  # unchecked: sent as written


@pytest.mark.parametrize(
    "model", ["fal-ai/flux/dev", "openai/gpt-image-1", "openai/gpt-image-2/byok"]
)
def test_other_unknown_ids_still_run_unchecked(tmp_path: Path, model: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(f"model: {model}\nprompts: [a red fox]\n")
    m = load_manifest(path)
    assert m.endpoint == model
    assert any(f"model {model} is not one batchgen knows" in n for n in m.notices)


def test_csv_and_jsonl_may_insist_too(tmp_path: Path) -> None:
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("prompt,model,allow_unknown_model\na fox,openai/gpt-image2,true\n")
    (from_csv,) = plan(load_manifest(csv_path))
    line = {"endpoint": "openai/gpt-image2", "allow_unknown_model": True, "input": {"prompt": "x"}}
    jsonl_path = tmp_path / "m.jsonl"
    jsonl_path.write_text(json.dumps(line) + "\n")
    (from_jsonl,) = plan(load_manifest(jsonl_path))
    assert from_csv.endpoint == from_jsonl.endpoint == "openai/gpt-image2"
    assert "allow_unknown_model" not in from_csv.tags  # a setting, not a tag


@pytest.mark.parametrize(
    ("endpoint", "meant"),
    [
        ("openai/gpt-image2", TEXT_TO_IMAGE),
        ("openai/gpt-imgae-2", TEXT_TO_IMAGE),  # two letters swapped
        ("OpenAI/GPT-Image-2", TEXT_TO_IMAGE),  # ids are case-sensitive
        ("openai/gpt-image-2/edits", EDIT),
        ("openai/gpt-image-2/edi", EDIT),
        (TEXT_TO_IMAGE, None),
        (EDIT, None),
        ("openai/gpt-image-1", None),  # another version, not a typo
        ("openai/gpt-image-1/edit", None),
        ("openai/gpt-image-2/byok", None),
        ("fal-ai/flux/dev", None),
    ],
)
def test_which_ids_look_like_typos(endpoint: str, meant: str | None) -> None:
    assert resembles_known(endpoint) == meant
