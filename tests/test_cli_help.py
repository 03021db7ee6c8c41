"""The help is the manual a new user reads first: every option says what it does and its
default, every command shows examples, and --faults names every profile and fault."""

from __future__ import annotations

import argparse
import re

import pytest

from batchgen import cli, option_rules
from batchgen.commands.helptext import SAYS_DEFAULT, HelpFormatter, default_text
from batchgen.emulator.faults import FAULT_NAMES, PROFILES


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    choices: dict[str, argparse.ArgumentParser] = action.choices
    return choices


def test_every_command_is_walked() -> None:
    assert set(subparsers()) == set(cli.COMMANDS)


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_option_has_help(name: str) -> None:
    parser = subparsers()[name]
    for action in parser._actions:
        what = f"batchgen {name} {'/'.join(action.option_strings) or action.dest}"
        assert action.help and action.help.strip(), f"{what} has no help"
        assert action.help != argparse.SUPPRESS, f"{what} is hidden"


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_default_is_shown(name: str) -> None:
    parser = subparsers()[name]
    text = parser.format_help()
    flat = " ".join(text.split())  # argparse wraps long help lines
    for action in parser._actions:
        default = action.default
        if not action.option_strings or default is None or default is False:
            continue
        if default == argparse.SUPPRESS:
            continue
        if SAYS_DEFAULT.search(action.help or ""):
            continue  # said in words ("(default: auto)"): checked once below
        assert f"(default: {default_text(default)})" in flat, (
            f"batchgen {name} {action.option_strings}"
        )


def help_of(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """One option's help as `--help` prints it, unwrapped."""
    return " ".join(parser._get_formatter()._expand_help(action).split())


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_each_default_is_said_once_in_one_form(name: str) -> None:
    parser = subparsers()[name]
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        text = help_of(parser, action)
        what = f"batchgen {name} {action.option_strings}: {text}"
        assert len(re.findall(r"\(default\b", text)) <= 1, what
        assert "(default " not in text, what  # one form: "(default: X)"
        assert not re.search(r"\(default: \d+\.0\)", text), what  # 1200, not 1200.0


def test_a_help_that_names_its_default_gets_no_second_one() -> None:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    a = parser.add_argument("--n", default=32, help="images at once (default 32)")
    b = parser.add_argument("--m", default=32, help="images at once")
    c = parser.add_argument("--s", default=1200.0, help="seconds")
    assert help_of(parser, a) == "images at once (default 32)"
    assert help_of(parser, b) == "images at once (default: 32)"
    assert help_of(parser, c) == "seconds (default: 1200)"


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_has_examples(name: str) -> None:
    parser = subparsers()[name]
    assert parser.epilog and "examples:" in parser.epilog
    assert f"batchgen {name} " in parser.epilog
    assert f"batchgen {name} " in parser.format_help()  # raw: the examples keep their lines


@pytest.mark.parametrize("name", ["run", "emulator"])
def test_faults_help_names_every_profile_and_fault(name: str) -> None:
    (faults,) = (a for a in subparsers()[name]._actions if "--faults" in a.option_strings)
    assert faults.help is not None
    for word in (*PROFILES, *FAULT_NAMES):
        assert word in faults.help, word


def test_the_help_lists_match_the_emulator() -> None:
    # option_rules spells them out so that `batchgen --help` does not import the emulator
    # (the profiles are checked in the help text itself, above).
    assert option_rules.FAULT_NAMES == FAULT_NAMES


@pytest.mark.parametrize("name", [None, *cli.COMMANDS])
def test_help_exits_0(name: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([*([name] if name else []), "--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:" in out or "start here" in out
