"""Local reference files in manifests: plan-time checks, patterns, and job ids that follow
the files' content."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from batchgen.errors import ManifestError
from batchgen.manifest import load_manifest, plan
from batchgen.manifest.files import MAX_REFERENCE_BYTES
from batchgen.planning.gptimage import EDIT
from batchgen.planning.jobs import JobSpec, job_id

EXAMPLES = Path(__file__).resolve().parent.parent / "manifests"


def png(
    path: Path, colour: tuple[int, int, int] | None = None, size: tuple[int, int] = (32, 24)
) -> Path:
    """A small PNG; by default its colour comes from its path, so two files differ (files
    with equal bytes are one job)."""
    if colour is None:
        d = hashlib.sha256(str(path).encode()).digest()
        colour = (d[0], d[1], d[2])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="PNG")
    return path


def edit_yaml(folder: Path, body: str, name: str = "m.yaml") -> Path:
    path = folder / name
    path.write_text(f"model: {EDIT}\n{body}")
    return path


def specs(path: Path) -> list[JobSpec]:
    return list(plan(load_manifest(path)))


def problems(path: Path) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    return [str(p) for p in info.value.problems]


# ---- patterns ----------------------------------------------------------------------------


def test_a_pattern_makes_one_job_per_file_sorted(tmp_path: Path) -> None:
    for name in ("c.png", "a.png", "b.png"):
        png(tmp_path / "shots" / name)
    (tmp_path / "shots" / "notes.txt").write_text("not matched")
    (tmp_path / "shots" / "sub.png").mkdir()  # a folder that matches is not a file: skipped
    path = tmp_path / "m.yaml"
    path.write_text(
        f"model: {EDIT}\ndefaults:\n  quality: low\n  image_urls: [shots/*.png]\n"
        "repeat: 2\nprompts: [on white]\n"
    )
    m = load_manifest(path)
    jobs = list(plan(m))
    assert [(s.input["image_urls"], s.variant) for s in jobs] == [
        (["shots/a.png"], 0),
        (["shots/a.png"], 1),
        (["shots/b.png"], 0),
        (["shots/b.png"], 1),
        (["shots/c.png"], 0),
        (["shots/c.png"], 1),
    ]
    assert len(jobs) == 6
    assert m.globs == {"shots/*.png": ("shots/a.png", "shots/b.png", "shots/c.png")}
    assert any("shots/*.png matches 3 files" in n for n in m.notices)
    # Same files, same manifest: the same ids in the same order on every plan.
    assert [s.job_id for s in specs(path)] == [s.job_id for s in jobs]


def test_a_list_is_one_job_and_patterns_in_it_multiply(tmp_path: Path) -> None:
    png(tmp_path / "style.png")
    png(tmp_path / "p" / "1.png")
    png(tmp_path / "p" / "2.png")
    png(tmp_path / "bg" / "x.png")
    path = tmp_path / "m.yaml"
    path.write_text(
        f"model: {EDIT}\nprompts:\n"
        "  - {id: together, prompt: combine, image_urls: [style.png, p/1.png, p/2.png]}\n"
        "  - {id: each, prompt: restyle, image_urls: [p/*.png, style.png, bg/*.png]}\n"
    )
    m = load_manifest(path)
    jobs = list(plan(m))
    assert [s.input["image_urls"] for s in jobs] == [
        ["style.png", "p/1.png", "p/2.png"],
        ["p/1.png", "style.png", "bg/x.png"],
        ["p/2.png", "style.png", "bg/x.png"],
    ]


def test_a_pattern_as_a_matrix_axis_value(tmp_path: Path) -> None:
    for n in range(3):
        png(tmp_path / "a" / f"{n}.png")
    png(tmp_path / "solo.png")
    path = tmp_path / "m.yaml"
    path.write_text(
        f"model: {EDIT}\nmatrix:\n  image_urls: [[a/*.png], [solo.png]]\n"
        "  quality: [low, high]\nprompts: [x]\n"
    )
    assert len(specs(path)) == (3 + 1) * 2


def test_csv_and_jsonl_take_patterns_too(tmp_path: Path) -> None:
    png(tmp_path / "p" / "1.png")
    png(tmp_path / "p" / "2.png")
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("prompt,image_urls\nrestyle,p/*.png\n")
    assert [s.input["image_urls"] for s in specs(csv_path)] == [["p/1.png"], ["p/2.png"]]
    line = {"endpoint": EDIT, "input": {"prompt": "x", "image_urls": ["p/*.png"]}}
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(json.dumps(line) + "\n")
    assert [s.input["image_urls"] for s in specs(jsonl)] == [["p/1.png"], ["p/2.png"]]


def test_products_example_is_one_job_per_product() -> None:
    m = load_manifest(EXAMPLES / "products.yaml")
    jobs = list(plan(m))
    assert len(jobs) == 6
    assert {s.input["image_urls"][0] for s in jobs} == {
        "products/lamp.png",
        "products/mug.png",
        "products/vase.png",
    }
    assert all(s.files[s.input["image_urls"][0]] for s in jobs)


# ---- identity ------------------------------------------------------------------------------


def test_job_id_follows_the_files_content_not_its_name(tmp_path: Path) -> None:
    png(tmp_path / "a.png", (1, 2, 3))
    path = edit_yaml(tmp_path, "prompts:\n  - {prompt: x, image_urls: [a.png]}\n")
    (first,) = specs(path)
    assert first.input["image_urls"] == ["a.png"]  # the request names the file by path
    assert set(first.files) == {"a.png"} and len(first.files["a.png"]) == 64
    # The documented hash, with the file named by content:
    assert first.job_id == job_id(EDIT, first.input, 0, first.files)
    assert first.job_id != job_id(EDIT, first.input, 0)

    png(tmp_path / "a.png", (9, 9, 9))  # edited: a new job
    (edited,) = specs(path)
    assert edited.job_id != first.job_id and edited.files["a.png"] != first.files["a.png"]

    png(tmp_path / "a.png", (1, 2, 3))
    (tmp_path / "a.png").rename(tmp_path / "renamed.png")  # same bytes, another name
    path.write_text(f"model: {EDIT}\nprompts:\n  - {{prompt: x, image_urls: [renamed.png]}}\n")
    (renamed,) = specs(path)
    assert renamed.job_id == first.job_id


def test_two_names_for_the_same_bytes_collapse_into_one_job(tmp_path: Path) -> None:
    png(tmp_path / "a.png", (5, 6, 7))
    png(tmp_path / "copy.png", (5, 6, 7))
    path = edit_yaml(tmp_path, "matrix: {image_urls: [[a.png], [copy.png]]}\nprompts: [x]\n")
    deduplicated = plan(load_manifest(path))
    assert len(list(deduplicated)) == 1 and deduplicated.duplicates == 1


def test_spec_files_survive_the_journal_round_trip(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    (spec,) = specs(edit_yaml(tmp_path, "defaults: {image_urls: [a.png]}\nprompts: [x]\n"))
    assert JobSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    old = {k: v for k, v in spec.to_json().items() if k != "files"}  # a journal from before
    assert JobSpec.from_json(old).files == {}


# ---- plan-time errors --------------------------------------------------------------------


def test_every_file_problem_is_reported_at_once_with_its_line(tmp_path: Path) -> None:
    png(tmp_path / "ok.png")
    (tmp_path / "text.png").write_text("not a picture")
    Image.new("RGB", (8, 8)).save(tmp_path / "anim.gif", format="GIF")
    with (tmp_path / "huge.png").open("wb") as f:  # sparse: no disk used, never read
        f.truncate(MAX_REFERENCE_BYTES + 1)
    (tmp_path / "empty").mkdir()
    path = tmp_path / "m.yaml"
    path.write_text(
        f"model: {EDIT}\n"
        "prompts:\n"
        "  - {prompt: a, image_urls: [ok.png, missing.png]}\n"
        "  - {prompt: b, image_urls: [text.png]}\n"
        "  - {prompt: c, image_urls: [anim.gif]}\n"
        "  - {prompt: d, image_urls: [huge.png]}\n"
        "  - {prompt: e, image_urls: [empty/*.png]}\n"
        "  - {prompt: f, image_urls: [ok.png], mask_url: '*.png'}\n"
        "  - {prompt: g, image_urls: ['../*.png']}\n"
        "  - {prompt: h, image_urls: ['file:///etc/*.png']}\n"
    )
    assert problems(path) == [
        f"{path}:3: prompts[0].image_urls[1]: no such file 'missing.png' (local paths are "
        "relative to the manifest)",
        f"{path}:4: prompts[1].image_urls[0]: 'text.png' is not an image (PNG, JPEG or WebP)",
        f"{path}:5: prompts[2].image_urls[0]: 'anim.gif' is a GIF image; gpt-image-2 takes "
        "PNG, JPEG or WebP",
        # one byte over: in bytes, since "50 MiB; at most 50 MiB" would say nothing
        f"{path}:6: prompts[3].image_urls[0]: 'huge.png' is 52,428,801 bytes; a reference image"
        " may be at most 52,428,800 bytes",
        f"{path}:7: prompts[4].image_urls[0]: 'empty/*.png' matches no file (patterns are "
        "relative to the manifest)",
        f"{path}:8: prompts[5].mask_url: '*.png': patterns are allowed in image_urls only",
        f"{path}:9: prompts[6].image_urls[0]: '../*.png': a pattern must stay inside the "
        "manifest's folder",
        f"{path}:10: prompts[7].image_urls[0]: 'file:///etc/*.png': use an http(s) URL, a "
        "data: URI or a path next to the manifest",
    ]


def test_a_pattern_match_that_is_bad_is_named(tmp_path: Path) -> None:
    png(tmp_path / "p" / "good.png")
    (tmp_path / "p" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    path = edit_yaml(tmp_path, "defaults: {image_urls: [p/*.png]}\nprompts: [x]\n")
    assert problems(path) == [
        f"{path}:2: defaults.image_urls[0]: 'p/bad.png' is not an image (PNG, JPEG or WebP)"
    ]


def test_a_symlinked_match_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    png(tmp_path / "outside.png")
    (tmp_path / "m" / "p").mkdir(parents=True)
    (tmp_path / "m" / "p" / "x.png").symlink_to(tmp_path / "outside.png")
    path = edit_yaml(tmp_path / "m", "defaults: {image_urls: [p/*.png]}\nprompts: [x]\n")
    assert problems(path) == [
        f"{path}:2: defaults.image_urls[0]: 'p/x.png' is outside the manifest's folder; local "
        "files must be inside it"
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_a_plan_error(tmp_path: Path) -> None:
    locked = png(tmp_path / "locked.png")
    locked.chmod(0)
    try:
        path = edit_yaml(tmp_path, "defaults: {image_urls: [locked.png]}\nprompts: [x]\n")
        assert problems(path) == [
            f"{path}:2: defaults.image_urls[0]: cannot read 'locked.png': Permission denied"
        ]
    finally:
        locked.chmod(0o644)


def test_csv_file_problems_carry_the_row_line(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(
        "prompt,image_urls,mask_url\nfine,https://x.test/a.png,\nbad,nope/*.png,m.png\n"
    )
    assert problems(path) == [
        f"{path}:3: image_urls[0]: 'nope/*.png' matches no file (patterns are relative to "
        "the manifest)",
        f"{path}:3: mask_url: no such file 'm.png' (local paths are relative to the manifest)",
    ]


def test_each_file_is_read_once_however_many_jobs_name_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    png(tmp_path / "a.png")
    reads: list[Path] = []
    real = Path.read_bytes

    def counting(self: Path) -> bytes:
        reads.append(self)
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", counting)
    path = edit_yaml(
        tmp_path,
        "matrix: {quality: [low, medium, high]}\nprompts:\n"
        + "".join(f"  - {{prompt: p{i}, image_urls: [a.png]}}\n" for i in range(20)),
    )
    assert len(specs(path)) == 60
    assert [p.name for p in reads].count("a.png") == 1


def test_a_file_name_with_pattern_characters_is_written_bracketed(tmp_path: Path) -> None:
    png(tmp_path / "shot[1].png")
    png(tmp_path / "shot1.png")
    path = edit_yaml(tmp_path, 'prompts: [{prompt: x, image_urls: ["shot[[]1].png"]}]\n')
    (spec,) = specs(path)
    assert spec.input["image_urls"] == ["shot[1].png"] and set(spec.files) == {"shot[1].png"}


def test_a_reference_that_cannot_be_read_as_a_file_is_a_plan_error(tmp_path: Path) -> None:
    # Runs as root too (CI), where permission bits do not stop a read: a folder named like an
    # image cannot be read as one either.
    (tmp_path / "folder.png").mkdir()
    path = edit_yaml(tmp_path, "defaults: {image_urls: [folder.png]}\nprompts: [x]\n")
    assert problems(path) == [
        f"{path}:2: defaults.image_urls[0]: 'folder.png' is a folder, not an image file"
    ]
