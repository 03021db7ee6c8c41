"""The help layout every subcommand shares (the ``--faults`` vocabulary is in ``options``)."""

from __future__ import annotations

import argparse


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
