"""Export for training: each image beside a ``.txt`` of the same stem holding its prompt.

``batchgen export OUT --format captions --dest DIR`` writes, flat in ``DIR``::

    <job id>_<n>.<ext>   the image: a hard link to the folder's file where the filesystem
                         allows (no bytes copied), a copy otherwise
    <job id>_<n>.txt     its prompt, UTF-8, exactly as sent (no trailing newline)
    metadata.jsonl       {"file_name": "<job id>_<n>.<ext>", "text": <prompt>} a line

That is what kohya-ss's sd-scripts read (an image and its caption file of the same stem, the
caption extension set to ``.txt``; a DreamBooth-style ``N_name`` folder is just a ``--dest``)
and what Hugging Face ImageFolder, so diffusers' text-to-image scripts, read
(``metadata.jsonl`` with a ``text`` column). The stem is the webdataset key, ``job id`` +
image index, unique by construction: two images of the same file name in different prompt
folders (an output template without the job id) never collide, and no folder structure is
needed.

Nothing is written outside ``DIR``: names come from the checked key and extension only, and
source files must lie inside ``OUT/images``. ``DIR`` must be named, and a ``DIR`` inside
``OUT`` is refused: its images and ``metadata.jsonl`` would change the folder's own dataset
(ImageFolder reads ``OUT`` recursively) or overwrite its index. Each file is written to a
``.part`` and renamed into place; files of an earlier export into ``DIR`` (listed in its
``metadata.jsonl``) that this one leaves out (since rejected, or stale) are removed, so a
trainer globbing ``DIR`` never reads them. Files are checked by size against the index, not
re-hashed (a link shares the bytes it would hash).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from batchgen.errors import UsageError
from batchgen.outputs.exportkit import ExportResult, atomic_write, sample_key
from batchgen.outputs.index import METADATA

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_EXT = re.compile(r"[a-z0-9]{1,8}")


def check_dest(out_dir: Path, dest: Path | None) -> Path:
    """``dest`` resolved, or UsageError when there is none or it lies inside the folder."""
    if dest is None:
        raise UsageError("--format captions needs --dest DIR (a folder outside the output folder)")
    where, out = dest.resolve(), out_dir.resolve()
    if where.is_relative_to(out):
        raise UsageError(
            f"--dest {dest} is inside {out_dir}: name a folder outside it (the output folder"
            " loads as an ImageFolder dataset, which would count each image twice)"
        )
    if where.exists() and not where.is_dir():
        raise UsageError(f"--dest {dest} is a file: captions are written into a folder")
    return where


def _write(tmp: Path, *, text: str) -> int:
    return tmp.write_text(text, encoding="utf-8")


def _place(src: Path, dst: Path) -> bool:
    """``dst`` becomes ``src``'s bytes: a hard link when possible (True), else a copy."""
    try:
        if dst.stat().st_ino == src.stat().st_ino and dst.stat().st_dev == src.stat().st_dev:
            return True  # linked by an earlier export already
    except FileNotFoundError:
        pass
    tmp = dst.with_name(dst.name + ".part")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
            linked = True
        except OSError:  # another filesystem (EXDEV), or one without hard links
            shutil.copyfile(src, tmp)
            linked = False
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return linked


def _sample(images: Path, out_dir: Path, row: Mapping[str, Any]) -> tuple[Path, str, str] | None:
    """The row's source file, key and extension; None when it cannot be exported safely."""
    try:
        key = sample_key(row)
    except (KeyError, TypeError, ValueError):
        return None
    src = (out_dir / str(row.get("file_name"))).resolve()
    ext = src.suffix.lstrip(".").lower()
    if not (_KEY.fullmatch(key) and _EXT.fullmatch(ext)):
        return None
    # The index is data: a row naming a file outside images/ is never linked or copied.
    if not src.is_relative_to(images) or not src.is_file():
        return None
    size = row.get("bytes")
    if isinstance(size, int) and src.stat().st_size != size:
        return None
    return src, key, ext


def _earlier(dest: Path) -> set[str]:
    """The files an earlier captions export into ``dest`` wrote (its metadata.jsonl)."""
    names: set[str] = set()
    try:
        with (dest / METADATA).open(encoding="utf-8") as f:
            for line in f:
                try:
                    name = json.loads(line).get("file_name")
                except (ValueError, AttributeError):
                    continue
                stem, _, ext = str(name).rpartition(".")
                if _KEY.fullmatch(stem) and _EXT.fullmatch(ext):
                    names.update((f"{stem}.{ext}", f"{stem}.txt"))
    except FileNotFoundError:
        pass
    return names


def export_captions(
    out_dir: Path, rows: Iterable[Mapping[str, Any]], dest: Path | None
) -> ExportResult:
    """Each row's image and a ``.txt`` of its prompt, flat in ``dest`` (module doc)."""
    target = check_dest(Path(out_dir), dest)
    images = (Path(out_dir) / "images").resolve()
    target.mkdir(parents=True, exist_ok=True)
    before = _earlier(target)
    result = ExportResult(paths=[target])
    written: set[str] = set()

    def write(tmp: Path) -> int:
        n = 0
        with tmp.open("w", encoding="utf-8") as index:
            for row in rows:
                sample = _sample(images, Path(out_dir), row)
                if sample is None:
                    result.skip(str(row.get("file_name")))
                    continue
                src, key, ext = sample
                name = f"{key}.{ext}"
                if name in written:  # the same image twice in the index: once is enough
                    continue
                prompt = row.get("prompt")
                text = prompt if isinstance(prompt, str) else ""
                if _place(src, target / name):
                    result.linked += 1
                else:
                    result.copied += 1
                atomic_write(target / f"{key}.txt", functools.partial(_write, text=text))
                written.update((name, f"{key}.txt"))
                line = {"file_name": name, "text": text}
                index.write(json.dumps(line, ensure_ascii=False) + "\n")
                n += 1
        return n

    result.rows = atomic_write(target / METADATA, write)
    for old in sorted(before - written):
        (target / old).unlink(missing_ok=True)
    return result
