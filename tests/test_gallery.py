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

from batchgen.cli import main
from batchgen.outputs.download import Downloaded, inspect_image, mime_of, sha256_file
from batchgen.outputs.gallery import THUMBS, build_gallery
from batchgen.outputs.index import append_failure, append_rows, failure_row, index_row
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


def test_page_is_offline_escaped_and_points_at_real_files(gallery: Path) -> None:
    page = (gallery / "index.html").read_text()
    tags = elements(page)
    assert [t for t, _ in tags].count("script") == 1  # only ours: the prompts stayed text
    assert not any(k.startswith("on") for _, attrs in tags for k in attrs)
    assert sum(1 for t, a in tags if t == "article") == 4
    assert sum(1 for t, a in tags if t == "img") == 4
    for _, attrs in tags:
        for key in ("src", "href"):
            value = attrs.get(key)
            if value is None:
                continue
            assert "//" not in value and ":" not in value, value  # no URL leaves the folder
            assert (gallery / value).is_file(), value
    assert "&lt;script&gt;alert" in page
    assert "<b>4</b> images" in page and "<b>1</b> failed" in page
    assert "<b>$0.60</b> estimated cost" in page  # four images at $0.15
    (csp,) = [a["content"] for t, a in tags if a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and csp.startswith("default-src 'none';") and "http" not in csp
    for _, attrs in tags:
        if "loading" in attrs:
            assert attrs["loading"] == "lazy"


def test_thumbnails_are_small_jpegs_made_once(gallery: Path) -> None:
    thumbs = list((gallery / THUMBS).rglob("*.jpg"))
    assert len(thumbs) == 4
    for t in thumbs:
        with Image.open(t) as im:
            assert im.format == "JPEG" and max(im.size) <= 320
    again = build_gallery(gallery)
    assert again.thumbnails_made == 0


def test_missing_image_is_shown_as_missing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    specs = make_output(out)
    image_path(out, specs[0].output_template, template_fields(specs[0], 0)).unlink()
    report = build_gallery(out)
    assert report.missing == 1
    assert (out / "index.html").read_text().count("image missing") == 1


def test_bare_word_tags_show_as_words(tmp_path: Path) -> None:
    # `tags: [nature]` in a manifest whose other prompts give mappings lands in the index as
    # {"nature": ""}: a card and the tag filter show "nature", not "nature=".
    out = tmp_path / "out"
    make_output(out)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    rows[0]["tags"] = {"nature": "", "set": "A"}
    (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = build_gallery(out).path.read_text()
    assert '<span class="tag">nature</span>' in page and "nature=" not in page
    assert '<option value="nature">' in page and '<span class="tag">set=A</span>' in page


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
    return [
        str(a.get("data-prompt-id"))
        for t, a in elements(dom)
        if t == "article" and "hidden" not in a
    ]


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
    assert console == []  # no script error, no CSP violation (the script's hash matches)
    assert sorted(visible_cards(dom)) == ["evil</select>", "owls", "whales", "whales"]
    assert dom.count("<script") == 1 and 'id="shown">4<' in dom

    dom, console = chromium(page + "#quality=low", profile)
    assert console == [] and visible_cards(dom) == ["whales", "whales"]
    assert 'id="shown">2<' in dom

    dom, _ = chromium(page + "#q=WHALE%20shark&tag=set%3DB", profile)
    assert visible_cards(dom) == ["whales"]

    dom, _ = chromium(page + "#prompt=evil%3C%2Fselect%3E", profile)
    assert visible_cards(dom) == ["evil</select>"]
