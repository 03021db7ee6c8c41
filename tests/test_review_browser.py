"""The review page in headless Chromium: marked with the keyboard, reloaded, still marked, and
in the folder; the server refuses what has no token, another site's Origin and paths outside."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_gallery import chromium, elements, find_chromium
from test_gallery_support import (
    append_index,
    gallery_records,
    place_images,
    synthetic_row,
    tiny_png,
)
from test_review_support import Browser, Server

from batchgen.outputs.gallery import build_gallery
from batchgen.outputs.marks import Mark, Marks, read_marks


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, list[str]]:
    out = tmp_path / "out"
    rows = list(place_images(out, [synthetic_row(i) for i in range(12)], tiny_png()))
    append_index(out, rows)
    return out, [r["file_name"] for r in rows]


@pytest.fixture
def server(folder: tuple[Path, list[str]]) -> Iterator[Server]:
    s = Server(folder[0])
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    chromium = find_chromium(os.environ)  # no browser: a skip here, a failure under CI=true
    b = Browser(chromium, tmp_path / "profile", "--window-size=1000,700")
    try:
        yield b
    finally:
        b.close()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def _state(b: Browser) -> tuple[int, str, str]:
    got = b.eval(
        "[document.body.dataset.pos, document.body.dataset.file, document.body.dataset.mark]"
    )
    return int(got[0]), got[1], got[2]


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_marks_made_with_the_keyboard_survive_a_reload(
    folder: tuple[Path, list[str]], server: Server, browser: Browser
) -> None:
    out, files = folder
    browser.open(server.url)
    browser.wait_for("document.body.dataset.ready === '1' && document.body.dataset.file")
    assert _state(browser) == (0, files[0], "")
    shown = "document.getElementById('image')"
    assert browser.wait_for(f"{shown}.complete && {shown}.naturalWidth") == 8
    assert browser.eval("document.getElementById('unmarked').textContent") == "12"

    browser.press("p")  # picks the first image and moves on
    browser.wait_for("document.body.dataset.pos === '1'")
    browser.press("x")
    browser.wait_for("document.body.dataset.pos === '2'")
    browser.press("ArrowRight")
    browser.wait_for("document.body.dataset.pos === '3'")
    browser.press("p")
    browser.wait_for("document.body.dataset.pos === '4'")
    browser.press("ArrowLeft")
    browser.wait_for("document.body.dataset.pos === '3'")
    browser.press("u")  # clears it again
    browser.wait_for("document.body.dataset.pos === '4'")
    for _ in range(4):
        browser.press("ArrowLeft")
    browser.wait_for("document.body.dataset.pos === '0'")
    assert _state(browser) == (0, files[0], "picked")

    # On disk at once, before any reload: a closed tab loses nothing.
    assert read_marks(out) == {files[0]: Mark.PICKED, files[1]: Mark.REJECTED}

    browser.send("Page.reload")
    browser.wait_for("document.body.dataset.ready === '1' && document.body.dataset.file")
    assert _state(browser) == (0, files[0], "picked")  # where it was (the URL's #pos)
    browser.press("ArrowRight")
    browser.wait_for("document.body.dataset.mark === 'rejected'")
    counts = browser.eval(
        "['picked','rejected','unmarked'].map(k => document.getElementById(k).textContent)"
    )
    assert counts == ["1", "1", "10"]

    # The buttons do what the keys do.
    browser.eval("document.getElementById('clear').click()")
    browser.wait_for("document.body.dataset.pos === '2'")
    browser.eval("document.getElementById('pick').click()")
    browser.wait_for("document.body.dataset.pos === '3'")
    browser.eval("document.getElementById('prev').click()")
    browser.wait_for("document.body.dataset.mark === 'picked'")
    assert read_marks(out) == {files[0]: Mark.PICKED, files[2]: Mark.PICKED}

    # A view by mark: the picked images only; unpicking one there shows the next.
    browser.send("Page.navigate", url=server.url + "#filter=picked&pos=0")
    browser.wait_for("document.getElementById('where').textContent === '1 of 2'")
    assert _state(browser) == (0, files[0], "picked")
    browser.press("u")
    browser.wait_for("document.getElementById('where').textContent === '1 of 1'")
    assert _state(browser) == (0, files[2], "picked")
    assert browser.exceptions() == []
    assert server.stop() == 0  # Ctrl-C: a clean stop
    assert read_marks(out) == {files[2]: Mark.PICKED}


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_the_server_refuses_without_token_other_origins_and_outside_paths(
    folder: tuple[Path, list[str]], server: Server, tmp_path: Path
) -> None:
    out, files = folder
    (tmp_path / "secret.txt").write_text("secret")
    (out / "images" / "escape.png").symlink_to(tmp_path / "secret.txt")
    t = server.token
    with httpx.Client(base_url=server.base) as c:
        assert c.get("/").status_code == 401
        assert c.get("/", params={"t": t + "x"}).status_code == 401
        assert c.get("/api/state").status_code == 401
        assert c.get("/image", params={"f": files[0]}).status_code == 401
        assert c.get("/", params={"t": t}).status_code == 200
        evil = {"Origin": "http://evil.example"}
        assert c.get("/api/state", params={"t": t}, headers=evil).status_code == 403
        post = c.post(
            "/api/mark",
            params={"t": t},
            headers=evil,
            json={"file_name": files[0], "mark": "picked"},
        )
        assert post.status_code == 403 and read_marks(out) == {}
        for bad in (
            "../secret.txt",
            "/etc/passwd",
            "images/../../secret.txt",
            "images/escape.png",
            "metadata.jsonl",
            "images\\..\\x",
        ):
            r = c.get("/image", params={"t": t, "f": bad})
            assert r.status_code == 404 and b"secret" not in r.content, bad
        ok = c.get("/image", params={"t": t, "f": files[0]})
        assert ok.status_code == 200 and ok.content == tiny_png()
        assert "access-control-allow-origin" not in {k.lower() for k in ok.headers}
    assert server.stop() == 0


@pytest.mark.browser
@pytest.mark.slow
def test_the_static_gallery_shows_marks_read_only(
    folder: tuple[Path, list[str]], tmp_path: Path
) -> None:
    out, files = folder
    with Marks.open(out) as m:
        m.set([(files[1], None)], Mark.PICKED, source="mark")
        m.set([(files[2], None)], Mark.REJECTED, source="mark")
    build_gallery(out)
    records = gallery_records(out)
    assert [r[15:] for r in records[:4]] == [[], ["picked"], ["rejected"], []]  # after blank
    dom, console = chromium((out / "index.html").resolve().as_uri(), tmp_path / "p2")
    assert console == []
    marked = [(a.get("data-file"), a.get("data-mark")) for t, a in elements(dom) if t == "article"]
    assert [m for f, m in marked if m] == ["picked", "rejected"]
    assert marked[1] == (files[1], "picked")
    assert '<span class="mark picked">picked</span>' in dom
