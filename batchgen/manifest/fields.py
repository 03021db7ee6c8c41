"""Checking one request-field value, wherever a manifest sets it (defaults, an axis, a prompt,
a CSV cell), and turning CSV cells into typed values.

Validation is per value, not per expanded job: the model's rules are per field, so checking
each value once (with `gptimage.validate_input` on a minimal request) finds every problem a
job could have while staying linear in the size of the file, not of the matrix.
"""

from __future__ import annotations

from typing import Any

from batchgen.manifest.files import LocalFiles
from batchgen.manifest.local import is_glob, short
from batchgen.planning.gptimage import (
    AUTO,
    EDIT,
    KNOWN_ENDPOINTS,
    PRESETS,
    parse_size_text,
    validate_input,
)
from batchgen.planning.jobs import FILE_FIELDS, SECRET_FIELDS, canonical_json

MAX_PROMPT_CHARS = 32_000
MAX_REPEAT = 10_000
SECRET_MESSAGE = (
    "never put an API key in a manifest; batchgen reads OPENAI_API_KEY from the environment "
    "when it submits"
)


def _minimal_request(endpoint: str) -> dict[str, Any]:
    """A request that passes every rule, to check one field by substituting it."""
    req: dict[str, Any] = {"prompt": "x"}
    if endpoint == EDIT:
        req["image_urls"] = ["https://example.invalid/x.png"]
    return req


def normalised(endpoint: str, name: str, value: Any) -> Any:
    """The value as the request carries it: a known endpoint's ``image_size`` written as
    ``WIDTHxHEIGHT`` text becomes ``{width, height}``, so both spellings make the same job
    (and job id). Other endpoints get what was written: their fields are not ours to read."""
    if name == "image_size" and endpoint in KNOWN_ENDPOINTS and isinstance(value, str):
        return parse_size_text(value) or value
    return value


def value_problems(
    endpoint: str, name: str, value: Any, files: LocalFiles
) -> list[tuple[str, str]]:
    """(field path, message) for every rule `value` breaks as the request field `name`; local
    files are checked (and hashed, once each) by `files`."""
    if name in SECRET_FIELDS:
        return [(name, SECRET_MESSAGE)]  # never echo the value: it is a secret
    try:
        canonical_json(value)
    except (TypeError, ValueError):
        return [
            (
                name,
                f"must be plain JSON data (text, numbers, true/false, lists, mappings), "
                f"got {short(value)}",
            )
        ]
    out: list[tuple[str, str]] = []
    if endpoint in KNOWN_ENDPOINTS:
        request = {**_minimal_request(endpoint), name: value}
        for p in validate_input(endpoint, request, size_text=True):
            if p.field == name or p.field.startswith(name + "."):
                out.append((p.field, p.message))
    if name in FILE_FIELDS and not out:
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, str):
                where = f"{name}[{i}]" if isinstance(value, list) else name
                if name == "mask_url" and is_glob(item):
                    out.append((where, f"{short(item)}: patterns are allowed in image_urls only"))
                    continue
                out.extend((where, problem) for problem in files.check(item))
    return out


class CellError(ValueError):
    pass


def parse_cell(name: str, text: str) -> Any:
    """A CSV cell as the typed value of request field (or `repeat`) `name`."""
    text = text.strip()
    if name == "image_size":
        size = parse_size_text(text)
        if size is not None:
            return size
        if text in PRESETS or text == AUTO:
            return text
        raise CellError(
            f"must be a preset ({', '.join(PRESETS)}, or auto for edits) or WIDTHxHEIGHT, "
            f"got {short(text)}"
        )
    if name in {"num_images", "repeat"}:
        try:
            return int(text)
        except ValueError:
            raise CellError(f"must be a whole number, got {short(text)}") from None
    if name == "image_urls":
        return [u.strip() for u in text.split("|") if u.strip()]
    if name in {"sync_mode", "allow_unknown_model"}:
        low = text.lower()
        if low in {"true", "yes", "1"}:
            return True
        if low in {"false", "no", "0"}:
            return False
        raise CellError(f"must be true or false, got {short(text)}")
    return text
