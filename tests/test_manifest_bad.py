# ruff: noqa: E501  (the expected messages are kept whole, one per line, to be read as printed)
"""The bad-input corpus: every broken manifest under tests/bad_manifests/ must make
`batchgen plan` exit 2 with exactly these problems (file:line: field: message), all at once,
with no traceback and nothing on stdout.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchgen.cli import main
from batchgen.errors import ManifestError
from batchgen.manifest import load_manifest, plan

CORPUS = Path(__file__).parent / "bad_manifests"

# file name -> the problem lines `batchgen plan` must print, in order.
CASES = {
    "bad_format.yaml": [
        "bad_format.yaml:2: defaults.output_format: must be one of jpeg, png, webp, got 'gif'",
    ],
    "bad_name.yaml": [
        "bad_name.yaml:1: name: '../../etc' must be a simple folder name: letters, digits, '.', '_', '-', at most 64 characters",
    ],
    "bad_placeholder.yaml": [
        "bad_placeholder.yaml:4: prompts[0].prompt: placeholder {animal.__class__} must be a plain name like {subject}",
    ],
    "bad_preset.yaml": [
        "bad_preset.yaml:2: defaults.image_size: unknown preset 'square_xl'; use one of square_hd, square, portrait_4_3, portrait_16_9, landscape_4_3, landscape_16_9, or a custom size as WIDTHxHEIGHT (like 1536x1024) or {width, height}",
    ],
    "bad_pricing.yaml": [
        "bad_pricing.yaml:3: pricing.table.big: a bucket is WIDTHxHEIGHT, like 1024x1024",
        "bad_pricing.yaml:4: pricing.table.1024x1024.cheap: unknown quality; use low, medium, high",
        "bad_pricing.yaml:5: pricing.per_image: a price cannot be negative",
    ],
    "bad_quality.yaml": [
        "bad_quality.yaml:2: matrix.quality[1]: must be one of low, medium, high, got 'ultra'",
    ],
    "csv_bad_size.csv": [
        "csv_bad_size.csv:2: image_size: must be a preset (square_hd, square, portrait_4_3, portrait_16_9, landscape_4_3, landscape_16_9, or auto for edits) or WIDTHxHEIGHT, got 'huge'",
        "csv_bad_size.csv:3: image_size.width: must be a multiple of 16, got 1000",
        "csv_bad_size.csv:3: image_size.height: must be a multiple of 16, got 1000",
    ],
    "csv_model_typo.csv": [
        "csv_model_typo.csv:2: model: 'openai/gpt-image-2/edits' is not an endpoint batchgen knows (did you mean 'openai/gpt-image-2/edit'?); if the id is right, add a column allow_unknown_model set to true",
        "csv_model_typo.csv:2: image_urls: is required for openai/gpt-image-2/edit (on the prompt, in defaults or in the matrix)",
        "csv_model_typo.csv:3: model: 'OpenAI/GPT-Image-2' is not an endpoint batchgen knows (did you mean 'openai/gpt-image-2'?); if the id is right, add a column allow_unknown_model set to true",
        "csv_model_typo.csv:3: quality: must be one of low, medium, high, got 'best'",
    ],
    "csv_no_prompt_column.csv": [
        "csv_no_prompt_column.csv:1: no 'prompt' column; the header has: id, Prompt, quality",
    ],
    "csv_ragged.csv": [
        "csv_ragged.csv:3: the row has 3 cells; the header has 2",
    ],
    "duplicate_ids.yaml": [
        "duplicate_ids.yaml:4: prompts[1].id: 'fox' is already the id of the prompt at duplicate_ids.yaml:2",
    ],
    "duplicate_key.yaml": [
        "duplicate_key.yaml:3: defaults.quality: appears twice in this mapping (first on line 2)",
    ],
    "edit_no_images.yaml": [
        "edit_no_images.yaml:3: prompts[0].image_urls: is required for openai/gpt-image-2/edit (on the prompt, in defaults or in the matrix)",
    ],
    "empty.yaml": [
        "empty.yaml: the manifest is empty",
    ],
    "empty_axis.yaml": [
        "empty_axis.yaml:2: matrix.quality: lists no values: the matrix would make no jobs",
    ],
    "empty_prompt.yaml": [
        "empty_prompt.yaml:3: prompts[1].prompt: is empty",
    ],
    "empty_rows.csv": [
        "empty_rows.csv: no jobs: the file has no rows",
    ],
    "jsonl_bad.jsonl": [
        "jsonl_bad.jsonl:2: not valid JSON: Expecting ',' delimiter: line 1 column 48 (char 47)",
        "jsonl_bad.jsonl:3: imput: unknown key; use id, endpoint, allow_unknown_model, input, tags (did you mean 'input'?)",
        "jsonl_bad.jsonl:3: input: must be a JSON object: the request body",
        "jsonl_bad.jsonl:4: input.image_size.width: must be a multiple of 16, got 100",
        "jsonl_bad.jsonl:4: input.image_size.height: must be a multiple of 16, got 100",
    ],
    "jsonl_endpoint_typo.jsonl": [
        "jsonl_endpoint_typo.jsonl:1: endpoint: 'openai/gpt-imag-2' is not an endpoint batchgen knows (did you mean 'openai/gpt-image-2'?); if the id is right, add \"allow_unknown_model\": true to the line",
        "jsonl_endpoint_typo.jsonl:1: input.quality: must be one of low, medium, high, got 'ultra'",
        "jsonl_endpoint_typo.jsonl:2: allow_unknown_model: must be true or false, got 'yes'",
        "jsonl_endpoint_typo.jsonl:2: endpoint: 'openai/gpt-image2' is not an endpoint batchgen knows (did you mean 'openai/gpt-image-2'?); if the id is right, add \"allow_unknown_model\": true to the line",
    ],
    "latin1.csv": [
        "latin1.csv:2: not UTF-8 text (byte 0xe9); save the file as UTF-8",
    ],
    "many_problems.yaml": [
        "many_problems.yaml:4: defaults.quality: must be one of low, medium, high, got 'best'",
        "many_problems.yaml:6: matrix.image_size[1].width: must be a multiple of 16, got 17",
        "many_problems.yaml:11: prompts[1].prompt: uses {animl}, which is not in vars (did you mean 'animal'?)",
        "many_problems.yaml:12: prompts[2].prompt: is empty",
    ],
    "misspelt_sections.yaml": [
        "misspelt_sections.yaml:1: modle: unknown key (did you mean 'model'?); expected one of name, model, allow_unknown_model, byok, defaults, matrix, repeat, vars, prompts, prompts_file, output, pricing, priority, allow_fallbacks",
        "misspelt_sections.yaml:2: var: unknown key (did you mean 'vars'?); expected one of name, model, allow_unknown_model, byok, defaults, matrix, repeat, vars, prompts, prompts_file, output, pricing, priority, allow_fallbacks",
        "misspelt_sections.yaml:7: prompts[0].qualty: unknown field for openai/gpt-image-2/edit (did you mean 'quality'?)",
    ],
    "missing_file.yaml": [
        "missing_file.yaml:3: defaults.image_urls[0]: no such file 'refs/nope.png' (local paths are relative to the manifest)",
        "missing_file.yaml:4: defaults.mask_url: 'ftp://example.com/mask.png': use an http(s) URL, a data: URI or a path next to the manifest",
    ],
    "missing_var.yaml": [
        "missing_var.yaml:2: vars.color: is used by no prompt (write {color} in a prompt to use it)",
        "missing_var.yaml:4: prompts[0].prompt: uses {colour}, which is not in vars (did you mean 'color'?)",
    ],
    "model_typo.yaml": [
        "model_typo.yaml:1: model: 'openai/gpt-image2' is not an endpoint batchgen knows (did you mean 'openai/gpt-image-2'?); if the id is right, add allow_unknown_model: true",
        "model_typo.yaml:3: defaults.qualty: unknown field for openai/gpt-image-2 (did you mean 'quality'?)",
    ],
    "no_prompts.yaml": [
        "no_prompts.yaml:1: prompts: no prompts: list them under prompts or name a prompts_file",
    ],
    "not_mapping.yaml": [
        "not_mapping.yaml:1: the manifest must be a mapping of keys (name, prompts, ...), got ['a red fox', 'a blue owl']",
    ],
    "num_images.yaml": [
        "num_images.yaml:3: prompts[0].num_images: must be an integer from 1 to 4, got 5",
    ],
    "output_escapes.yaml": [
        "output_escapes.yaml:1: output: must be a relative path that stays inside the output folder (no leading '/', no '..', no hidden '.' folders)",
    ],
    "output_no_id.yaml": [
        "output_no_id.yaml:1: output: must contain {job_id16} (or {job_id}), {n} and {ext}, so that no two images share a file name",
    ],
    "output_unknown_field.yaml": [
        "output_unknown_field.yaml:1: output: unknown field {model}; use ext, job_id, job_id16, n, prompt_id, quality, size, variant, a var or tag_<name>",
    ],
    "output_var_missing.yaml": [
        "output_var_missing.yaml:3: output: uses {animal}, which the prompt at output_var_missing.yaml:6 does not have",
    ],
    "path_escapes.yaml": [
        "path_escapes.yaml:4: prompts[0].image_urls[0]: '../test_manifest_bad.py' is outside the manifest's folder; local files must be inside it",
    ],
    "prompt_not_text.yaml": [
        "prompt_not_text.yaml:2: prompts[0].prompt: must be text, got 42",
        "prompt_not_text.yaml:3: prompts[1]: must be text or a mapping, got ['a', 'list']",
    ],
    "prompts_file_empty.yaml": [
        "prompts_file_empty.yaml:1: prompts_file: 'empty_rows.csv' has no prompts",
    ],
    "prompts_file_errors.yaml": [
        "rows_with_errors.csv:3: num_images: must be a whole number, got 'two'",
        "rows_with_errors.csv:3: prompt: uses {city}, which is not in vars",
        "rows_with_errors.csv:3: quality: must be one of low, medium, high, got 'best'",
    ],
    "prompts_file_missing.yaml": [
        "prompts_file_missing.yaml:1: prompts_file: no such file 'prompts_nowhere.csv' (local paths are relative to the manifest)",
    ],
    "repeat_text.yaml": [
        "repeat_text.yaml:1: repeat: must be a whole number, got 'three'",
    ],
    "repeat_text_and_more.yaml": [
        "repeat_text_and_more.yaml:1: repeat: must be a whole number, got 'three'",
        "repeat_text_and_more.yaml:3: defaults.quality: must be one of low, medium, high, got 'best'",
        "repeat_text_and_more.yaml:8: prompts[1].prompt: uses {animl}, which is not in vars (did you mean 'animal'?)",
        "repeat_text_and_more.yaml:10: prompts[2].num_images: must be an integer from 1 to 4, got 9",
        "repeat_text_and_more.yaml:11: prompts[3].prompt: is empty",
    ],
    "repeat_zero.yaml": [
        "repeat_zero.yaml:1: repeat: must be greater than or equal to 1",
    ],
    "secret.yaml": [
        "secret.yaml:2: defaults.openai_api_key: never put an API key in a manifest; batchgen reads OPENAI_API_KEY from the environment when it submits",
    ],
    "size_not_multiple.yaml": [
        "size_not_multiple.yaml:4: matrix.image_size[1].width: must be a multiple of 16, got 1000",
    ],
    "size_ratio.yaml": [
        "size_ratio.yaml:2: defaults.image_size: aspect ratio of 3840x1024 is over 3:1",
    ],
    "size_side_too_long.yaml": [
        "size_side_too_long.yaml:2: defaults.image_size.width: must be at most 3840, got 4096",
    ],
    "size_text_number.yaml": [
        "size_text_number.yaml:2: defaults.image_size.width: must be an integer, got '1024'",
    ],
    "size_text_bad.yaml": [
        "size_text_bad.yaml:2: defaults.image_size.width: must be a multiple of 16, got 1000",
        "size_text_bad.yaml:2: defaults.image_size.height: must be a multiple of 16, got 1000",
        "size_text_bad.yaml:4: matrix.image_size[1]: unknown preset 'big'; use one of square_hd, square, portrait_4_3, portrait_16_9, landscape_4_3, landscape_16_9, or a custom size as WIDTHxHEIGHT (like 1536x1024) or {width, height}",
    ],
    "size_too_small.yaml": [
        "size_too_small.yaml:2: defaults.image_size: 512x512 is 262,144 pixels; it must be between 655,360 and 8,294,400",
    ],
    "top_level_typos.yaml": [
        "top_level_typos.yaml:2: defualts: unknown key (did you mean 'defaults'?); expected one of name, model, allow_unknown_model, byok, defaults, matrix, repeat, vars, prompts, prompts_file, output, pricing, priority, allow_fallbacks",
        "top_level_typos.yaml:5: matrix.image_sizes: unknown field for openai/gpt-image-2 (did you mean 'image_size'?)",
        "top_level_typos.yaml:6: repaet: unknown key (did you mean 'repeat'?); expected one of name, model, allow_unknown_model, byok, defaults, matrix, repeat, vars, prompts, prompts_file, output, pricing, priority, allow_fallbacks",
        "top_level_typos.yaml:8: prompts[0].prompt: is required",
        "top_level_typos.yaml:8: prompts[0].promt: unknown field for openai/gpt-image-2 (did you mean 'prompt'?)",
        "top_level_typos.yaml:10: prompts[1].qualty: unknown field for openai/gpt-image-2 (did you mean 'quality'?)",
        "top_level_typos.yaml:11: outptu: unknown key (did you mean 'output'?); expected one of name, model, allow_unknown_model, byok, defaults, matrix, repeat, vars, prompts, prompts_file, output, pricing, priority, allow_fallbacks",
    ],
    "unknown_field.yaml": [
        "unknown_field.yaml:2: defaults.qualty: unknown field for openai/gpt-image-2 (did you mean 'quality'?)",
    ],
    "unknown_top_key.yaml": [
        "unknown_top_key.yaml:2: promtps: unknown key (did you mean 'prompts'?); expected one of name, model, allow_unknown_model, byok, defaults, matrix, repeat, vars, prompts, prompts_file, output, pricing, priority, allow_fallbacks",
    ],
    "unused_var.yaml": [
        "unused_var.yaml:3: vars.style: is used by no prompt (write {style} in a prompt to use it)",
    ],
    "utf16.yaml": [
        "utf16.yaml: the file is UTF-16; save it as UTF-8",
    ],
    "wrong_suffix.txt": [
        "wrong_suffix.txt: unknown manifest type '.txt'; use .yaml, .yml, .csv or .jsonl",
    ],
    "yaml_bomb.yaml": [
        "yaml_bomb.yaml:1: too many YAML values (aliases that expand into millions of values?)",
    ],
    "yaml_syntax.yaml": [
        "yaml_syntax.yaml:5: YAML syntax: found unexpected end of stream, while scanning a quoted scalar that starts on line 3",
    ],
    "yaml_tab.yaml": [
        "yaml_tab.yaml:3: YAML syntax: found character '\\t' that cannot start any token",
    ],
}


def plan_stderr(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    code = main(["plan", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def expected(lines: list[str]) -> str:
    n = len(lines)
    head = f"batchgen: {n} problem{'s' if n != 1 else ''} in the manifest:"
    return "\n".join([head, *(f"  {line}" for line in lines)]) + "\n"


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30
    on_disk = {p.name for p in CORPUS.iterdir() if p.is_file()} - {"rows_with_errors.csv"}
    assert on_disk == set(CASES), "every file in the corpus has an expected message"


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_manifest(
    name: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(CORPUS)
    code, out, err = plan_stderr(capsys, [name])
    assert (code, out) == (2, "")
    assert err == expected(CASES[name])
    assert "Traceback" not in err


def test_top_level_typos_are_reported_together_with_everything_else(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A misspelt top-level key used to be the only problem reported: fixing it revealed the
    # next ones, one run at a time. Now one `plan` lists them all, each at file:line: field.
    monkeypatch.chdir(tmp_path)
    Path("m.yaml").write_text(
        "defualts: {quality: low}\n"
        "promts: [a fox]\n"
        "matrix: {quality: [low]}\n"
        "outptu: x\n"
        "prompts:\n"
        "  - prompt: an owl\n"
        "    qualty: high\n"
    )
    code, out, err = plan_stderr(capsys, ["m.yaml"])
    assert (code, out) == (2, "")
    head, *lines = err.splitlines()
    assert head == "batchgen: 4 problems in the manifest:"
    assert [line.split(": ")[0:2] for line in lines] == [
        ["  m.yaml:1", "defualts"],
        ["  m.yaml:2", "promts"],
        ["  m.yaml:4", "outptu"],
        ["  m.yaml:7", "prompts[0].qualty"],
    ]
    assert "(did you mean 'defaults'?)" in lines[0] and "(did you mean 'output'?)" in lines[2]


def test_secret_value_never_printed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(CORPUS)
    _, _, err = plan_stderr(capsys, ["secret.yaml"])
    assert "DO-NOT-PRINT" not in err


def test_fifty_megabyte_prompt_fails_fast(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with open("huge.yaml", "w") as f:
        f.write('prompts:\n  - "')
        chunk = "a red fox in the snow " * 1000
        for _ in range(50_000_000 // len(chunk) + 1):
            f.write(chunk)
        f.write('"\n')
    started = time.perf_counter()
    code, out, err = plan_stderr(capsys, ["huge.yaml"])
    assert time.perf_counter() - started < 2.0
    assert (code, out) == (2, "")
    assert err == expected(
        ["huge.yaml: the file is 47.7 MiB; a manifest or prompts file may be at most 32 MiB"]
    )


def test_prompt_over_the_length_cap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("long.yaml").write_text(f"prompts:\n  - ok\n  - {'x' * 40_000}\n")
    code, _, err = plan_stderr(capsys, ["long.yaml"])
    assert code == 2
    assert err == expected(
        ["long.yaml:3: prompts[1].prompt: is 40,000 characters; a prompt may be at most 32,000"]
    )


def test_vars_that_expand_past_the_cap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("v.yaml").write_text(f"vars:\n  big: [{'y' * 20_000}]\nprompts:\n  - '{{big}} {{big}}'\n")
    code, _, err = plan_stderr(capsys, ["v.yaml"])
    assert code == 2
    assert err == expected(
        [
            "v.yaml:4: prompts[0].prompt: can expand to 40,001 characters; a prompt may be at "
            "most 32,000"
        ]
    )


def test_missing_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = plan_stderr(capsys, ["nowhere.yaml"])
    assert (code, err) == (2, expected(["nowhere.yaml: no such file"]))


def test_prompts_file_outside_the_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "secret.csv").write_text("prompt\nhello\n")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.yaml").write_text("prompts_file: ../secret.csv\n")
    monkeypatch.chdir(tmp_path / "m")
    code, _, err = plan_stderr(capsys, ["a.yaml"])
    assert (code, err) == (
        2,
        expected(
            [
                "a.yaml:1: prompts_file: '../secret.csv' is outside the manifest's folder; local "
                "files must be inside it"
            ]
        ),
    )


def test_symlink_out_of_the_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "outside.png").write_bytes(b"\x89PNG")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "ref.png").symlink_to(tmp_path / "outside.png")
    (tmp_path / "m" / "e.yaml").write_text(
        "model: openai/gpt-image-2/edit\ndefaults:\n  image_urls: [ref.png]\nprompts: [blue]\n"
    )
    monkeypatch.chdir(tmp_path / "m")
    code, _, err = plan_stderr(capsys, ["e.yaml"])
    assert (code, err) == (
        2,
        expected(
            [
                "e.yaml:3: defaults.image_urls[0]: 'ref.png' is outside the manifest's folder; local "
                "files must be inside it"
            ]
        ),
    )


def test_thousands_of_bad_rows_are_counted_not_all_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("rows.csv").write_text("prompt,quality\n" + "a fox,best\n" * 2000)
    code, _, err = plan_stderr(capsys, ["rows.csv"])
    lines = err.splitlines()
    assert code == 2
    assert lines[0] == "batchgen: 2,000 problems in the manifest:"
    assert lines[1] == "  rows.csv:2: quality: must be one of low, medium, high, got 'best'"
    assert lines[-1] == "  ... and 1,950 more"
    assert len(lines) == 52


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-5, 5000)
    | st.floats(allow_nan=True)
    | st.text("ab{}x./_ ", max_size=8)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                ["prompt", "id", "quality", "image_size", "width", "height", "tags", "a"]
            ),
            inner,
            max_size=3,
        )
    ),
    max_leaves=10,
)
TOP_KEYS = ["name", "model", "defaults", "matrix", "repeat", "vars", "prompts", "output", "pricing"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(TOP_KEYS), values, max_size=6))
def test_any_yaml_document_loads_or_fails_cleanly(doc: dict[str, Any]) -> None:
    # Whatever the file holds, the outcome is a Manifest or a ManifestError: never a crash.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.yaml"
        path.write_text(yaml.safe_dump(doc))
        try:
            m = load_manifest(path)
        except ManifestError as exc:
            assert exc.problems
            assert all(p.file == str(path) for p in exc.problems)
            return
        for _ in itertools.islice(plan(m), 50):
            pass
