"""The parts of a manifest's identity: what it covers (manifest/identity.py), the copy of the
manifest as run (outputs/sources.py), and the stale set readers use (journal/stale.py)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from batchgen.errors import ManifestError
from batchgen.journal import stale as stale_module
from batchgen.journal.stale import StaleJobs
from batchgen.manifest import load_manifest
from batchgen.outputs import sources
from batchgen.outputs.sources import write_sources

REPO = Path(__file__).resolve().parent.parent


def test_a_manifest_that_reads_nothing_else_keeps_its_bytes_sha256(tmp_path: Path) -> None:
    m = tmp_path / "m.yaml"
    m.write_text("prompts: [a fox]\n")
    loaded = load_manifest(m)
    assert loaded.sha256 == loaded.file_sha256 == hashlib.sha256(m.read_bytes()).hexdigest()
    assert loaded.reads == {}


def test_identity_covers_prompts_file_references_and_matches(tmp_path: Path) -> None:
    (tmp_path / "shots").mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (16, 16), "#336699").save(tmp_path / "shots" / f"{name}.png")
    (tmp_path / "p.csv").write_text("prompt\nrestyle it\n")
    m = tmp_path / "m.yaml"
    m.write_text(
        "model: openai/gpt-image-2/edit\n"
        "defaults: {image_urls: [./shots/*.png]}\n"
        "prompts_file: ./p.csv\n"
    )
    first = load_manifest(m)
    assert set(first.reads) == {"p.csv", "shots/a.png", "shots/b.png"}  # names normalised
    assert first.sha256 != first.file_sha256
    assert load_manifest(m).sha256 == first.sha256  # nothing changed: the same identity

    (tmp_path / "p.csv").write_text("prompt\nrestyle it\nmake it blue\n")
    second = load_manifest(m)
    assert second.file_sha256 == first.file_sha256 and second.sha256 != first.sha256

    Image.new("RGB", (16, 16), "#993366").save(tmp_path / "shots" / "c.png")  # a new match
    third = load_manifest(m)
    assert third.sha256 != second.sha256 and "shots/c.png" in third.reads

    Image.new("RGB", (16, 16), "#000000").save(tmp_path / "shots" / "a.png")  # an edited one
    assert load_manifest(m).sha256 != third.sha256


def _edit_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(REPO / "manifests" / "edit.yaml", folder / "edit.yaml")
    shutil.copytree(REPO / "manifests" / "refs", folder / "refs")
    return folder / "edit.yaml"


def test_the_folder_keeps_what_the_manifest_read(tmp_path: Path) -> None:
    m = _edit_folder(tmp_path)
    out = tmp_path / "out"
    manifest = load_manifest(m)
    assert write_sources(out, manifest) == []
    record = json.loads((out / ".manifest" / "files.json").read_text())
    assert record["identity"] == manifest.sha256 and record["not_copied"] == []
    assert record["manifest"] == {"name": "edit.yaml", "sha256": manifest.file_sha256}
    for name, sha in record["files"].items():
        copy = out / ".manifest" / "files" / name
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == sha
    # From the folder alone: the same jobs, the same identity.
    again = tmp_path / "again"
    shutil.copytree(out / ".manifest" / "files", again)
    shutil.copy(out / "manifest.yaml", again / "manifest.yaml")
    assert load_manifest(again / "manifest.yaml").sha256 == manifest.sha256


def test_a_file_changed_after_planning_is_refused(tmp_path: Path) -> None:
    m = _edit_folder(tmp_path)
    manifest = load_manifest(m)
    Image.new("RGB", (8, 8), "#ffffff").save(m.parent / "refs" / "swatch.png")
    with pytest.raises(ManifestError, match="changed after batchgen read it"):
        write_sources(tmp_path / "out", manifest)


def test_references_past_the_limit_are_kept_by_sha256_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = _edit_folder(tmp_path)
    out = tmp_path / "out"
    manifest = load_manifest(m)
    write_sources(out, manifest)
    assert (out / ".manifest" / "files" / "refs" / "room.png").is_file()
    monkeypatch.setattr(sources, "REFERENCE_COPY_BYTES", 10)
    left = write_sources(out, manifest)
    assert left == sorted(manifest.reads) and len(left) == 3
    assert not list((out / ".manifest" / "files").rglob("*.png"))  # the earlier copies too
    record = json.loads((out / ".manifest" / "files.json").read_text())
    assert record["not_copied"] == left and set(record["files"]) == set(left)


@pytest.mark.parametrize("set_max", [0, 100_000])  # a binary search, or a set of a few
def test_stale_jobs_hold_eight_bytes_a_job(set_max: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stale_module, "SET_MAX", set_max)
    ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(1000)]
    assert list(StaleJobs(sorted(ids[::2]), ordered=True)._keys) == list(StaleJobs(ids[::2])._keys)
    assert len(StaleJobs(ids[::2], ordered=True)) == 500  # not sorted after all: sorted here
    stale = StaleJobs(ids[::2])
    assert len(stale) == 500
    assert all(j in stale for j in ids[::2]) and not any(j in stale for j in ids[1::2])
    assert None not in stale and "not-hex-at-all!!" not in stale and "ab" not in stale
    assert not StaleJobs() and "0" * 64 not in StaleJobs()
    assert StaleJobs(ids[:3]).fingerprint() == StaleJobs(reversed(ids[:3])).fingerprint()
    assert StaleJobs(ids[:3]).fingerprint() != StaleJobs(ids[:4]).fingerprint()


def test_a_csv_manifest_covers_its_reference_images(tmp_path: Path) -> None:
    Image.new("RGB", (16, 16), "#336699").save(tmp_path / "room.png")
    m = tmp_path / "jobs.csv"
    m.write_text("prompt,image_urls\nrestyle the room,room.png\n")
    first = load_manifest(m)
    assert set(first.reads) == {"room.png"} and first.sha256 != first.file_sha256
    Image.new("RGB", (16, 16), "#000000").save(tmp_path / "room.png")
    second = load_manifest(m)
    assert second.file_sha256 == first.file_sha256 and second.sha256 != first.sha256
