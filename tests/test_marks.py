"""Marks on a folder's images (outputs/marks.py): kept apart from the images and the journal,
every change committed at once, several writers at a time, names checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from batchgen.outputs.marks import (
    MARKS_FILE,
    Mark,
    MarkError,
    Marks,
    keeps,
    read_marks,
    review_of,
)

A, B, C = "images/fox/a_0.png", "images/fox/b_0.png", "images/owl/c_0.png"


def test_marks_are_set_changed_and_cleared_and_each_change_is_kept(tmp_path: Path) -> None:
    assert read_marks(tmp_path) == {} and not (tmp_path / MARKS_FILE).exists()  # nothing made
    with Marks.open(tmp_path) as m:
        assert m.set([(A, "ja"), (B, "jb")], Mark.REJECTED, source="mark", now=1.0) == 2
        assert m.set([(A, "ja")], Mark.REJECTED, source="mark") == 0  # already so
        assert m.set([(B, None)], Mark.PICKED, source="review", now=2.0) == 1
        assert m.set([(C, "jc")], None, source="mark") == 0  # unmarked already
        assert m.counts() == {Mark.REJECTED: 1, Mark.PICKED: 1}
        assert [(r.file_name, r.job_id, r.mark) for r in m.rows()] == [
            (A, "ja", Mark.REJECTED),
            (B, "jb", Mark.PICKED),  # the job is kept when a change does not name it
        ]
        assert m.set([(A, None)], None, source="review", now=3.0) == 1
    assert read_marks(tmp_path) == {B: Mark.PICKED}
    with Marks.open(tmp_path) as m:
        changes = m._conn.execute("SELECT file_name, mark, source FROM changes ORDER BY id")
        assert list(changes) == [
            (A, "rejected", "mark"),
            (B, "rejected", "mark"),
            (B, "picked", "review"),
            (A, None, "review"),
        ]


@pytest.mark.parametrize(
    "name", ["", "/etc/passwd", "../outside.png", "images/../../x.png", "a\\b"]
)
def test_a_name_outside_the_folder_is_refused_and_nothing_is_written(
    tmp_path: Path, name: str
) -> None:
    with Marks.open(tmp_path) as m:
        with pytest.raises(MarkError):
            m.set([(A, "ja"), (name, None)], Mark.REJECTED, source="mark")
        assert m.all() == {}  # one transaction: the good name before it is not kept either


def test_exports_keep_what_the_flags_say() -> None:
    assert [keeps(x, exclude_rejected=True, only_picked=False) for x in Mark] == [True, False]
    assert keeps(None, exclude_rejected=True, only_picked=False)
    assert [keeps(x, exclude_rejected=False, only_picked=True) for x in Mark] == [True, False]
    assert not keeps(None, exclude_rejected=False, only_picked=True)
    assert [review_of(x) for x in (Mark.PICKED, Mark.REJECTED, None)] == ["picked", "rejected", ""]


WRITER = """
import sys
from batchgen.outputs.marks import Mark, Marks
out, who = sys.argv[1], sys.argv[2]
with Marks.open(out) as m:
    for i in range(200):
        m.set([(f"images/p/{who}{i}_0.png", None)], Mark.REJECTED, source=who)
"""


def test_processes_opening_and_marking_at_once_lose_nothing(tmp_path: Path) -> None:
    # All start together on a folder without marks: each opens (makes) the file as the others
    # do, then marks (the review page and `batchgen mark` started side by side).
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), who], stderr=subprocess.PIPE, text=True
        )
        for who in "wxyz"
    ]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    assert len(read_marks(tmp_path)) == 800
