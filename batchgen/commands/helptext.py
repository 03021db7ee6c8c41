"""Help text shared by several subcommands: the help layout and the ``--faults`` vocabulary.

The fault names are written out here rather than read from ``batchgen.emulator.faults``:
importing the emulator package pulls in Starlette and uvicorn, and every ``batchgen`` command
(``--help`` included) builds every subcommand's parser. ``tests/test_cli_help.py`` fails when
this list and the emulator's disagree.
"""

from __future__ import annotations

import argparse

FAULT_PROFILES = ("none", "flaky", "hostile")
FAULT_NAMES = (
    "submit429",
    "submit503",
    "submitdrop",
    "status500",
    "status503",
    "runner_error",
    "content_policy",
    "policy_retryable",
    "truncate",
    "slow_media",
    "upload500",
    "evil_name",
    "file_url",
    "webhook_lost",
    "webhook_dup",
    "webhook_delay",
    "webhook_forged",
    "fallback",
)

FAULTS_HELP = (
    "a profile, NAME=PROBABILITY pairs, or a profile followed by pairs, comma-separated"
    " (e.g. flaky,content_policy=0.2). Profiles: none; flaky (a bad night: some 429s, dropped"
    " submits, status 500s, runner errors, refusals, truncated and slow media); hostile"
    f" (everything, often). Names: {', '.join(FAULT_NAMES)}"
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written (raw epilog), and each option's default shown after its help.

    Unlike ``ArgumentDefaultsHelpFormatter`` it says nothing for an option without a default
    (None) or a switch (False): "(default: None)" tells the user nothing.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        # Identity, not ==: a default of 0 (--seed) is worth showing, and 0 == False.
        if (
            action.option_strings
            and "%(default)" not in text
            and default is not None
            and default is not False
            and default != argparse.SUPPRESS
        ):
            text += " (default: %(default)s)"
        return text
