"""Turning one prompt record (a YAML item, a CSV row, a JSONL line) into a `PromptEntry`.

All three sources go through `build_prompt`, so a prompt is checked by the same rules
wherever it was written; only where the problem is reported (line, field name) differs.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchgen.manifest.fields import MAX_PROMPT_CHARS, MAX_REPEAT, normalised, value_problems
from batchgen.manifest.files import LocalFiles
from batchgen.manifest.local import short
from batchgen.manifest.model import PromptEntry
from batchgen.manifest.source import ProblemList
from batchgen.manifest.templates import TemplateError, parse, prompt_slug
from batchgen.planning.gptimage import EDIT, FIELDS, KNOWN_ENDPOINTS

RESERVED = ("id", "prompt", "tags", "repeat")


def did_you_mean(name: str, candidates: Any) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def typo_endpoint(endpoint: str, meant: str, insist: str) -> str:
    """The message for an endpoint id that looks like a typo of the known id `meant`;
    `insist` says how to run it anyway, in the words of the file it came from."""
    return (
        f"{endpoint!r} is not an endpoint batchgen knows (did you mean {meant!r}?); "
        f"if the id is right, {insist}"
    )


@dataclass
class PromptContext:
    """What every prompt of one manifest is checked against, and what they found together."""

    folder: Path
    endpoint: str
    problems: ProblemList
    axes: frozenset[str] = frozenset()
    vars: Mapping[str, list[str]] = field(default_factory=dict)
    templated: bool = True
    supplied: frozenset[str] = frozenset()  # fields set by defaults or the matrix
    vars_known: bool = True  # False when `vars` was unreadable: no placeholder is "missing"
    used_vars: set[str] = field(default_factory=set)
    ids: dict[str, str] = field(default_factory=dict)  # prompt id -> where it was first used
    files: LocalFiles = field(init=False)  # local reference files, checked once each

    def __post_init__(self) -> None:
        self.files = LocalFiles(self.folder)


def build_prompt(
    raw: Mapping[str, Any],
    *,
    file: str,
    line: int | None,
    line_of: Callable[[str], int | None],
    prefix: str,
    ctx: PromptContext,
    endpoint: str | None = None,
) -> PromptEntry | None:
    """The prompt, or None after adding its problems to `ctx.problems`."""
    before = len(ctx.problems.items)
    ep = endpoint or ctx.endpoint

    def where(key: str) -> str:
        return f"{prefix}.{key}" if prefix else key

    def add(key: str, message: str) -> None:
        ctx.problems.add(
            file, line_of(key.split(".")[0].split("[")[0]) or line, where(key), message
        )

    text = _prompt_text(raw, ctx, add)
    tags = _tags(raw.get("tags"), add)
    repeat = raw.get("repeat")
    if repeat is not None and (
        isinstance(repeat, bool) or not isinstance(repeat, int) or not 1 <= repeat <= MAX_REPEAT
    ):
        add("repeat", f"must be a whole number from 1 to {MAX_REPEAT:,}, got {short(repeat)}")
    fields: dict[str, Any] = {}
    axes: dict[str, list[Any]] = {}
    for key, value in raw.items():
        if key in RESERVED:
            continue
        if key == "model":
            add(key, "set the model once at the top of the manifest")
            continue
        if ep in KNOWN_ENDPOINTS and key not in _known_fields(ep):
            hint = did_you_mean(key, [*RESERVED, *_known_fields(ep)])
            add(key, f"unknown field for {ep}{hint}")
            continue
        if _is_multi(key, value, ep, ctx):
            if not value:
                add(key, "lists no values")
            axes[key] = [normalised(ep, key, v) for v in value]
            items = [(f"{key}[{i}]", v) for i, v in enumerate(axes[key])]
        elif key in ctx.axes:  # one value for an axis: this prompt fixes it
            axes[key] = [normalised(ep, key, value)]
            items = [(key, axes[key][0])]
        else:
            fields[key] = normalised(ep, key, value)
            items = [(key, fields[key])]
        for path, v in items:
            for fpath, message in value_problems(ep, key, v, ctx.files):
                add(path + fpath[len(key) :], message)
    if ep == EDIT and "image_urls" not in raw and "image_urls" not in ctx.supplied:
        add("image_urls", f"is required for {EDIT} (on the prompt, in defaults or in the matrix)")
    pid = _prompt_id(raw.get("id"), text, file, line, ctx, add)
    if len(ctx.problems.items) > before or text is None or pid is None:
        return None
    return PromptEntry(
        id=pid,
        text=text,
        templated=ctx.templated,
        fields=fields,
        axes=axes,
        tags=tags,
        repeat=repeat,
        endpoint=endpoint,
        source=f"{file}:{line}" if line else file,
    )


def _known_fields(endpoint: str) -> frozenset[str]:
    return FIELDS[endpoint] - {"prompt"}


def _is_multi(key: str, value: Any, endpoint: str, ctx: PromptContext) -> bool:
    """A list on a prompt gives that prompt its own axis, except where the field itself is a
    list (image_urls: a list of strings is one value; a list of lists is several)."""
    if not isinstance(value, list):
        return False
    if key == "image_urls":
        return bool(value) and all(isinstance(v, list) for v in value)
    return key in ctx.axes or endpoint in KNOWN_ENDPOINTS


def _prompt_text(
    raw: Mapping[str, Any], ctx: PromptContext, add: Callable[[str, str], None]
) -> str | None:
    if "prompt" not in raw:
        add("prompt", "is required")
        return None
    text = raw["prompt"]
    if not isinstance(text, str):
        add("prompt", f"must be text, got {short(text)}")
        return None
    if not text.strip():
        add("prompt", "is empty")
        return None
    if len(text) > MAX_PROMPT_CHARS:
        add("prompt", f"is {len(text):,} characters; a prompt may be at most {MAX_PROMPT_CHARS:,}")
        return None
    if not ctx.templated:
        return text
    try:
        tpl = parse(text)
    except TemplateError as exc:
        add("prompt", str(exc))
        # Do not also call the vars it meant to use "unused": one mistake, one message.
        ctx.used_vars.update(v for v in ctx.vars if "{" + v in text)
        return None
    longest = tpl.literal_length
    for name in tpl.fields:
        if name not in ctx.vars:
            if ctx.vars_known:
                hint = did_you_mean(name, ctx.vars)
                add("prompt", f"uses {{{name}}}, which is not in vars{hint}")
            return None
        longest += max(len(v) for v in ctx.vars[name])
    ctx.used_vars.update(tpl.names)
    if longest > MAX_PROMPT_CHARS:
        add(
            "prompt",
            f"can expand to {longest:,} characters; a prompt may be at most {MAX_PROMPT_CHARS:,}",
        )
        return None
    return text


def _tags(value: Any, add: Callable[[str, str], None]) -> dict[str, str] | list[str]:
    """Tags as given: a list of names, or a mapping of name: value (see `unify_tags`)."""
    if value is None:
        return {}
    scalar = (str, int, float)
    if isinstance(value, list) and all(isinstance(t, scalar) and str(t) for t in value):
        return list(dict.fromkeys(str(t) for t in value))
    if isinstance(value, dict) and all(isinstance(v, scalar) for v in value.values()):
        return {str(k): str(v) for k, v in value.items()}
    add("tags", "must be a list of names or a mapping of name: value")
    return {}


def _prompt_id(
    value: Any,
    text: str | None,
    file: str,
    line: int | None,
    ctx: PromptContext,
    add: Callable[[str, str], None],
) -> str | None:
    here = f"{file}:{line}" if line else file
    if value is None:
        base = prompt_slug(text or "")
        pid, n = base, 1
        while pid in ctx.ids:  # two prompts that start alike: number the later ones
            n += 1
            pid = f"{base}-{n}"
        ctx.ids[pid] = here
        return pid
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        add("id", f"must be non-empty text, got {short(value)}")
        return None
    pid = str(value).strip()
    if pid in ctx.ids:
        add("id", f"{pid!r} is already the id of the prompt at {ctx.ids[pid]}")
        return None
    ctx.ids[pid] = here
    return pid


def unify_tags(prompts: list[PromptEntry]) -> tuple[list[PromptEntry], str | None]:
    """Every prompt's tags in one form, and a notice when forms had to be mixed.

    A dataset column has one type: the index keeps tags as lists of names unless some prompt
    gives a mapping (a YAML mapping, CSV tag columns); then names become name: "" mappings.
    """
    mixed = any(isinstance(p.tags, dict) and p.tags for p in prompts)
    out = []
    for p in prompts:
        if mixed and isinstance(p.tags, list):
            out.append(p.model_copy(update={"tags": dict.fromkeys(p.tags, "")}))
        elif not mixed and isinstance(p.tags, dict):  # no tags at all: an empty list
            out.append(p.model_copy(update={"tags": []}))
        else:
            out.append(p)
    if mixed and any(isinstance(p.tags, list) and p.tags for p in prompts):
        return out, (
            "tags: some prompts list names and some give a mapping; the index stores them all "
            'as mappings (a name maps to "") so that they load as one column'
        )
    return out, None
