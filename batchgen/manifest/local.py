"""Where a manifest value points: a URL, a data URI, or a local path (maybe a glob) next to the
manifest; and the message helper every manifest check uses.

The bottom of the manifest reader: ``files`` (reading and hashing local files) and ``fields``
(the rules of one value) both build on these predicates.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_URL = re.compile(r"^(https?://|data:)", re.IGNORECASE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")
_MAGIC = frozenset("*?[")


def short(value: Any, limit: int = 60) -> str:
    """repr() for messages, cut short: a 50 MB value must not become a 50 MB message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_local_path(value: str) -> bool:
    return not _URL.match(value)


def is_glob(value: str) -> bool:
    """A local path with a pattern in it (`products/*.png`): one job per matching file."""
    return is_local_path(value) and not _MAGIC.isdisjoint(value)


def scheme_problem(value: str) -> str | None:
    """A URL scheme batchgen cannot send (`file:`, `ftp:`); a Windows drive letter is a path."""
    if _SCHEME.match(value) and not _URL.match(value) and not re.match(r"^[A-Za-z]:[\\/]", value):
        return f"{short(value)}: use an http(s) URL, a data: URI or a path next to the manifest"
    return None


def local_path_problem(value: str, folder: Path) -> str | None:
    """Why `value` (a URL, a data URI, or a path relative to the manifest) is not usable."""
    if _URL.match(value):
        return None
    why = scheme_problem(value)
    if why:
        return why
    base = folder.resolve()
    target = (base / value).resolve()
    if not target.is_relative_to(base):
        return f"{short(value)} is outside the manifest's folder; local files must be inside it"
    if target.is_dir():
        return f"{short(value)} is a folder, not an image file"
    if not target.is_file():
        return f"no such file {short(value)} (local paths are relative to the manifest)"
    return None
