"""The review page's API (``outputs/review_app.py``) through httpx's ASGI transport: windows of
rows, marks written at once, filters, a growing index, and what it refuses."""

from __future__ import annotations

import sqlite3
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_gallery_support import append_index, place_images, synthetic_row, tiny_png

from batchgen.cli import main
from batchgen.outputs.marks import Mark, Marks, read_marks
from batchgen.outputs.review_app import create_review_app
from batchgen.outputs.review_rows import RowIndex

T = "token-123"


def folder(out: Path, n: int, **over: Any) -> list[dict[str, Any]]:
    rows = list(place_images(out, [synthetic_row(i, **over) for i in range(n)], tiny_png()))
    append_index(out, rows)
    return rows


def client(out: Path) -> httpx.AsyncClient:
    app = create_review_app(out, T, follow=False)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def window(c: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    r = await c.get("/api/rows", params={"t": T, **params})
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


async def test_windows_of_rows_and_marks_written_at_once(tmp_path: Path) -> None:
    rows = folder(tmp_path, 30)
    files = [r["file_name"] for r in rows]
    async with client(tmp_path) as c:
        state = (await c.get("/api/state", params={"t": T})).json()
        assert state["rows"] == 30 and state["counts"] == {
            "picked": 0,
            "rejected": 0,
            "unmarked": 30,
        }
        assert state["filters"] == {"blank": False, "near": False}
        w = await window(c, start=10, count=5)
        assert w["total"] == 30 and [r["file_name"] for r in w["rows"]] == files[10:15]
        first = w["rows"][0]
        assert first["prompt"] == rows[10]["prompt"] and first["quality"] == rows[10]["quality"]
        assert (
            first["size"] == rows[10]["requested_size"]
            and first["cost"] == rows[10]["cost_estimate"]
        )
        assert (await window(c, start=500, count=5))["start"] == 29  # clamped to the last row
        assert len((await window(c, count=10_000))["rows"]) == 30  # at most MAX_WINDOW a window

        for i, mark in ((3, "picked"), (4, "rejected"), (5, "picked")):
            body = {"file_name": files[i], "job_id": rows[i]["job_id"], "mark": mark}
            r = await c.post("/api/mark", params={"t": T}, json=body)
            assert r.status_code == 200 and r.json()["mark"] == mark
        assert read_marks(tmp_path) == {
            files[3]: Mark.PICKED,
            files[4]: Mark.REJECTED,
            files[5]: Mark.PICKED,
        }
        r = await c.post("/api/mark", params={"t": T}, json={"file_name": files[5], "mark": None})
        assert r.json()["counts"] == {"picked": 1, "rejected": 1, "unmarked": 28}
        with sqlite3.connect(tmp_path / "marks.sqlite") as db:  # every change logged, by whom
            sources = [s for (s,) in db.execute("SELECT source FROM changes ORDER BY id")]
        assert sources == ["review"] * 4

        assert [r["i"] for r in (await window(c, filter="picked"))["rows"]] == [3]
        assert [r["i"] for r in (await window(c, filter="rejected"))["rows"]] == [4]
        unmarked = await window(c, filter="unmarked", count=200)
        assert unmarked["total"] == 28 and 3 not in {r["i"] for r in unmarked["rows"]}
        assert (await window(c, start=3, count=1))["rows"][0]["mark"] == "picked"

        # Another writer (batchgen mark) meanwhile: the next window sees it.
        with Marks.open(tmp_path) as m:
            m.set([(files[7], None)], Mark.REJECTED, source="mark")
        assert [r["i"] for r in (await window(c, filter="rejected"))["rows"]] == [4, 7]


async def test_rows_appended_by_a_run_show_up_and_a_torn_line_waits(tmp_path: Path) -> None:
    folder(tmp_path, 5)
    async with client(tmp_path) as c:
        assert (await window(c))["total"] == 5
        more = list(place_images(tmp_path, [synthetic_row(i) for i in range(5, 8)], tiny_png()))
        append_index(tmp_path, more)
        with (tmp_path / "metadata.jsonl").open("a") as f:
            f.write('{"file_name":"images/half')  # a run mid-write
        assert (await window(c))["total"] == 8
        assert (await window(c, start=7, count=1))["rows"][0]["file_name"] == more[-1]["file_name"]


async def test_the_index_replaced_is_read_again(tmp_path: Path) -> None:
    folder(tmp_path, 6)
    rows = RowIndex(tmp_path)
    while rows.update(max_rows=4):
        pass
    assert len(rows) == 6
    (tmp_path / "metadata.jsonl").unlink()
    folder(tmp_path, 2)
    while rows.update():
        pass
    assert len(rows) == 2


async def test_blank_and_near_duplicate_filters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [
        synthetic_row(i, blank=i in (2, 5), phash=f"{(0 if i % 4 else 0xFF) + i // 4:016x}")
        for i in range(8)
    ]
    append_index(tmp_path, list(place_images(tmp_path, rows, tiny_png())))
    calls: list[tuple[list[str], int]] = []

    def groups(phashes: Sequence[str], max_distance: int) -> list[list[int]]:
        calls.append((list(phashes), max_distance))
        return [[0, 4], [1], [5, 2]]  # positions among the hashed rows: 0 1 3 4 6 7

    fake = types.ModuleType("batchgen.outputs.neardup")
    fake.near_duplicate_groups = groups  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "batchgen.outputs.neardup", fake)
    async with client(tmp_path) as c:
        state = (await c.get("/api/state", params={"t": T})).json()
        assert state["filters"] == {"blank": True, "near": True}
        blank = await window(c, filter="blank")
        assert [r["i"] for r in blank["rows"]] == [2, 5] and blank["rows"][0]["blank"] is True
        near = await window(c, filter="near")
        # a group after another; the blank rows (2, 5) are no one's near duplicates
        assert [r["i"] for r in near["rows"]] == [0, 6, 3, 7]
        assert calls[0][0][0] == "00000000000000ff" and len(calls[0][0]) == 6


async def test_without_the_neardup_module_the_filter_is_hidden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    append_index(
        tmp_path, list(place_images(tmp_path, [synthetic_row(0, phash="0" * 16)], tiny_png()))
    )
    monkeypatch.setitem(sys.modules, "batchgen.outputs.neardup", None)  # import fails
    async with client(tmp_path) as c:
        state = (await c.get("/api/state", params={"t": T})).json()
        assert state["filters"] == {"blank": False, "near": False}
        assert (await window(c, filter="near"))["total"] == 0


async def test_what_it_refuses(tmp_path: Path) -> None:
    rows = folder(tmp_path, 2)
    async with client(tmp_path) as c:
        for path in ("/", "/assets/review.js", "/api/state", "/api/rows", "/image"):
            assert (await c.get(path)).status_code == 401, path
            assert (await c.get(path, headers={"X-Review-Token": "nope"})).status_code == 401
        page = await c.get("/", params={"t": T})
        assert (
            page.status_code == 200
            and "default-src 'none'" in page.headers["content-security-policy"]
        )
        assert 'src="assets/review.js?t=token-123"' in page.text
        assert (
            page.headers["referrer-policy"] == "no-referrer"
            and page.headers["cache-control"] == "no-store"
        )
        assert (await c.get("/api/state", headers={"X-Review-Token": T})).status_code == 200
        own = await c.post(
            "/api/mark",
            params={"t": T},
            headers={"Origin": "http://testserver"},
            json={"file_name": rows[0]["file_name"], "mark": "picked"},
        )
        assert own.status_code == 200
        for origin in ("http://evil.example", "null", "http://127.0.0.1:1"):
            r = await c.get("/api/state", params={"t": T}, headers={"Origin": origin})
            assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
        for bad in (
            {"file_name": "../x.png", "mark": "picked"},
            {"file_name": "a.png", "mark": "meh"},
            {},
        ):
            assert (await c.post("/api/mark", params={"t": T}, json=bad)).status_code == 400
        assert (await c.get("/api/rows", params={"t": T, "filter": "nope"})).status_code == 400
        assert (await c.get("/assets/../marks.sqlite", params={"t": T})).status_code == 404
    assert read_marks(tmp_path) == {rows[0]["file_name"]: Mark.PICKED}


def test_the_command_refuses_a_folder_that_is_not_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["review", str(tmp_path), "--no-browser"]) == 2
    assert "is it a batchgen output folder?" in capsys.readouterr().err
    assert main(["review", str(tmp_path), "--port", "70000"]) == 2


def test_blank_and_phash_are_the_rows_own(tmp_path: Path) -> None:
    """A var named blank or phash is not the row's flag; a phash that is not 16 hex digits is
    no phash."""
    rows = [
        synthetic_row(0, vars={"blank": True, "phash": "00000000000000ff"}),
        synthetic_row(1, blank=True, phash="not-hex-at-all!!"),
        synthetic_row(2, blank=False, phash="00000000000000FF"),
    ]
    append_index(tmp_path, rows)
    index = RowIndex(tmp_path)
    while index.update():
        pass
    assert list(index.flags) == [0, 3, 6]  # none; HAS_BLANK|BLANK; HAS_BLANK|HAS_PHASH
    assert (list(index.phash_rows), list(index.phashes)) == ([2], [0xFF])
