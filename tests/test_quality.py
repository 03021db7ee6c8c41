"""Quality flags (outputs/quality.py): measured by the check that verifies each image, written
in every index row, rebuilt by ``batchgen index`` for older folders, carried by the exports;
and the emulator's ``blank`` fault that makes the uniform images they must find."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageStat
from test_run_support import write_manifest

from batchgen.cli import main
from batchgen.emulator.images import ImageSpec, render
from batchgen.outputs.checks import check_file
from batchgen.outputs.index import METADATA
from batchgen.outputs.neardup import MAX_DISTANCE, distance, near_duplicate_groups
from batchgen.outputs.quality import BLANK_STDDEV, measure

HEX = set("0123456789abcdef")


def uniform(path: Path) -> bool:
    """The truth, from a full decode of the file: one colour (JPEG's rounding aside)."""
    with Image.open(path) as im:
        return max(ImageStat.Stat(im.convert("L")).stddev) < 1.0


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_a_flat_image_is_blank_and_a_placeholder_is_not(fmt: str, tmp_path: Path) -> None:
    for blank in (True, False):
        data = render(ImageSpec("a red fox at dawn", 1024, 768, fmt, 0, None, blank))
        path = tmp_path / f"x-{blank}.{fmt}"
        path.write_bytes(data)
        c = check_file(str(path), fmt, durable=False)
        assert c.blank is blank
        assert c.phash is not None and len(c.phash) == 16 and set(c.phash) <= HEX
        with Image.open(path) as im:
            q = measure(im)
        assert (q.stddev < BLANK_STDDEV) is blank
        if blank:
            assert c.phash == "0000000000000000"
        else:
            assert q.stddev > 3 * BLANK_STDDEV  # far from the threshold


def rows(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / METADATA).read_text().splitlines()]


@pytest.mark.slow
def test_an_emulated_run_flags_exactly_the_blank_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "BATCHGEN_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    m = write_manifest(tmp_path, 40)
    out = tmp_path / "out"
    cmd = ["run", str(m), "--emulate", "--out", str(out), "--quiet", "--time-scale", "0"]
    assert main([*cmd, "--faults", "blank=0.3", "--seed", "11"]) == 0
    got = rows(out)
    assert len(got) == 40
    truth = [uniform(out / str(r["file_name"])) for r in got]
    assert [r["blank"] for r in got] == truth
    assert 0 < sum(truth) < 40  # the fault made some, not all
    for r in got:
        assert isinstance(r["phash"], str) and len(r["phash"]) == 16 and set(r["phash"]) <= HEX
        assert list(r)[-2:] == ["blank", "phash"]  # the last columns, the others unmoved
    # Every blank image hashes to zero: exact duplicates of each other. (The placeholders, a
    # flat colour with a line of text, are a few bits from zero too: near duplicates, truly.)
    blanks = [i for i, b in enumerate(truth) if b]
    assert {got[i]["phash"] for i in blanks} == {"0" * 16}
    groups = near_duplicate_groups([str(r["phash"]) if r["blank"] else None for r in got])
    assert groups == [blanks]

    # A folder made before the flags: `batchgen index` measures them again, the same.
    lines = [{k: v for k, v in r.items() if k not in ("blank", "phash")} for r in got]
    (out / METADATA).write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert main(["index", str(out)]) == 0
    rebuilt = {r["file_name"]: r for r in rows(out)}
    for r in got:
        assert rebuilt[r["file_name"]]["blank"] == r["blank"]
        assert rebuilt[r["file_name"]]["phash"] == r["phash"]

    # The exports carry both columns.
    assert main(["export", str(out), "--format", "csv"]) == 0
    text = (out / "exports" / "index.csv").read_text(encoding="utf-8-sig")
    table = list(csv.DictReader(io.StringIO(text)))
    assert {r["file_name"]: (r["blank"], r["phash"]) for r in table} == {
        str(r["file_name"]): (str(r["blank"]).lower(), r["phash"]) for r in got
    }
    assert main(["export", str(out), "--format", "parquet"]) == 0
    pt = pq.read_table(out / "exports" / "index.parquet")
    assert str(pt.schema.field("blank").type) == "bool"
    assert sorted(pt.column("blank").to_pylist()) == sorted(truth)
    assert main(["export", str(out), "--format", "webdataset"]) == 0


def picture(seed: int) -> Image.Image:
    """A synthetic picture: blurred discs of random colours (no photos ship with the tests)."""
    rng = random.Random(seed)
    im = Image.new("RGB", (1024, 768))
    draw = ImageDraw.Draw(im)
    for _ in range(40):
        x, y, r = rng.randrange(1024), rng.randrange(768), rng.randrange(20, 300)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    return im.filter(ImageFilter.GaussianBlur(6))


def test_copies_are_near_duplicates_and_other_pictures_are_not() -> None:
    for seed in range(3):
        a = picture(seed)
        buf = io.BytesIO()
        a.save(buf, "JPEG", quality=60)
        copies = [
            Image.open(io.BytesIO(buf.getvalue())),  # re-encoded
            a.resize((512, 384)),  # resized
            ImageEnhance.Brightness(a).enhance(1.1),  # brighter
            a.crop((10, 8, 1014, 760)).resize((1024, 768)),  # cropped by 1%
        ]
        h = measure(a).phash
        assert all(distance(h, measure(c).phash) <= MAX_DISTANCE for c in copies)
        assert not measure(a).blank
        others = [measure(picture(s)).phash for s in range(100, 103)]
        assert all(distance(h, o) > 3 * MAX_DISTANCE for o in others)
