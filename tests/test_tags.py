"""Tags: `tags: [nature]` stays a list of names from the manifest to the index, so a dataset
loader reads one list<string> column; a manifest that gives mappings keeps mappings."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq
import pytest
from test_gallery_support import gallery_records

from batchgen.cli import main
from batchgen.manifest import load_manifest, plan
from batchgen.outputs.index import read_index
from batchgen.planning.jobs import JobSpec
from batchgen.planning.paths import render_template, template_fields

LIST_TAGS = """\
name: tagged
defaults: {quality: low, output_format: jpeg, image_size: square_hd}
prompts:
  - id: forest
    prompt: a red fox in a misty forest
    tags: [nature, dawn]
  - id: portrait
    prompt: a studio portrait of an owl
    tags: [studio]
  - id: plain
    prompt: a lighthouse at dusk
"""


@pytest.fixture
def run_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    manifest = tmp_path / "tagged.yaml"
    manifest.write_text(LIST_TAGS)
    out = tmp_path / "out"
    args = ["run", str(manifest), "--emulate", "--time-scale", "0", "--out", str(out)]
    assert main([*args, "--quiet"]) == 0
    capsys.readouterr()
    return out


def test_list_tags_reach_the_index_as_lists(run_out: Path) -> None:
    by_prompt = {r["prompt_id"]: r["tags"] for r in read_index(run_out)}
    assert by_prompt == {"forest": ["nature", "dawn"], "portrait": ["studio"], "plain": []}


def test_the_index_loads_as_a_list_of_strings_column(run_out: Path) -> None:
    # What Hugging Face's json loader does under the hood: one Arrow type for the column.
    table = pajson.read_json(run_out / "metadata.jsonl")
    assert table.schema.field("tags").type == pa.list_(pa.string())
    rows = dict(zip(table["prompt_id"].to_pylist(), table["tags"].to_pylist(), strict=True))
    assert rows == {"forest": ["nature", "dawn"], "portrait": ["studio"], "plain": []}


def test_gallery_and_parquet_export_read_list_tags(run_out: Path) -> None:
    page = (run_out / "index.html").read_text()
    assert '<option value="nature">nature (1)</option>' in page
    assert ["nature", "dawn"] in [card[9] for card in gallery_records(run_out)]
    assert main(["export", str(run_out), "--format", "parquet"]) == 0
    table = pq.read_table(run_out / "exports" / "index.parquet")
    assert table.schema.field("tags").type == pa.list_(pa.string())
    assert sorted(map(tuple, table["tags"].to_pylist())) == [(), ("nature", "dawn"), ("studio",)]


def test_a_manifest_that_gives_a_mapping_keeps_mappings_for_all(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        "prompts:\n"
        "  - {prompt: a fox, tags: [nature]}\n"
        "  - {prompt: an owl, tags: {set: winter}}\n"
        "  - {prompt: a lighthouse}\n"
    )
    m = load_manifest(path)
    assert [s.tags for s in plan(m)] == [{"nature": ""}, {"set": "winter"}, {}]
    assert any(n.startswith("tags: some prompts list names") for n in m.notices)


def test_list_tags_survive_the_journal_round_trip_and_fill_the_template() -> None:
    spec = JobSpec(job_id="a" * 64, endpoint="e", input={}, tags=["nature"])
    again = JobSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert again.tags == ["nature"]
    path = render_template("{tag_nature}/{job_id16}_{n}.{ext}", template_fields(again, 0))
    assert str(path) == "nature/aaaaaaaaaaaaaaaa_0.png"


def test_jsonl_and_csv_manifests_choose_their_form_too(tmp_path: Path) -> None:
    jsonl = tmp_path / "m.jsonl"
    lines = [{"input": {"prompt": "a fox"}, "tags": ["nature"]}, {"input": {"prompt": "x"}}]
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert [s.tags for s in plan(load_manifest(jsonl))] == [["nature"], []]
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("prompt,mood\na fox,dark\nan owl,\n")  # a tag column: mappings
    assert [s.tags for s in plan(load_manifest(csv_path))] == [{"mood": "dark"}, {}]
