"""The dataset loop end to end, as a user walks it against `batchgen emulator` on loopback: a
run whose server returns some blank images, the blank ones rejected by `batchgen mark --where
blank`, an export without them, `run --replace-rejected` paying for one new take each (and a
plain run after it for nothing), then captions for training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_run_support import emulator_thread, stats, write_manifest

from batchgen.cli import main
from batchgen.outputs.index import METADATA
from batchgen.outputs.marks import Mark, read_marks

N = 24


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "BATCHGEN_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


def rows(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / METADATA).read_text().splitlines()]


def test_blank_images_rejected_replaced_once_and_left_out_of_the_captions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = write_manifest(tmp_path, N)
    out, dest = tmp_path / "out", tmp_path / "train" / "10_p"
    with emulator_thread(time_scale=0.001, faults="blank=0.25", seed=5) as url:
        run = ["run", str(m), "--endpoint", url, "--out", str(out), "--quiet"]
        assert main(run) == 0
        blank = [r["file_name"] for r in rows(out) if r["blank"] is True]
        assert len(blank) == stats(url)["results_blank"] >= 2  # exactly the server's blanks
        assert all(isinstance(r["phash"], str) and len(r["phash"]) == 16 for r in rows(out))
        capsys.readouterr()

        assert main(["mark", str(out), "--reject", "--where", "blank"]) == 0
        assert capsys.readouterr().out.strip() == f"rejected {len(blank)} images"
        assert read_marks(out) == dict.fromkeys(blank, Mark.REJECTED)

        csv_path = tmp_path / "kept.csv"
        args = ["--exclude", "rejected", "--dest", str(csv_path)]
        assert main(["export", str(out), "--format", "csv", *args]) == 0
        kept = csv_path.read_text(encoding="utf-8-sig").splitlines()[1:]
        assert len(kept) == N - len(blank) and not any(b in line for b in blank for line in kept)

        before = stats(url)["submits_accepted"]
        assert main([*run, "--replace-rejected"]) == 0
        assert stats(url)["submits_accepted"] == before + len(blank)  # one take each
        assert main(run) == 0 and main([*run, "--replace-rejected"]) == 0
        assert stats(url)["submits_accepted"] == before + len(blank)  # and no more
    takes = [r for r in rows(out) if r["replaces"]]
    assert sorted(str(r["replaces"]) for r in takes) == sorted(blank)
    assert all((out / str(b)).is_file() for b in blank)  # the rejected stay, marked
    capsys.readouterr()

    assert main(["export", str(out), "--format", "captions", "--exclude", "rejected",
                 "--dest", str(dest)]) == 0  # fmt: skip
    images = sorted(p for p in dest.iterdir() if p.suffix not in (".txt", ".jsonl"))
    assert len(images) == N  # every job's image, the takes in place of the rejected
    # each image is named by its job and its place in the job (the webdataset key)
    by_stem = {f"{r['job_id']}_{r['image_index']}": r["prompt"] for r in rows(out)}
    for image in images:
        assert image.with_suffix(".txt").read_text() == by_stem[image.stem]
