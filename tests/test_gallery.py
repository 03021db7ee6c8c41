"""The static gallery: built from an output folder, escaped, offline, and working in Chromium."""

from __future__ import annotations

import html.parser
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from PIL import Image
from test_gallery_support import append_index, place_images, read_chunk, synthetic_row, tiny_png

from batchgen.cli import main
from batchgen.outputs.checks import inspect_image, mime_of, sha256_file
from batchgen.outputs.download import Downloaded
from batchgen.outputs.gallery import THUMBS, build_gallery
from batchgen.outputs.index import append_failure, append_rows, failure_row, index_row
from batchgen.outputs.thumbs import THUMB_SIDE
from batchgen.planning.jobs import JobSpec, job_id
from batchgen.planning.paths import image_path, template_fields

EP = "openai/gpt-image-2"
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)> & "q" \'s'
JOBS = [  # prompt, prompt id, quality, size, colour, tag
    ("an owl at dusk", "owls", "high", "square_hd", "#7a5c3a", "A"),
    ("a blue whale", "whales", "low", "landscape_4_3", "#2b5fa8", "A"),
    (HOSTILE, "evil</select>", "medium", "square_hd", "#b03030", "B"),
    ("a whale shark", "whales", "low", "landscape_4_3", "#3a8a7a", "B"),
]


def make_output(out: Path) -> list[JobSpec]:
    specs = []
    for prompt, pid, quality, size, colour, tag in JOBS:
        inp = {"prompt": prompt, "quality": quality, "image_size": size}
        spec = JobSpec(
            job_id=job_id(EP, inp, 0),
            endpoint=EP,
            input=inp,
            prompt_id=pid,
            prompt=prompt,
            tags={"set": tag},
        )
        dest = image_path(out, spec.output_template, template_fields(spec, 0))
        dest.parent.mkdir(parents=True, exist_ok=True)
        w, h = (512, 512) if size == "square_hd" else (512, 384)
        Image.new("RGB", (w, h), colour).save(dest, "PNG")
        size_b, digest = sha256_file(dest)
        _, _, fmt = inspect_image(dest)
        d = Downloaded(dest, digest, size_b, w, h, mime_of(fmt))
        append_rows(
            out, [index_row(spec, 0, d, out_dir=out, manifest_sha256="m", cost_estimate=0.15)]
        )
        specs.append(spec)
    append_failure(
        out,
        failure_row(specs[2], error_class="content_policy_violation", message=HOSTILE, attempts=1),
    )
    return specs


class Elements(html.parser.HTMLParser):
    """Every start tag with its attributes, as a browser's tokenizer sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def elements(page: str) -> list[tuple[str, dict[str, str | None]]]:
    p = Elements()
    p.feed(page)
    return p.tags


@pytest.fixture
def gallery(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    make_output(out)
    report = build_gallery(out)
    assert (report.images, report.thumbnails_made, report.failures) == (4, 4, 1)
    return out


def test_page_is_small_offline_escaped_and_points_at_real_files(gallery: Path) -> None:
    page = (gallery / "index.html").read_text()
    tags = elements(page)
    scripts = [a for t, a in tags if t == "script"]
    assert scripts == [{"src": ".gallery/gallery.js"}]  # only ours, a file: the prompts stayed text
    assert not any(k.startswith("on") for _, attrs in tags for k in attrs)
    for _, attrs in tags:
        for key in ("src", "href"):
            value = attrs.get(key)
            if value is None or value.startswith("#"):
                continue
            assert "//" not in value and ":" not in value, value  # no URL leaves the folder
            assert (gallery / value).exists(), value
    assert "&lt;/select&gt;" in page and "evil</select>" not in page  # a prompt id option
    assert "<b>4</b> images" in page and "<b>1</b> failed" in page and "<b>4</b> jobs" in page
    assert "<b>$0.60</b> estimated cost" in page  # four images at $0.15
    (csp,) = [a["content"] for t, a in tags if a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and csp.startswith("default-src 'none';") and "http" not in csp
    assert "script-src 'self';" in csp and "unsafe" not in csp.split("script-src")[1]
    # With scripts off the page says so and links what can be read without them.
    assert "This gallery needs JavaScript" in page and 'href="metadata.jsonl"' in page


def test_chunks_are_data_only_and_round_trip_hostile_text(gallery: Path) -> None:
    fn, k, records = read_chunk(gallery / ".gallery" / "r-000000.js")
    assert (fn, k, len(records)) == ("batchgenGallery.records", 0, 4)
    assert {r[4] for r in records} >= {HOSTILE} and {r[5] for r in records} >= {"evil</select>"}
    for r in records:  # every thumbnail named exists
        assert (gallery / THUMBS / r[1][:2] / f"{r[1]}.jpg").is_file()
    fn, _, summary = read_chunk(gallery / ".gallery" / "s-000000.js")
    assert fn == "batchgenGallery.summary" and summary["n"] == 4
    assert summary["cols"]["prompt"] == [0, 1, 2, 1]  # each prompt id stored once a chunk
    fn, _, failures = read_chunk(gallery / ".gallery" / "f-000000.js")
    assert fn == "batchgenGallery.failures" and failures[0][5] == HOSTILE
    for path in (gallery / ".gallery").glob("*.js"):
        path.read_text(encoding="ascii")  # ASCII only: the page's encoding cannot matter


def test_thumbnails_are_small_jpegs_made_once(gallery: Path) -> None:
    thumbs = list((gallery / THUMBS).rglob("*.jpg"))
    assert len(thumbs) == 4
    for t in thumbs:
        with Image.open(t) as im:
            assert im.format == "JPEG" and max(im.size) <= THUMB_SIDE
    again = build_gallery(gallery)
    assert again.thumbnails_made == 0


def test_missing_image_is_shown_as_missing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    specs = make_output(out)
    image_path(out, specs[0].output_template, template_fields(specs[0], 0)).unlink()
    report = build_gallery(out)
    assert report.missing == 1
    assert "<b>1</b> missing files" in (out / "index.html").read_text()
    _, _, records = read_chunk(out / ".gallery" / "r-000000.js")
    assert [r[1] is None for r in records] == [True, False, False, False]


def test_bare_word_tags_show_as_words(tmp_path: Path) -> None:
    # `tags: [nature]` in a manifest whose other prompts give mappings lands in the index as
    # {"nature": ""}: a card and the tag filter show "nature", not "nature=".
    out = tmp_path / "out"
    make_output(out)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    rows[0]["tags"] = {"nature": "", "set": "A"}
    (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = build_gallery(out).path.read_text()
    assert '<option value="nature">' in page and "nature=" not in page
    _, _, records = read_chunk(out / ".gallery" / "r-000000.js")
    assert records[0][9] == ["nature", "set=A"]


def test_the_header_shows_what_fal_billed_once_reconciled(tmp_path: Path) -> None:
    """The estimate until `batchgen reconcile` recorded a bill for the server the folder's
    last run went to; then the bill too, marked billed, its server escaped like any text."""
    import time

    from test_journal_support import FakeClock, handle, open_journal, spec

    from batchgen.journal.bills import StoredBill, reconcile_head, record_bills

    out = tmp_path / "out"
    make_output(out)
    server = "http://127.0.0.1:9/<x>&y"
    settings = {"target": "endpoint", "endpoint": server}
    path = out / "journal.sqlite"
    with open_journal(path, settings=settings, clock=FakeClock(1000.0)) as j:
        j.add_jobs([spec(0), spec(1)], cost_of=lambda s: 0.15)
        for r in j.claim(2):
            j.set_submitted(r.job_id, handle(f"req-{r.job_id}"))
            j.set_result(r.job_id, {"images": []})
    page = build_gallery(out).path.read_text()
    assert "<b>$0.30</b> spent (estimated)" in page and "billed by" not in page
    bills = [StoredBill("a", 0, None, None, None, 0.25), StoredBill("b", 0, None, None, None, 0.1)]
    at = time.time()
    record_bills(path, server, bills, f"{reconcile_head(server)}$0.3500 for 2 requests", now=at)
    page = build_gallery(out).path.read_text()
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(at))
    assert (
        "<span>billed by http://127.0.0.1:9/&lt;x&gt;&amp;y <b>$0.35</b> for 2 requests,"
        f" reconciled {when}</span><span><b>$0.30</b> spent (estimated)</span>" in page
    )


def test_gallery_command(tmp_path: Path) -> None:
    out = tmp_path / "out"
    make_output(out)
    assert main(["gallery", str(out)]) == 0
    assert (out / "index.html").is_file() and len(list((out / THUMBS).rglob("*.jpg"))) == 4
    assert main(["gallery", str(tmp_path / "nowhere")]) == 2


# ---- in a real browser ---------------------------------------------------------------------

CONSOLE = re.compile(r":CONSOLE[:(]")


def find_chromium(
    environ: Mapping[str, str], which: Callable[[str], str | None] = shutil.which
) -> str:
    """The browser, or a skip where there is none; but under CI=true a missing browser is a
    failure: CI passing without the gallery ever running in a browser would prove nothing."""
    found = which("chromium") or which("chromium-browser")
    if found:
        return found
    if environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail("CI is set and chromium is not installed: the browser test must run in CI")
    pytest.skip("chromium is not installed")


def test_a_missing_browser_fails_in_ci_and_skips_elsewhere() -> None:
    def nowhere(_: str) -> None:
        return None

    with pytest.raises(pytest.fail.Exception, match="must run in CI"):
        find_chromium({"CI": "true"}, nowhere)
    with pytest.raises(pytest.skip.Exception):
        find_chromium({}, nowhere)
    with pytest.raises(pytest.skip.Exception):
        find_chromium({"CI": "false"}, nowhere)
    assert find_chromium({"CI": "true"}, lambda name: f"/opt/{name}") == "/opt/chromium"


def chromium(url: str, profile: Path, *extra: str) -> tuple[str, list[str]]:
    """Load ``url`` headless; returns (the DOM after scripts ran, console messages)."""
    cmd = [
        find_chromium(os.environ),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=3000",
        "--dump-dom",
        *extra,
        url,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=45, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, [line for line in done.stderr.splitlines() if CONSOLE.search(line)]


def visible_cards(dom: str) -> list[str]:
    return [str(a.get("data-prompt-id")) for t, a in elements(dom) if t == "article"]


def card_files(dom: str) -> list[str]:
    return [str(a.get("data-file")) for t, a in elements(dom) if t == "article"]


def complete(dom: str) -> bool:
    """Every summary chunk loaded and the view drawn from all of them."""
    return any(t == "body" and a.get("data-state") == "complete" for t, a in elements(dom))


@pytest.fixture
def profile(tmp_path: Path) -> Iterator[Path]:
    p = tmp_path / "chromium-profile"
    yield p
    shutil.rmtree(p, ignore_errors=True)


@pytest.mark.browser
@pytest.mark.slow
def test_in_headless_chromium(gallery: Path, profile: Path) -> None:
    find_chromium(os.environ)  # no browser: a skip here, a failure under CI=true
    page = (gallery / "index.html").resolve().as_uri()
    dom, console = chromium(page, profile)
    assert console == []  # no script error, no CSP violation (chunks are 'self' files)
    assert complete(dom)
    assert sorted(visible_cards(dom)) == ["evil</select>", "owls", "whales", "whales"]
    assert dom.count("<script") == 1 and 'id="shown">4<' in dom  # loaded chunks are removed
    assert "&lt;script&gt;alert" in dom and "<img src=x" not in dom  # text, not markup
    assert dom.count("content_policy_violation") == 1  # the failures table, from its chunk

    dom, console = chromium(page + "#quality=low", profile)
    assert console == [] and visible_cards(dom) == ["whales", "whales"]
    assert 'id="shown">2<' in dom

    dom, _ = chromium(page + "#q=WHALE%20shark&tag=set%3DB", profile)
    assert visible_cards(dom) == ["whales"]

    dom, _ = chromium(page + "#prompt=evil%3C%2Fselect%3E", profile)
    assert visible_cards(dom) == ["evil</select>"]


@pytest.mark.browser
@pytest.mark.slow
def test_filters_and_sorts_cover_every_chunk(tmp_path: Path, profile: Path) -> None:
    """100 rows in chunks of 40: two and a half chunks. The first screen loads one records
    chunk; a filter, a search and a sort must see all three summary chunks."""
    find_chromium(os.environ)
    out = tmp_path / "big"
    rows = [synthetic_row(i) for i in range(100)]
    for i in (83, 91, 97):  # a tag only rows of the last chunk carry
        rows[i]["tags"] = {"set": "AB"[i % 2], "late": "yes"}
    for i in (2, 45, 99):  # a word in three chunks' prompts, in mixed case
        rows[i]["prompt"] += " with a Zebra"
    for i in (10, 60):  # no estimate: sorted last either way (NaN in the page's cost column)
        rows[i]["cost_estimate"] = None
    for i, r in enumerate(rows):  # quality flags: spread hashes, three blank, two groups
        r["phash"] = f"{(i + 1) * 0x9E3779B97F4A7C15 % 2**64:016x}"
        r["blank"] = i in (5, 50, 95)
    rows[88]["phash"] = f"{int(rows[3]['phash'], 16) ^ 0b101:016x}"  # 2 bits apart
    rows[70]["phash"] = rows[20]["phash"]  # the same
    rows = list(place_images(out, rows, tiny_png()))
    append_index(out, rows)
    report = build_gallery(out, chunk_rows=40)
    assert (report.images, report.thumbnails_made) == (100, 1)  # one shared image, one thumbnail
    assert sorted(p.name for p in (out / ".gallery").glob("s-*.js")) == [
        "s-000000.js",
        "s-000001.js",
        "s-000002.js",
    ]
    page = (out / "index.html").resolve().as_uri()
    files = [r["file_name"] for r in rows]

    dom, console = chromium(page + "#per=30", profile)
    assert console == [] and complete(dom)
    assert card_files(dom) == files[:30] and 'id="shown">100<' in dom
    assert "page 1 of 4" in dom
    assert re.search(r'data-first-screen="\d+"', dom)  # timed after the frame that drew it

    dom, console = chromium(page + "#tag=late%3Dyes", profile)  # not among the options' rows
    assert console == [] and card_files(dom) == [files[i] for i in (83, 91, 97)]
    assert 'id="shown">3<' in dom

    dom, _ = chromium(page + "#q=zebra", profile)
    assert card_files(dom) == [files[i] for i in (2, 45, 99)]

    dom, console = chromium(page + "#flag=blank", profile)
    assert console == [] and card_files(dom) == [files[i] for i in (5, 50, 95)]
    assert dom.count('class="flag">blank<') == 3

    dom, console = chromium(page + "#flag=dup", profile)  # groups side by side, in row order
    assert console == [] and card_files(dom) == [files[i] for i in (3, 88, 20, 70)]
    assert "near duplicates (4 in 2 groups)" in dom and dom.count("near duplicate #2") == 2

    def cost(i: int) -> tuple[bool, float]:
        return rows[i]["cost_estimate"] is None, rows[i]["cost_estimate"] or 0.0

    dom, _ = chromium(page + "#sort=-cost", profile)
    by_cost = sorted(range(100), key=lambda i: (cost(i)[0], -cost(i)[1]))
    assert card_files(dom) == [files[i] for i in by_cost] and 'id="shown">100<' in dom
    assert card_files(dom)[-2:] == [files[10], files[60]]
    dom, _ = chromium(page + "#sort=cost", profile)
    assert card_files(dom) == [files[i] for i in sorted(range(100), key=cost)]

    # A filter and a sort together, paged: the second page of the low-quality rows by cost.
    dom, _ = chromium(page + "#quality=low&sort=cost&per=10&page=2", profile)
    low = sorted((i for i in range(100) if rows[i]["quality"] == "low"), key=cost)
    assert card_files(dom) == [files[i] for i in low[10:20]]
    assert f'id="shown">{len(low)}<' in dom and f"page 2 of {-(-len(low) // 10)}" in dom

    dom, _ = chromium(page + "#sort=prompt&per=100", profile)
    by_prompt = sorted(range(100), key=lambda i: rows[i]["prompt"])
    assert card_files(dom) == [files[i] for i in by_prompt]
