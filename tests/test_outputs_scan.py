"""``iter_index``: the rows ``read_index`` gives, in its order, without holding them all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchgen.outputs import scan
from batchgen.outputs.index import METADATA, read_index
from batchgen.outputs.scan import iter_index

NAMES = ["images/a.png", "images/b.png", 'images/q"uote.png', "images/é\\x.png", "images/ü.png"]


def _line(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["row", "row", "row", "ascii", "torn", "blank", "other"]))
    name = draw(st.sampled_from(NAMES))
    row = {"file_name": name, "n": draw(st.integers(0, 9))}
    if kind == "row":  # as batchgen writes rows
        return (json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
    if kind == "ascii":  # as another tool might: escapes, spaces, another key first
        return (json.dumps({"x": 1, **row}) + "\n").encode()
    if kind == "torn":  # a crash cut the line short
        text = json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode()
        return text[: draw(st.integers(1, len(text) - 1))] + b"\n"
    if kind == "blank":
        return b"  \n"
    return draw(st.sampled_from([b"[1]\n", b'{"file_name": 3}\n', b'"x"\n', b"\xff\xfe\n"]))


@st.composite
def index_files(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(st.builds(lambda: None), max_size=30))
    data = b"".join(_line(draw) for _ in lines)
    return data[:-1] if data and draw(st.booleans()) else data  # no final newline


@pytest.mark.parametrize("filter_bytes", [scan.MAX_FILTER_BYTES, 1])
@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=index_files())
def test_same_rows_in_the_same_order_as_read_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: bytes, filter_bytes: int
) -> None:
    # A one-byte filter makes nearly every name a candidate: the exact path is exercised too.
    monkeypatch.setattr(scan, "MAX_FILTER_BYTES", filter_bytes)
    (tmp_path / METADATA).write_bytes(data)
    assert list(iter_index(tmp_path)) == read_index(tmp_path)


def test_a_missing_index_has_no_rows(tmp_path: Path) -> None:
    assert list(iter_index(tmp_path)) == []


def test_rows_appended_during_the_read_are_left_for_next_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / METADATA
    rows = [{"file_name": f"images/{i}.png", "v": 0} for i in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first_pass = scan._candidates

    def then_a_run_appends(*args: object) -> object:
        found = first_pass(*args)  # type: ignore[arg-type]
        with path.open("a") as f:  # a second row for a file the first pass saw once
            f.write(json.dumps({"file_name": "images/0.png", "v": 1}) + "\n")
        return found

    monkeypatch.setattr(scan, "_candidates", then_a_run_appends)
    assert list(iter_index(tmp_path)) == rows
