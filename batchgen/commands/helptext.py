"""The help layout every subcommand shares (the ``--faults`` vocabulary is in ``options``)."""

from __future__ import annotations

import argparse
import re

# How a help text already names its default: "(default: ...)", or a stray "(default ...)".
SAYS_DEFAULT = re.compile(r"\(default\b", re.IGNORECASE)


def default_text(default: object) -> str:
    """A default as the help shows it: a float without a trailing ".0" (1200, not 1200.0)."""
    return f"{default:g}" if isinstance(default, float) else str(default)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written (raw epilog), and each option's default shown after its help,
    in one form: "(default: X)".

    Unlike ``ArgumentDefaultsHelpFormatter`` it says nothing for an option without a default
    (None) or a switch (False): "(default: None)" tells the user nothing; nor for one whose
    help already says its default in words ("(default: auto)"), which would show it twice.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        # Identity, not ==: a default of 0 (--seed) is worth showing, and 0 == False.
        if (
            action.option_strings
            and "%(default)" not in text
            and not SAYS_DEFAULT.search(text)
            and default is not None
            and default is not False
            and default != argparse.SUPPRESS
        ):
            # %-escaped: argparse formats the help with % afterwards.
            text += f" (default: {default_text(default)})".replace("%", "%%")
        return text
