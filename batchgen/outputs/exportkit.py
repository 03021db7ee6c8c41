"""What every export shares: its result, the write to a ``.part`` renamed into place, and the
key of a sample (webdataset members, captions' file stems)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_SKIPPED_LISTED = 1000  # names kept; a folder whose files are all gone is only counted


@dataclass
class ExportResult:
    paths: list[Path] = field(default_factory=list)
    rows: int = 0
    # File names missing or changed on disk: the first MAX_SKIPPED_LISTED, and how many in all.
    skipped: list[str] = field(default_factory=list)
    skipped_count: int = 0
    stale: int = 0  # rows of stale images left out (journal/stale.py)
    unmarked: int = 0  # rows left out by their mark (exclude_rejected, only_picked)
    linked: int = 0  # captions: images hard-linked into the destination
    copied: int = 0  # captions: images copied (another filesystem)

    def skip(self, name: str) -> None:
        self.skipped_count += 1
        if len(self.skipped) < MAX_SKIPPED_LISTED:
            self.skipped.append(name)


def atomic_write(dest: Path, write: Callable[[Path], int]) -> int:
    """``write(tmp)`` to ``dest.part``, then renamed into place; returns what ``write`` does."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        n = write(tmp)
        os.replace(tmp, dest)
        return n
    finally:
        tmp.unlink(missing_ok=True)


def sample_key(row: Mapping[str, Any]) -> str:
    """A webdataset key: no dots (the loader splits key from extension at the first one)."""
    return f"{row['job_id']}_{int(row.get('image_index') or 0)}"
