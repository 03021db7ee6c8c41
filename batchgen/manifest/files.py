"""Local reference files a manifest names (`image_urls`, `mask_url`): checked, hashed and
globbed once, at plan time.

A local path is relative to the manifest's folder and must stay inside it. Each file is read
once per load, however many jobs name it: its size is capped before it is read, Pillow checks
that it is an image the model takes, and its sha256 becomes part of every job id that uses it
(an edited reference is a new job; the same bytes under another name are the same job). A
pattern (`products/*.png`, `**` recurses) is expanded here, sorted, so job ids and their
order never depend on the file system's listing order; expansion into jobs stays lazy
(`model`).
"""

from __future__ import annotations

import glob
import hashlib
import io
import itertools
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from PIL import Image

from batchgen.manifest.local import (
    is_glob,
    is_local_path,
    local_path_problem,
    scheme_problem,
    short,
)
from batchgen.planning.disk import over_limit_text

# OpenAI's image edit API takes reference images below 50 MB each, and fal documents no limit
# of its own (docs/fal.md, Storage and uploads): a larger file would be uploaded only to be
# refused.
MAX_REFERENCE_BYTES = 50 * 1024 * 1024
# What gpt-image edits accept (and what Pillow, the emulator and the gallery all read).
FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
# One pattern making more jobs than this is a typo (`**/*`), not a data set.
MAX_GLOB_MATCHES = 100_000


@dataclass(frozen=True, slots=True)
class LocalFile:
    """A checked reference file: its path as the manifest names it, and what it holds."""

    path: str
    sha256: str
    bytes: int
    content_type: str
    width: int
    height: int


def inspect_reference(data: bytes) -> tuple[str, int, int]:
    """(content type, width, height) of an image the model takes; ValueError says why not."""
    with warnings.catch_warnings():
        # A decompression bomb is "not an image we take", not a warning to print.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as img:
                fmt, size = img.format, img.size
                img.verify()  # checks the structure (and PNG checksums) without decoding
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ValueError("has too many pixels to be a reference image") from None
        except Exception:  # Pillow raises many kinds for a file that is not an image
            raise ValueError("is not an image (PNG, JPEG or WebP)") from None
    if fmt not in FORMATS:
        raise ValueError(f"is a {fmt} image; gpt-image-2 takes PNG, JPEG or WebP")
    return FORMATS[fmt], size[0], size[1]


def read_reference(path: Path, max_bytes: int = MAX_REFERENCE_BYTES) -> tuple[bytes, str]:
    """The file's bytes and content type, after the size cap and the image check."""
    size = path.stat().st_size
    if size > max_bytes:
        shown, most = over_limit_text(size, max_bytes)
        raise ValueError(f"is {shown}; a reference image may be at most {most}")
    data = path.read_bytes()
    content_type, _, _ = inspect_reference(data)
    return data, content_type


@dataclass
class LocalFiles:
    """Every local file and pattern of one manifest, each checked once."""

    folder: Path
    max_bytes: int = MAX_REFERENCE_BYTES
    files: dict[str, LocalFile] = field(default_factory=dict)  # path as named -> file
    globs: dict[str, tuple[str, ...]] = field(default_factory=dict)  # pattern -> paths, sorted
    # Every file read besides the manifest (references, matches, a prompts file): its path
    # relative to the manifest's folder, normalised (`read_name`) -> sha256. The manifest's
    # identity covers them (`identity.py`); the output folder keeps a copy of each.
    reads: dict[str, str] = field(default_factory=dict)
    _seen: dict[str, list[str]] = field(default_factory=dict)  # value -> its problems

    def check(self, value: str) -> list[str]:
        """Problems with a URL, data URI, local path or pattern (empty: usable)."""
        if not is_local_path(value):
            return []
        if value not in self._seen:
            self._seen[value] = self._glob(value) if is_glob(value) else self._file(value)
        return self._seen[value]

    def _file(self, rel: str) -> list[str]:
        why = local_path_problem(rel, self.folder)
        if why:
            return [why]
        try:
            data, _ = read_reference(self.folder / rel, self.max_bytes)
        except ValueError as exc:
            return [f"{short(rel)} {exc}"]
        except OSError as exc:
            return [f"cannot read {short(rel)}: {exc.strerror or exc}"]
        content_type, width, height = inspect_reference(data)
        digest = self.read(rel, data)
        self.files[rel] = LocalFile(rel, digest, len(data), content_type, width, height)
        return []

    def read(self, rel: str, data: bytes) -> str:
        """Record that the manifest read ``data`` from ``rel``; returns its sha256."""
        digest = hashlib.sha256(data).hexdigest()
        self.reads[read_name(rel, self.folder)] = digest
        return digest

    def _glob(self, pattern: str) -> list[str]:
        why = scheme_problem(pattern)
        if why:
            return [why]
        if os.path.isabs(pattern) or ".." in PurePath(pattern).parts:
            return [f"{short(pattern)}: a pattern must stay inside the manifest's folder"]
        matches = sorted(
            PurePath(m).as_posix()
            for m in glob.iglob(pattern, root_dir=self.folder, recursive=True)
            if (self.folder / m).is_file()
        )
        if not matches:
            return [f"{short(pattern)} matches no file (patterns are relative to the manifest)"]
        if len(matches) > MAX_GLOB_MATCHES:
            return [
                f"{short(pattern)} matches {len(matches):,} files; at most "
                f"{MAX_GLOB_MATCHES:,} per pattern"
            ]
        problems: list[str] = []
        for m in matches:  # a match is a file, even when its name looks like a pattern
            if m not in self._seen:
                self._seen[m] = self._file(m)
            problems += self._seen[m]
        if not problems:
            self.globs[pattern] = tuple(matches)
        return problems

    def sha256s(self) -> dict[str, str]:
        return {path: f.sha256 for path, f in self.files.items()}


def read_name(rel: str, folder: Path) -> str:
    """``rel`` (a path the manifest names, checked to stay inside its folder) as one name:
    ``./refs/../refs/a.png`` and ``refs/a.png`` are ``refs/a.png``. Symbolic links are kept as
    named, so a copy laid out by these names next to the manifest reads the same; a name that
    only a link brings back inside the folder is named by its target instead."""
    name = PurePath(os.path.normpath(rel)).as_posix()
    if name.startswith("../") or name == ".." or os.path.isabs(name):
        base = folder.resolve()
        name = (base / rel).resolve().relative_to(base).as_posix()
    return name


# ---- expansion helpers (pure: they use what `LocalFiles` found) ---------------------------


def references(value: Any) -> list[str]:
    """The strings of an image_urls (list) or mask_url (text) value."""
    items = value if isinstance(value, list) else [value]
    return [v for v in items if isinstance(v, str)]


def expand_globs(value: Any, globs: dict[str, tuple[str, ...]]) -> Iterator[Any]:
    """Each concrete image_urls list: every pattern replaced by one of its files, in order.
    Several patterns in one list multiply (each combination is one job)."""
    if not isinstance(value, list) or not any(isinstance(v, str) and v in globs for v in value):
        yield value
        return
    choices = [globs[v] if isinstance(v, str) and v in globs else (v,) for v in value]
    for combo in itertools.product(*choices):
        yield list(combo)


def travel_text(*, inline: bool = False, storage: str = "fal storage") -> str:
    """How local files reach the server, as the notice says it: the plan's words (uploaded
    to fal storage), or a run's, which knows where its requests go and --inline-uploads."""
    if inline:
        return (
            "will be sent inside every request that names them, as data URIs"
            " (--inline-uploads): nothing is uploaded or stored"
        )
    return (
        f"will be uploaded to {storage} once each, before the first job that needs them"
        " (--inline-uploads sends them as data URIs instead)"
    )


def files_notice(files: LocalFiles) -> str | None:
    """The plan's word on local files: which, how they travel, what each pattern matched."""
    if not files.files:
        return None
    names = sorted(files.files)
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    text = f"{len(names)} local file{'s' if len(names) != 1 else ''} ({shown}) {travel_text()}"
    for pattern, matches in sorted(files.globs.items()):
        text += f"; {pattern} matches {len(matches)} file{'s' if len(matches) != 1 else ''}"
    return text
