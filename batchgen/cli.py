"""The command line: parse, dispatch to ``batchgen.commands.<name>``, map errors to exit codes.

Each command module offers ``add_arguments(parser)``, ``run(args) -> int`` and ``EXAMPLES`` (the
help's epilog). This file knows
nothing about what the commands do; it only guarantees that a user mistake prints one clear
message and no traceback.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any, NoReturn

from batchgen._version import __version__
from batchgen.commands.helptext import HelpFormatter
from batchgen.errors import BatchgenError

COMMANDS: dict[str, str] = {
    "plan": "show the jobs a manifest expands into, and their estimated cost",
    "run": "run a manifest against fal (or the built-in emulator), resuming where it stopped",
    "status": "show the state of a run's output folder",
    "index": "rebuild metadata.jsonl and failures.jsonl from the journal",
    "gallery": "rebuild the static HTML gallery of an output folder",
    "mark": "mark a run's images picked or rejected (or clear their marks)",
    "review": "serve a page to pick and reject a folder's images, one at a time, on loopback",
    "export": "export a run's index as parquet, CSV, webdataset shards or training captions",
    "reconcile": "fetch what fal billed for a run's requests and set it beside the estimate",
    "emulator": "serve the fal-compatible emulator on loopback",
}

EXIT_INTERRUPTED = 130

EXAMPLES = """\
start here (no key, no network):
  batchgen plan manifests/demo.yaml
  batchgen run manifests/demo.yaml --emulate

'batchgen COMMAND --help' shows each command's options and examples.
"""


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"batchgen.commands.{name}")


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error said in one line and no abbreviated flags.

    argparse prints the whole usage before the message that matters; here the error is one
    line naming the command and where its help is (the usage shows with ``--help`` only).
    ``allow_abbrev=False`` (argparse's documented switch) makes ``--emulat`` an error instead
    of a silent ``--emulate``. ``add_subparsers`` builds each command's parser with this class.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")

    def unrecognized(self, extra: Sequence[str]) -> NoReturn:
        """The error for arguments no option takes, with the nearest flag when one is close."""
        flags = [s for a in self._actions for s in a.option_strings if s.startswith("--")]
        near = [m for x in extra for m in difflib.get_close_matches(x.split("=")[0], flags, 1)]
        hint = f" (did you mean {near[0]}?)" if near else ""
        self.error(f"unrecognized arguments: {' '.join(extra)}{hint}")


def build_parser() -> Parser:
    parser = Parser(
        prog="batchgen",
        description="Bulk image generation on fal.ai's queue API.",
        epilog=EXAMPLES,
    )
    parser.add_argument("--version", action="version", version=f"batchgen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        module = _module(name)
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=module.EXAMPLES)
        module.add_arguments(p)
    return parser


def _parse(parser: Parser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parse_args``, but an unknown argument is reported by its command's parser (argparse
    leaves it to the top one, whose hint would point at 'batchgen --help').

    A command whose module names a ``TRAILING`` list positional (``nargs="*"``) also gets the
    plain arguments after its options there: argparse fills such a positional, empty, together
    with the one before it, so ``batchgen mark OUT --reject NAME`` would leave NAME over."""
    args, extra = parser.parse_known_args(argv)
    command_name = getattr(args, "command", None)
    trailing = getattr(_module(command_name), "TRAILING", None) if extra and command_name else None
    if trailing:
        getattr(args, trailing).extend(x for x in extra if not x.startswith("-"))
        extra = [x for x in extra if x.startswith("-")]
    if extra:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        command = sub.choices.get(getattr(args, "command", None) or "", parser)
        assert isinstance(command, Parser)
        command.unrecognized(extra)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = _parse(parser, argv)
    except SystemExit as exc:  # a usage error exits 2 (one line on stderr), --help 0
        return int(exc.code or 0)
    try:
        code: int = _module(args.command).run(args)
        return code
    except BatchgenError as exc:
        print(f"batchgen: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("batchgen: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


EXIT_BROKEN_PIPE = 141  # what a shell reports for a tool killed by SIGPIPE (128 + 13)


def console_main() -> None:
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`batchgen plan big.yaml | head`): no traceback. Point stdout
        # at /dev/null so the interpreter's own flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_BROKEN_PIPE
    sys.exit(code)
