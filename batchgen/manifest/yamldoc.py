"""The YAML manifest's schema (strict pydantic models) and reading a document past its bad keys.

Shape errors come from pydantic and are given the line of the offending value. A bad top-level
key is reported and left out, so the checks between the parts (`yamlfile`) still run on the
rest and the user sees every problem at once.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from batchgen.manifest.fields import MAX_REPEAT
from batchgen.manifest.local import short
from batchgen.manifest.prompts import did_you_mean
from batchgen.manifest.source import Located, ProblemList, dotted
from batchgen.planning.gptimage import TEXT_TO_IMAGE
from batchgen.planning.jobs import DEFAULT_OUTPUT_TEMPLATE


class PricingDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    table: dict[str, dict[str, float]] = Field(default_factory=dict)  # "1024x1024": {low: ..}
    per_image: float | None = None


class ManifestDoc(BaseModel):
    """The YAML manifest's keys. Request fields inside defaults/matrix/prompts are checked
    against the endpoint's rules separately, because they depend on `model`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str | None = None
    model: str = TEXT_TO_IMAGE
    allow_unknown_model: bool = False  # run a `model` that looks like a typo of a known id
    byok: bool = False
    defaults: dict[str, Any] = Field(default_factory=dict)
    matrix: dict[str, list[Any]] = Field(default_factory=dict)
    repeat: int = Field(default=1, ge=1, le=MAX_REPEAT)
    vars: dict[str, list[Any]] = Field(default_factory=dict)
    prompts: list[Any] = Field(default_factory=list)  # text or a mapping: checked per item
    prompts_file: str | None = None
    output: str = DEFAULT_OUTPUT_TEMPLATE
    pricing: PricingDoc | None = None
    # Run controls (docs/controls.md): fal's queue priority, and whether fal may answer from another
    # endpoint than `model` after repeated failures (off by default: reproducible sets).
    priority: Literal["low", "normal"] | None = None
    allow_fallbacks: bool = False


_DOC_KEYS: dict[tuple[str | int, ...], list[str]] = {
    (): list(ManifestDoc.model_fields),
    ("pricing",): list(PricingDoc.model_fields),
}
_MESSAGES = {
    "string_type": "must be text",
    "int_type": "must be a whole number",
    "bool_type": "must be true or false",
    "float_type": "must be a number",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
}


def pydantic_problems(exc: ValidationError, doc: Located, file: str, out: ProblemList) -> None:
    seen: set[tuple[Any, ...]] = set()
    for err in exc.errors():
        # A union (`prompts` items are text or a mapping) reports each branch: keep one.
        loc = tuple(p for p in err["loc"] if p not in ("str", "dict[str,any]"))
        if loc in seen:
            continue
        seen.add(loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            parent = loc[:-1]
            allowed = _DOC_KEYS.get(parent, [])
            message = f"unknown key{did_you_mean(str(loc[-1]), allowed)}"
            if allowed:
                message += f"; expected one of {', '.join(allowed)}"
        elif kind == "missing":
            message = "is required"
        elif kind in _MESSAGES:
            message = f"{_MESSAGES[kind]}, got {short(err['input'])}"
        else:
            message = err["msg"].replace("Input should be", "must be")
        if loc and loc[0] == "prompts" and kind in {"string_type", "dict_type"}:
            message = f"must be text or a mapping, got {short(err['input'])}"
        out.add(file, doc.line(loc), dotted(loc), message)


def read_doc(
    located: Located, file: str, problems: ProblemList
) -> tuple[ManifestDoc, dict[str, Any]]:
    """The document, read past its bad top-level keys, and the keys it could not read.

    A misspelt or mistyped key is reported and left out, and the rest is checked as usual, so
    one pass lists every problem (a `defualts:` typo no longer hides the prompts' mistakes).
    The keys it could not read (name -> the value found, None for a mistyped one) are the
    broken ones and those a misspelt key probably meant: the checks that depend on them are
    skipped rather than reporting what their absence would add.
    """
    try:
        return ManifestDoc.model_validate(located.data), {}
    except ValidationError as exc:
        pydantic_problems(exc, located, file, problems)
        broken = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
    data: dict[str, Any] = located.data
    known = list(ManifestDoc.model_fields)
    unread: dict[str, Any] = {}
    for key in sorted(broken):
        if key in known:
            unread[key] = None
            continue
        meant = difflib.get_close_matches(key, [k for k in known if k not in data], n=1)
        if meant:
            unread[meant[0]] = data[key]
    rest = {k: v for k, v in data.items() if k not in broken}
    try:  # every top-level key is validated on its own, so what is left validates
        return ManifestDoc.model_validate(rest), unread
    except ValidationError:
        problems.raise_if_any()
        raise
