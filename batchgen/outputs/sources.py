"""The manifest as run, kept in its output folder: the run can be reproduced from the folder.

``manifest.<suffix>`` is the manifest file, and ``.manifest/files/`` holds every other file it
read (a prompts file, reference images, each pattern's matches) at its path relative to the
manifest, so ``manifest.yaml`` beside a copy of ``.manifest/files/``'s contents plans the same
jobs, with the same identity (``manifest/identity.py``). ``.manifest/files.json`` says what they
are: the identity, the manifest's own sha256, each file's sha256, each pattern's matches.
The folder is hidden, so Hugging Face's ImageFolder does not take reference images for
examples. Layout: docs/outputs.md.

Each copy is checked against the sha256 the manifest was planned with: a file changed between
planning and the copy is refused (run again), so the folder never claims bytes it did not run.
A file the last run copied with the same sha256 is not copied again, so a folder of ten
thousand references costs a stat each on a resume. Reference images that add up to more than
``REFERENCE_COPY_BYTES`` are not copied at all: ``files.json`` still names each with its sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from batchgen.errors import ManifestError, Problem
from batchgen.manifest import Manifest
from batchgen.manifest.files import read_name

SOURCES = ".manifest"
FILES = f"{SOURCES}/files"
RECORD = f"{SOURCES}/files.json"
RECORD_FORMAT = 1
# Reference images are copied while they add up to no more than this; past it the folder keeps
# their sha256 only (files.json's "not_copied"), enough to check the originals, not to run again.
REFERENCE_COPY_BYTES = 1 << 30
_BLOCK = 1 << 20


def manifest_copy_name(manifest: Path) -> str:
    """``manifest.yaml`` (or ``.yml``, ``.csv``, ``.jsonl``: the manifest's own suffix)."""
    return f"manifest{manifest.suffix.lower() or '.yaml'}"


def write_sources(out_dir: Path, manifest: Manifest) -> list[str]:
    """Copy the manifest and every file it read into ``out_dir`` (see the module's doc).
    Returns the files read but not copied: reference images past ``REFERENCE_COPY_BYTES``."""
    out = Path(out_dir)
    folder = manifest.path.parent
    own = manifest.file_sha256 or manifest.sha256
    _copy(manifest.path, out / manifest_copy_name(manifest.path), own)
    found = recorded(out).get("files")
    before: dict[str, Any] = found if isinstance(found, dict) else {}
    base = out / FILES
    left = _not_copied(manifest)
    for name, sha in manifest.reads.items():
        target = base / name
        if name in left or (before.get(name) == sha and target.is_file()):
            continue
        _copy(folder / name, target, sha)
    for name in (set(before) - manifest.reads.keys()) | set(left):  # no copy of this run's
        if isinstance(name, str) and (base / name).resolve().is_relative_to(base.resolve()):
            (base / name).unlink(missing_ok=True)
    record = {
        "format": RECORD_FORMAT,
        "identity": manifest.sha256,
        "manifest": {"name": manifest.path.name, "sha256": own},
        "files": dict(sorted(manifest.reads.items())),
        "globs": {p: list(m) for p, m in sorted(manifest.globs.items())},
        "not_copied": left,
    }
    dest = out / RECORD
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    tmp.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, dest)
    return left


def _not_copied(manifest: Manifest) -> list[str]:
    """The reference images to keep by sha256 only: all of them when together they pass
    ``REFERENCE_COPY_BYTES`` (a folder of product shots must not be copied whole), else none.
    Prompts files are always copied (at most 32 MiB each: ``manifest/source.py``)."""
    folder = manifest.path.parent
    refs = sorted({read_name(named, folder) for named in manifest.files} & manifest.reads.keys())
    total = 0
    for name in refs:
        with contextlib.suppress(OSError):  # gone since: _copy says so, if it is copied
            total += (folder / name).stat().st_size
        if total > REFERENCE_COPY_BYTES:
            return refs
    return []


def recorded(out_dir: Path) -> dict[str, Any]:
    """The last run's ``.manifest/files.json`` ({} when there is none or it cannot be read)."""
    try:
        found = json.loads((Path(out_dir) / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _copy(src: Path, dest: Path, sha256: str) -> None:
    """Copy ``src`` to ``dest`` (atomically) if its bytes still hash to ``sha256``."""
    try:
        f = src.open("rb")
    except OSError as exc:
        raise _changed(
            src, f"cannot be read again to keep a copy ({exc.strerror or exc})"
        ) from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    try:
        with f, tmp.open("wb") as w:
            while block := f.read(_BLOCK):
                h.update(block)
                w.write(block)
        if h.hexdigest() != sha256:
            now = h.hexdigest()[:12]
            raise _changed(src, f"changed after batchgen read it (sha256 {sha256[:12]}, now {now})")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _changed(src: Path, why: str) -> ManifestError:
    return ManifestError([Problem(str(src), None, None, f"{why}; run the same command again")])
