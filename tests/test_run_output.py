"""What `batchgen run` prints, through `main(argv)` and the emulator: --quiet is quiet, --json
is one JSON object on stdout, and the progress bar keeps the spend at 80 columns and is gone
before the summary."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import pytest
from test_run_support import write_manifest

from batchgen.cli import main
from batchgen.commands.progress import Progress, Snapshot
from batchgen.outputs.index import METADATA


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "BATCHGEN_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


class Terminal(io.StringIO):
    """stderr as a terminal: what the bar is drawn on."""

    def isatty(self) -> bool:
        return True


def _run(tmp_path: Path, jobs: int, *extra: str) -> tuple[int, Path]:
    m = write_manifest(tmp_path, jobs)
    out = tmp_path / "out"
    code = main(["run", str(m), "--emulate", "--out", str(out), "--time-scale", "0", *extra])
    return code, out


def test_quiet_prints_no_progress_lines_but_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = _run(tmp_path, 6, "--quiet")  # stderr is a pipe here: progress would be lines
    assert code == 0
    captured = capsys.readouterr()
    assert "progress:" not in captured.err
    assert "batchgen: done 6, failed 0, unfinished 0" in captured.err
    assert captured.out == ""


def test_quiet_draws_no_bar_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert _run(tmp_path, 4, "--quiet")[0] == 0
    err = term.getvalue()
    assert "%|" not in err and "progress:" not in err
    assert "batchgen: done 4, failed 0" in err


def test_json_is_one_object_with_the_run_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _run(tmp_path, 8, "--quiet", "--json", "--faults", "content_policy=0.4")
    captured = capsys.readouterr()
    doc = json.loads(captured.out)  # raises on anything beside one JSON value
    assert isinstance(doc, dict)
    assert doc["out_dir"] == str(out)
    assert doc["exit_code"] == code == (1 if doc["failed_total"] else 0)
    assert doc["failed_total"] >= 1  # seeded dice: this mix refuses some
    assert doc["failed"] == {"content_policy_violation": doc["failed_total"]}
    assert doc["done"] + doc["failed_total"] == 8 and doc["unfinished"] == 0
    assert doc["images"] == doc["done"]  # one image a job, all saved by this run
    # A rehearsal bills nothing; what it would cost on fal is apart.
    assert doc["spent"] == doc["spent_run"] == 0 and doc["rehearsal"] > 0
    assert doc["stop"] is None and doc["fatal"] is None
    assert doc["metadata"] == str(out / METADATA) and Path(doc["metadata"]).is_file()
    assert Path(doc["index_html"]).is_file() and Path(doc["failures"]).is_file()
    assert doc["summary"][0].startswith(f"done {doc['done']}, failed {doc['failed_total']}")
    # The summary is on stdout as JSON, not a second time on stderr.
    assert "batchgen: done" not in captured.err


def test_json_of_a_run_stopped_at_the_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = _run(tmp_path, 8, "--quiet", "--json", "--concurrency", "2", "--max-cost", "0.035")
    doc = json.loads(capsys.readouterr().out)
    assert code == doc["exit_code"] == 3
    assert doc["stop"] == "budget" and doc["unfinished"] > 0


def frames(text: str) -> list[str]:
    """What a terminal shows line by line: each redraw starts at a carriage return."""
    return [f for f in re.split(r"[\r\n]", text) if f.strip()]


def test_the_bar_keeps_the_spend_at_80_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("LINES", "24")
    assert _run(tmp_path, 12)[0] == 0
    bars = [f for f in frames(term.getvalue()) if "%|" in f]
    assert bars
    for bar in bars:
        assert len(bar) <= 80, bar
        assert re.search(r"~\$\d+\.\d\d on fal", bar), bar  # the (rehearsal) spend, whole
        assert "failed 0" in bar
        assert "ETA" in bar or "12/12" in bar, bar  # the ETA while jobs remain
    assert "12/12" in bars[-1]
    # The bar is gone before the summary: nothing but blanks between its last frame and it.
    tail = term.getvalue().split("batchgen: done", 1)[0].rsplit("%|", 1)[1]
    assert tail.rsplit("\r", 2)[-2].strip() == "" and tail.endswith("\r")


def test_a_note_wipes_the_whole_line_then_redraws_the_bar() -> None:
    snap = Snapshot(
        spent=0.5, pending=5, queued=1, running=2, in_flight=3, done=10, failed=1, window=3
    )
    term = Terminal()
    p = Progress(lambda: snap, total=16, stream=term, bar=True, columns=lambda: 80)
    p.note("batchgen: stopping")
    before, after = term.getvalue().split("batchgen: stopping\n")
    # All 80 columns blanked, the two a "^C" echo lands in included, before the notice...
    assert ("\r" + " " * 80 + "\r") in before
    assert "%|" in after  # ...and the bar drawn again under it
    p.close()
    assert term.getvalue().endswith("\r" + " " * 80 + "\r")
