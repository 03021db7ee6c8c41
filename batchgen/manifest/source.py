"""Reading manifest files: size cap, text decoding, and YAML with a line for every value.

The only module of the manifest reader that touches the file system for text. Everything it
finds wrong becomes a `Problem` with the file and line, never a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from batchgen.errors import ManifestError, Problem
from batchgen.planning.disk import over_limit_text

# A manifest (or prompts file) larger than this is refused before it is read: a 50 MB file is
# a mistake (a pasted data dump), and parsing it would only waste minutes and memory.
MAX_FILE_BYTES = 32 * 1024 * 1024
# YAML aliases can make a tiny file expand into billions of nodes ("billion laughs"): cap the
# values reached through aliases (real manifests reuse a few small anchors) and all values.
MAX_YAML_NODES = 2_000_000
MAX_ALIAS_NODES = 100_000

PathKey = tuple[str | int, ...]


@dataclass
class ProblemList:
    """Collects problems so that every one is reported at once."""

    items: list[Problem] = field(default_factory=list)

    def add(self, file: str, line: int | None, fld: str | None, message: str) -> None:
        self.items.append(Problem(file, line, fld, message))

    def extend(self, problems: Iterable[Problem]) -> None:
        self.items.extend(problems)

    def raise_if_any(self) -> None:
        if self.items:
            ordered = sorted(self.items, key=lambda p: (p.file, p.line or 0))
            raise ManifestError(ordered)


def fail(file: str, line: int | None, fld: str | None, message: str) -> ManifestError:
    return ManifestError([Problem(file, line, fld, message)])


def read_text(path: Path, shown: str) -> str:
    """The file's text, decoded as UTF-8 (a BOM is allowed), or a ManifestError."""
    return decode(read_bytes(path, shown), shown)


def read_bytes(path: Path, shown: str) -> bytes:
    """The file's bytes, refused before reading when it is too large."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise fail(shown, None, None, "no such file") from None
    except OSError as exc:
        raise fail(shown, None, None, f"cannot read it: {exc.strerror}") from None
    if path.is_dir():
        raise fail(shown, None, None, "is a folder, not a manifest file")
    if size > MAX_FILE_BYTES:
        raise fail(
            shown,
            None,
            None,
            "the file is {}; a manifest or prompts file may be at most {}".format(
                *over_limit_text(size, MAX_FILE_BYTES)
            ),
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise fail(shown, None, None, f"cannot read it: {exc.strerror}") from None


def decode(data: bytes, shown: str) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise fail(shown, None, None, "the file is UTF-16; save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise fail(
            shown,
            line,
            None,
            f"not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8",
        ) from None
    nul = text.find("\x00")
    if nul >= 0:
        raise fail(shown, text.count("\n", 0, nul) + 1, None, "the file holds a NUL byte")
    return text


@dataclass(frozen=True)
class Located:
    """Plain Python data from YAML, and the line of every mapping entry and list item."""

    data: Any
    lines: dict[PathKey, int]

    def line(self, path: Iterable[str | int]) -> int | None:
        """The line of `path`, or of its nearest ancestor that has one."""
        key = tuple(path)
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[:-1]
        return self.lines.get(())


def load_yaml(text: str, shown: str) -> Located:
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else None
            what = exc.problem or exc.context or "cannot parse"
            ctx_mark = exc.context_mark
            if exc.context and ctx_mark is not None and ctx_mark.line + 1 != line:
                # The cause is often where the context began (an unclosed quote, a bracket).
                what += f", {exc.context} that starts on line {ctx_mark.line + 1}"
            raise fail(shown, line, None, f"YAML syntax: {what}") from None
        except yaml.YAMLError as exc:
            raise fail(shown, None, None, f"YAML syntax: {exc}") from None
        if node is None:
            raise fail(shown, None, None, "the manifest is empty")
        problems = ProblemList()
        walker = _Walker(loader, shown, problems)
        data = walker.value(node, ())
        problems.raise_if_any()
        return Located(data, walker.lines)
    finally:
        loader.dispose()


class _Walker:
    """Turns PyYAML's node tree into plain data, remembering each node's line."""

    def __init__(self, loader: yaml.SafeLoader, shown: str, problems: ProblemList) -> None:
        self.loader = loader
        self.shown = shown
        self.problems = problems
        self.lines: dict[PathKey, int] = {(): 1}
        self.count = 0
        self.alias_count = 0
        self.in_alias = 0
        self.expanded: set[int] = set()  # ids of collection nodes already turned into data

    def value(self, node: yaml.Node, path: PathKey) -> Any:
        self.count += 1
        self.alias_count += self.in_alias > 0
        if self.count > MAX_YAML_NODES or self.alias_count > MAX_ALIAS_NODES:
            line = node.start_mark.line + 1
            raise fail(
                self.shown,
                line,
                None,
                "too many YAML values (aliases that expand into millions of values?)",
            )
        if isinstance(node, yaml.CollectionNode):
            # The composer hands an alias back as the very node it names: seeing a node twice
            # means an alias is being expanded.
            reused = id(node) in self.expanded
            self.expanded.add(id(node))
            self.in_alias += reused
            try:
                if isinstance(node, yaml.MappingNode):
                    return self._mapping(node, path)
                return self._sequence(node, path)
            finally:
                self.in_alias -= reused
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:  # e.g. a malformed !!timestamp
            self.problems.add(self.shown, node.start_mark.line + 1, dotted(path), str(exc))
            return None

    def _sequence(self, node: yaml.CollectionNode, path: PathKey) -> list[Any]:
        out = []
        for i, item in enumerate(node.value):
            self.lines[(*path, i)] = item.start_mark.line + 1
            out.append(self.value(item, (*path, i)))
        return out

    def _mapping(self, node: yaml.MappingNode, path: PathKey) -> dict[Any, Any]:
        try:
            self.loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys
        except yaml.YAMLError as exc:
            self.problems.add(self.shown, node.start_mark.line + 1, dotted(path), str(exc))
            return {}
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.add(self.shown, line, dotted(path), "a key must be plain text")
                continue
            key = self.loader.construct_object(key_node)
            key = key if isinstance(key, str) else str(key)
            if key in out:
                self.problems.add(
                    self.shown,
                    line,
                    dotted((*path, key)),
                    f"appears twice in this mapping (first on line {self.lines[(*path, key)]})",
                )
                continue
            self.lines[(*path, key)] = line
            out[key] = self.value(value_node, (*path, key))
        return out


def dotted(path: Iterable[str | int]) -> str | None:
    """`("prompts", 3, "quality")` -> "prompts[3].quality" (None for the root)."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or None
