"""The command line: parse, dispatch to ``batchgen.commands.<name>``, map errors to exit codes.

Each command module offers ``add_arguments(parser)``, ``run(args) -> int`` and ``EXAMPLES`` (the
help's epilog). This file knows
nothing about what the commands do; it only guarantees that a user mistake prints one clear
message and no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from batchgen._version import __version__
from batchgen.commands.helptext import HelpFormatter
from batchgen.errors import BatchgenError

COMMANDS: dict[str, str] = {
    "plan": "show the jobs a manifest expands into, and their estimated cost",
    "run": "run a manifest against fal (or the built-in emulator), resuming where it stopped",
    "status": "show the state of a run's output folder",
    "index": "rebuild metadata.jsonl and failures.jsonl from the journal",
    "gallery": "rebuild the static HTML gallery of an output folder",
    "export": "export a run's index as parquet, CSV or webdataset shards",
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchgen",
        description="Bulk image generation on fal.ai's queue API.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"batchgen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        module = _module(name)
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=module.EXAMPLES,
            formatter_class=HelpFormatter,
        )
        module.add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
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
