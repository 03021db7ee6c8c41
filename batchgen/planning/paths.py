"""Where an image goes: the output template, slugged fields, and containment in ``out/images``.

The file name of an image comes from the manifest's output template and the job's own fields,
never from the server (fal's ``file_name`` is ignored): a hostile or buggy server can not pick a
path. Every field is slugged to one safe path segment, the template's literal text may only add
folders, and the final path is resolved and checked to be inside ``out_dir/images`` — so even a
symlinked folder that points elsewhere is refused rather than written through.

Pure except for :func:`image_path`'s ``resolve()`` (which reads symlinks, never writes).
"""

from __future__ import annotations

import hashlib
import re
import string
import unicodedata
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from batchgen.errors import UsageError
from batchgen.planning.jobs import JobSpec

IMAGES_DIR = "images"

# One path segment may hold letters and digits of any script, '.', '_' and '-'; anything else
# (slashes, control characters, spaces, quotes, ':' for Windows drives) becomes '-'.
_UNSAFE = re.compile(r"[^\w.\-]+", re.UNICODE)
# A run of dots and dashes with a dash in it ("-..-" from "/../") reads as one separator.
_DASHES = re.compile(r"[.\-]*-[.\-]*")
# Names Windows refuses for any file, whatever the extension; a dataset folder gets copied there.
_RESERVED = frozenset(
    {"con", "prn", "aux", "nul"}
    | {f"com{i}" for i in range(1, 10)}
    | {f"lpt{i}" for i in range(1, 10)}
)
MAX_SEGMENT = 80  # bytes-ish; leaves room under the usual 255-byte name limit for the rest

EXTENSIONS: Mapping[str, str] = {"png": "png", "jpeg": "jpg", "jpg": "jpg", "webp": "webp"}


class TemplateError(UsageError):
    """An output template that is malformed or would place a file outside ``out/images``."""


def slug(value: object) -> str:
    """``value`` as one safe, non-empty path segment (never ``.``, ``..`` or a reserved name)."""
    text = unicodedata.normalize("NFKC", str(value))
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")  # control chars
    text = _DASHES.sub("-", _UNSAFE.sub("-", text))
    # Leading dots would hide the file (and '..' would climb); trailing dots and dashes are
    # stripped by Windows and would make two names collide there.
    text = text.strip(".-")
    if not text:
        return "_"
    if text.split(".")[0].lower() in _RESERVED:
        text = "_" + text
    if len(text) > MAX_SEGMENT:
        # Truncating alone could make two long values collide: keep a hash of the whole value.
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        text = f"{text[: MAX_SEGMENT - 9].rstrip('.-')}-{digest}"
    return text


def template_fields(spec: JobSpec, n: int, output_format: str | None = None) -> dict[str, Any]:
    """The fields an output template may name for image ``n`` of ``spec``.

    ``{prompt_id}``, ``{job_id}``, ``{job_id16}``, ``{n}``, ``{ext}``, ``{variant}``,
    ``{quality}``, ``{size}``, the prompt's vars by name, and tags as ``{tag_<name>}``.
    ``ext`` comes from the requested output format, never from what a server says.
    """
    fmt = output_format or str(spec.input.get("output_format", "png"))
    tags = spec.tags
    # A tag given by name alone (`tags: [nature]`) fills {tag_nature} with its name.
    pairs = [(t, t) for t in tags] if isinstance(tags, list) else list(tags.items())
    fields: dict[str, Any] = {f"tag_{k}": v for k, v in pairs}
    fields.update(spec.vars)
    fields.update(
        prompt_id=spec.prompt_id or "prompt",
        job_id=spec.job_id,
        job_id16=spec.short_id,
        n=n,
        ext=EXTENSIONS.get(fmt.lower(), "img"),
        variant=spec.variant,
        quality=spec.input.get("quality", ""),
        size=size_label(spec.input.get("image_size")),
    )
    return fields


def size_label(image_size: object) -> str:
    """A requested size as text: a preset name, ``WxH`` for a custom size, ``""`` if unset."""
    if isinstance(image_size, Mapping):
        return f"{image_size.get('width')}x{image_size.get('height')}"
    return "" if image_size is None else str(image_size)


def render_template(template: str, fields: Mapping[str, object]) -> PurePosixPath:
    """The template filled with slugged fields, as a relative path below ``images/``.

    Only plain ``{name}`` fields are allowed: attribute and index lookups (``{x.__class__}``)
    and format specs could read or reshape values, so they are refused outright.
    """
    parts: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TemplateError(f"output template {template!r}: {exc}") from None
    for literal, name, spec, conversion in parsed:
        parts.append(literal)
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise TemplateError(
                f"output template {template!r}: only plain {{name}} fields are allowed, "
                f"got {{{name}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}}"
            )
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise TemplateError(f"output template {template!r}: unknown field {name!r} ({known})")
        parts.append(slug(fields[name]))
    text = "".join(parts)
    if "\\" in text or "\x00" in text:
        raise TemplateError(f"output template {template!r}: backslashes are not allowed")
    rel = PurePosixPath(text)
    if rel.is_absolute() or not rel.parts:
        raise TemplateError(f"output template {template!r}: must be a relative file name")
    for seg in rel.parts:
        # Literal text in the template is the user's, but it may still not climb or hide.
        if seg in (".", "..") or seg.startswith(".") or seg.split(".")[0].lower() in _RESERVED:
            raise TemplateError(f"output template {template!r}: bad path segment {seg!r}")
    return rel


def image_path(out_dir: Path, template: str, fields: Mapping[str, object]) -> Path:
    """The absolute path of one image: the rendered template below ``out_dir/images``.

    Raises :class:`TemplateError` when the result would land anywhere else, including through
    a symlink inside the output folder.
    """
    root = (out_dir / IMAGES_DIR).resolve()
    path = (root / render_template(template, fields)).resolve()
    if not path.is_relative_to(root) or path == root:
        raise TemplateError(f"output template {template!r} escapes {root}")
    return path


def relative_name(out_dir: Path, path: Path) -> str:
    """``path`` relative to the output folder, with '/' separators (an index ``file_name``)."""
    return path.resolve().relative_to(out_dir.resolve()).as_posix()
