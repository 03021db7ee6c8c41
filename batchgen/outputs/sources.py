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
thousand references costs a stat each on a resume.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from batchgen.errors import ManifestError, Problem
from batchgen.manifest import Manifest

SOURCES = ".manifest"
FILES = f"{SOURCES}/files"
RECORD = f"{SOURCES}/files.json"
RECORD_FORMAT = 1
_BLOCK = 1 << 20


def manifest_copy_name(manifest: Path) -> str:
    """``manifest.yaml`` (or ``.yml``, ``.csv``, ``.jsonl``: the manifest's own suffix)."""
    return f"manifest{manifest.suffix.lower() or '.yaml'}"


def write_sources(out_dir: Path, manifest: Manifest) -> None:
    """Copy the manifest and every file it read into ``out_dir`` (see the module's doc)."""
    out = Path(out_dir)
    folder = manifest.path.parent
    own = manifest.file_sha256 or manifest.sha256
    _copy(manifest.path, out / manifest_copy_name(manifest.path), own)
    before = recorded(out).get("files", {})
    base = out / FILES
    for name, sha in manifest.reads.items():
        target = base / name
        if before.get(name) == sha and target.is_file():
            continue
        _copy(folder / name, target, sha)
    for name in set(before) - manifest.reads.keys():  # read by an earlier run only
        if isinstance(name, str) and (base / name).resolve().is_relative_to(base.resolve()):
            (base / name).unlink(missing_ok=True)
    record = {
        "format": RECORD_FORMAT,
        "identity": manifest.sha256,
        "manifest": {"name": manifest.path.name, "sha256": own},
        "files": dict(sorted(manifest.reads.items())),
        "globs": {p: list(m) for p, m in sorted(manifest.globs.items())},
    }
    dest = out / RECORD
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    tmp.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, dest)


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
