"""The gallery's near-duplicate groups: each row's perceptual hash kept beside the chunks
(``.gallery/phash.bin``, 16 bytes a row, so a refresh has the older rows' hashes without
reading them again), and the groups over every row written as one script,
``.gallery/dups.js``: ``batchgenGallery.dups({"rows": [...], "group": [...]})``, the page
positions of the rows in a group and each one's group number (0 for the group whose first
row comes first), in row order. Only grouped rows are listed, so the file is small unless
the folder is mostly near duplicates.

The grouping is :func:`batchgen.outputs.neardup.near_duplicate_groups` at its default
distance. Blank images (``blank: true``) are left out of it: they all hash alike (zero) and
have a filter of their own. A build groups every row (its cost at a million rows is in
docs/benchmarks.md); a refresh starts from the groups of the ``dups.js`` it replaces and looks
only for pairs with a row appended since.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from batchgen.outputs.gallery_data import DATA_DIR, write_script
from batchgen.outputs.gallery_scan import Rows
from batchgen.outputs.neardup import groups_of_values, grow_groups, parse

HASHES = f"{DATA_DIR}/phash.bin"
DUPS = f"{DATA_DIR}/dups.js"


class Hashes(Rows):
    """Per row, in order: 1 and its hash, or 0 and 0 (no hash, or a blank image)."""

    WIDTH = 2

    def add(self, row: Mapping[str, Any]) -> None:
        h = None if row.get("blank") is True else parse(row.get("phash"))
        self.data.extend((0, 0) if h is None else (1, h))

    def copy(self) -> Hashes:
        return Hashes(self.data[:])

    def values(self) -> list[int | None]:
        d = self.data
        return [d[i + 1] if d[i] else None for i in range(0, len(d), self.WIDTH)]


def write_dups(out_dir: Path, hashes: Hashes, known: int = 0) -> tuple[int, int]:
    """Write ``dups.js`` for ``hashes``; returns (groups, rows in them). ``known``: a refresh's
    rows that the ``dups.js`` on disk grouped (its first ``known``, unchanged since): only
    the pairs with a newer row are looked for (:func:`neardup.grow_groups`)."""
    values = hashes.values()
    old = _read_dups(out_dir, known) if 0 < known <= len(values) else None
    groups = groups_of_values(values) if old is None else grow_groups(old, values, known)
    pairs = sorted((row, g) for g, rows in enumerate(groups) for row in rows)
    data = {"rows": [r for r, _ in pairs], "group": [g for _, g in pairs]}
    write_script(out_dir, DUPS, "batchgenGallery.dups", data)
    return len(groups), len(pairs)


def _read_dups(out_dir: Path, known: int) -> list[list[int]] | None:
    """The groups ``dups.js`` lists, or None when it cannot be read as one of ``known`` rows
    (then every row is grouped again)."""
    head, tail = "batchgenGallery.dups(", ");\n"
    try:
        text = (out_dir / DUPS).read_text(encoding="ascii")
        if not (text.startswith(head) and text.endswith(tail)):
            return None
        data = json.loads(text[len(head) : -len(tail)])
        by_id: dict[int, list[int]] = {}
        for row, g in zip(data["rows"], data["group"], strict=True):
            if not (isinstance(row, int) and 0 <= row < known and isinstance(g, int)):
                return None
            by_id.setdefault(g, []).append(row)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return list(by_id.values())
