"""A manifest's identity: the sha256 that says whether a folder's plan is still the manifest's.

A run re-plans when the identity differs from the last run's (``journal/opening.py``), and every
index row records it (``manifest_sha256``). It covers what the plan is made of: the manifest
file's bytes and every file it read (a prompts file, reference images, each pattern's matches),
by path and content. So appending a prompt to a CSV, editing a reference image or adding a file
a pattern matches changes it, and the next run plans the new jobs at once. A manifest that reads
no other file keeps the sha256 of its own bytes, as before these files counted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from batchgen.planning.jobs import canonical_json


def identity(
    file_sha256: str,
    reads: Mapping[str, str],
    globs: Mapping[str, Sequence[str]],
) -> str:
    """The identity of a manifest whose own bytes hash to ``file_sha256``, that read ``reads``
    (path relative to its folder -> sha256) and expanded ``globs`` (pattern -> its matches)."""
    if not reads and not globs:
        return file_sha256
    doc = {
        "manifest": file_sha256,
        "reads": dict(reads),
        "globs": {pattern: list(matches) for pattern, matches in globs.items()},
    }
    return hashlib.sha256(canonical_json(doc).encode()).hexdigest()
