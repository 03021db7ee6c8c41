"""``batchgen run``'s flags, derived from ``options.RunOptions``: one argument per field.

A field's name gives the flag (``max_cost`` -> ``--max-cost``) and the attribute it is parsed
into; its ``Flag`` gives the help's section, the metavar and the exclusive group; its default
and description give the rest. A ``bool`` is a switch, a ``Literal`` or an enum a list of
choices, anything else a value taken as text: ``RunOptions.parse`` converts and checks it, so
a number in a flag follows the same rules as in ``batchgen.run``.
"""

from __future__ import annotations

import argparse
import enum
import types
import typing
from typing import Any

from batchgen.option_rules import flag_name
from batchgen.options import RunOptions


def add_option_flags(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Add every ``RunOptions`` field to ``parser``, grouped under its section's heading;
    returns the groups by heading (a command lists its own flags beside the options)."""
    sections: dict[str, Any] = {}
    exclusive: dict[str, Any] = {}
    for name, info, flag in RunOptions.flags():
        group = sections.get(flag.section)
        if group is None:
            group = sections[flag.section] = parser.add_argument_group(flag.section)
        if flag.exclusive is not None:
            if flag.exclusive not in exclusive:
                exclusive[flag.exclusive] = group.add_mutually_exclusive_group()
            group = exclusive[flag.exclusive]
        kwargs: dict[str, Any] = {"dest": name, "help": info.description}
        if info.annotation is bool:
            kwargs.update(action="store_true", default=False)
        else:
            kwargs.update(default=info.default, metavar=flag.metavar)
            choices = _choices(info.annotation)
            if choices:
                kwargs["choices"] = choices
        group.add_argument(flag_name(name), **kwargs)
    return sections


def options_from(args: argparse.Namespace) -> RunOptions:
    """The parsed flags as checked options (a ``UsageError`` lists every problem)."""
    return RunOptions.parse({name: getattr(args, name) for name, _, _ in RunOptions.flags()})


def _choices(annotation: object) -> list[str] | None:
    """The values a ``Literal``, an enum, or either of them ``| None`` allows."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _choices(inner[0]) if len(inner) == 1 else None
    if origin is typing.Literal:
        return [str(a) for a in typing.get_args(annotation)]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [str(m.value) for m in annotation]
    return None
