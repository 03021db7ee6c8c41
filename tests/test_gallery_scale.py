"""The gallery at scale: flat memory, incremental refresh, and reading a folder a run writes."""

from __future__ import annotations

import json
import shutil
import tracemalloc
from pathlib import Path

from test_gallery import make_output
from test_gallery_support import append_index, gallery_data, read_chunk, synthetic_row

from batchgen.cli import main
from batchgen.journal.writer import JOURNAL_NAME, Journal
from batchgen.outputs.gallery import build_gallery, refresh_gallery
from batchgen.outputs.index import METADATA, read_index, rewrite_rows


def peak_bytes(out: Path) -> int:
    tracemalloc.start()
    try:
        build_gallery(out, workers=1, chunk_rows=500)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_rows(tmp_path: Path) -> None:
    peaks = {}
    for n in (4_000, 20_000):
        out = tmp_path / str(n)
        append_index(out, (synthetic_row(i) for i in range(n)))
        peaks[n] = peak_bytes(out)
    # Five times the rows: what grows is the 24 bytes a row kept for de-duplication and the
    # job count, and sorting their hashes once at the end. A row itself is over a kilobyte
    # (the old page held every row and its HTML: 20x the small peak here).
    per_row = (peaks[20_000] - peaks[4_000]) / 16_000
    assert per_row < 100 and peaks[20_000] < 1.5 * peaks[4_000], peaks


def test_a_refresh_writes_what_a_full_build_writes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    append_index(out, (synthetic_row(i) for i in range(120)))
    first = build_gallery(out, chunk_rows=50, title="t")
    assert (first.images, first.refreshed) == (120, False)
    append_index(out, (synthetic_row(i) for i in range(120, 215)))
    report = refresh_gallery(out, chunk_rows=50, title="t")
    # Only the last chunk's 20 rows are read again, then the 95 new ones.
    assert (report.images, report.rows_read, report.refreshed) == (215, 115, True)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns(".gallery", "index.html"))
    build_gallery(copy, chunk_rows=50, title="t")
    assert gallery_data(out) == gallery_data(copy)
    assert sorted(p.name for p in (out / ".gallery").glob("r-*.js"))[-1] == "r-000004.js"
    nothing = refresh_gallery(out, chunk_rows=50, title="t")  # nothing new: the last chunk only
    assert (nothing.rows_read, nothing.refreshed) == (15, True)
    assert gallery_data(out) == gallery_data(copy)


def hashed_row(i: int) -> dict[str, object]:
    """A synthetic row with spread hashes; rows 150 and 7 are 3 bits apart, 9 is blank."""
    h = (i + 1) * 0x9E3779B97F4A7C15 % 2**64
    if i == 150:
        h = ((7 + 1) * 0x9E3779B97F4A7C15 % 2**64) ^ 0b10101
    return synthetic_row(i, phash=f"{h:016x}", blank=i in (9, 160))


def dups(out: Path) -> object:
    text = (out / ".gallery" / "dups.js").read_text(encoding="ascii")
    head, tail = "batchgenGallery.dups(", ");\n"
    assert text.startswith(head) and text.endswith(tail)
    return json.loads(text[len(head) : -len(tail)])


def test_a_refresh_groups_new_rows_with_old_ones(tmp_path: Path) -> None:
    """A near duplicate of a row three chunks back: the refresh reads only the new rows, and
    its groups (from .gallery/phash.bin) are what a full build finds."""
    out = tmp_path / "out"
    append_index(out, (hashed_row(i) for i in range(120)))
    build_gallery(out, chunk_rows=50, title="t")
    assert dups(out) == {"rows": [], "group": []}
    append_index(out, (hashed_row(i) for i in range(120, 215)))
    report = refresh_gallery(out, chunk_rows=50, title="t")
    assert report.refreshed and report.rows_read == 115
    assert dups(out) == {"rows": [7, 150], "group": [0, 0]}
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "blank (2)" in page and "near duplicates (2 in 1 groups)" in page
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns(".gallery", "index.html"))
    build_gallery(copy, chunk_rows=50, title="t")
    assert gallery_data(out) == gallery_data(copy)


def test_a_line_being_written_waits_for_the_next_refresh(tmp_path: Path) -> None:
    out = tmp_path / "out"
    append_index(out, (synthetic_row(i) for i in range(10)))
    build_gallery(out, chunk_rows=4)
    line = json.dumps(synthetic_row(10))
    with (out / METADATA).open("a") as f:
        f.write(line[:50])  # a run is in the middle of appending this row
    assert refresh_gallery(out, chunk_rows=4).images == 10
    with (out / METADATA).open("a") as f:
        f.write(line[50:] + "\n")
    report = refresh_gallery(out, chunk_rows=4)
    assert (report.images, report.refreshed) == (11, True)
    _, _, records = read_chunk(out / ".gallery" / "r-000002.js")
    assert [r[0] for r in records] == [synthetic_row(i)["file_name"] for i in (8, 9, 10)]


def test_a_file_written_twice_keeps_its_last_row(tmp_path: Path) -> None:
    out = tmp_path / "out"
    append_index(out, (synthetic_row(i) for i in range(10)))
    assert build_gallery(out, chunk_rows=4).images == 10
    # A crash between the index append and the journal commit: the job downloads again.
    append_index(out, [synthetic_row(2, prompt="downloaded again"), synthetic_row(10)])
    report = refresh_gallery(out, chunk_rows=4)
    assert (report.images, report.refreshed) == (11, False)  # a full build, so row 2 goes
    records = [r for k in range(3) for r in read_chunk(out / f".gallery/r-{k:06d}.js")[2]]
    # Each file once, in the order last written (the row written again comes after row 9).
    assert sorted(r[0] for r in records) == sorted(r["file_name"] for r in read_index(out))
    assert [r[0] for r in records][-2:] == [synthetic_row(i)["file_name"] for i in (2, 10)]
    assert [r[4] for r in records if r[0] == synthetic_row(2)["file_name"]] == ["downloaded again"]
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns(".gallery", "index.html"))
    build_gallery(copy, chunk_rows=4, title="out")
    assert gallery_data(out) == gallery_data(copy)


def test_a_rebuilt_index_means_a_full_build_and_no_stale_chunks(tmp_path: Path) -> None:
    out = tmp_path / "out"
    append_index(out, (synthetic_row(i) for i in range(10)))
    build_gallery(out, chunk_rows=4)
    rewrite_rows(out / METADATA, [synthetic_row(i) for i in range(5)])  # `batchgen index OUT`
    report = refresh_gallery(out, chunk_rows=4)
    assert (report.images, report.refreshed) == (5, False)
    assert sorted(p.name for p in (out / ".gallery").glob("[rs]-*.js")) == [
        "r-000000.js",
        "r-000001.js",
        "s-000000.js",
        "s-000001.js",
    ]
    assert refresh_gallery(out, chunk_rows=3).refreshed is False  # another chunk size


def test_gallery_reads_a_folder_while_a_run_holds_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    specs = make_output(out)
    journal = Journal.open(out / JOURNAL_NAME, manifest_sha256="m", version="t", settings={})
    try:  # the run's writer lock is held: the gallery neither needs nor takes it
        journal.add_jobs(specs)
        journal.fail(specs[2].job_id, "content_policy_violation", "refused")
        assert main(["gallery", str(out)]) == 0
        assert refresh_gallery(out).refreshed is True
    finally:
        journal.close()
    _, _, failures = read_chunk(out / ".gallery" / "f-000000.js")
    assert failures[0][2:4] == ["square_hd", "medium"]  # size and quality, from the journal
    assert "spent (estimated)" in (out / "index.html").read_text()


def test_an_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / METADATA).parent.mkdir()
    (out / METADATA).touch()
    report = build_gallery(out)
    assert (report.images, report.failures) == (0, 0)
    page = report.path.read_text()
    assert "<b>0</b> images" in page and 'data-rows="0"' in page
    assert not list((out / ".gallery").glob("[rs]-*.js"))
