"""A usage error is one line on stderr, naming the command and where its help is (the usage
only with --help), for every command; an abbreviated flag is an error, not a guess
(batchgen/cli.py, Parser)."""

from __future__ import annotations

import pytest

from batchgen.cli import main


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["run", "m.yaml", "--emulat"], "batchgen run: error: unrecognized arguments: --emulat"),
        (["run"], "batchgen run: error: the following arguments are required: manifest"),
        (["run", "m.yaml", "--watch", "x"], "batchgen run: error: argument --watch"),
        (["plan", "m.yaml", "--js"], "batchgen plan: error: unrecognized arguments: --js"),
        (["status", "out", "--jso"], "batchgen status: error: unrecognized arguments: --jso"),
        (["index", "out", "--rebuil"], "batchgen index: error: unrecognized arguments"),
        (["gallery"], "batchgen gallery: error: the following arguments are required: out"),
        (["export", "out", "--format", "x"], "batchgen export: error: argument --format"),
        (["reconcile", "out", "--jso"], "batchgen reconcile: error: unrecognized arguments"),
        (["emulator", "--por", "1"], "batchgen emulator: error: unrecognized arguments"),
        (["bogus"], "batchgen: error: argument COMMAND: invalid choice: 'bogus'"),
    ],
)
def test_a_usage_error_is_one_line_with_where_the_help_is(
    capsys: pytest.CaptureFixture[str], argv: list[str], said: str
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(said), line
    prog = said.split(":")[0]
    assert line.endswith(f"see '{prog} --help'")
    assert "usage:" not in captured.err


def test_a_close_misspelling_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "m.yaml", "--emulat"]) == 2
    assert "(did you mean --emulate?)" in capsys.readouterr().err


def test_help_still_shows_the_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: batchgen run")
