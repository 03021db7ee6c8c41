"""CSV and JSONL: whole manifests, or a YAML manifest's `prompts_file`.

CSV: a header row with a `prompt` column; request-field columns (`image_size`, `quality`,
`num_images`, `output_format`, `image_urls` split on `|`, `mask_url`, `sync_mode`), `id`,
`repeat`, and in a stand-alone CSV `model` and `allow_unknown_model`; every other column is a
tag. JSONL as a manifest: one complete request per line, `{"id", "endpoint", "input", "tags"}`
(and `allow_unknown_model`). JSONL as a prompts file: one prompt object per line, with the
same keys as a YAML prompt.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from typing import Any

from batchgen.errors import Problem
from batchgen.manifest.fields import MAX_PROMPT_CHARS, CellError, normalised, parse_cell
from batchgen.manifest.local import is_glob, short
from batchgen.manifest.model import PromptEntry
from batchgen.manifest.prompts import PromptContext, build_prompt, did_you_mean, typo_endpoint
from batchgen.planning.gptimage import (
    EDIT,
    KNOWN_ENDPOINTS,
    TEXT_TO_IMAGE,
    resembles_known,
    validate_input,
)
from batchgen.planning.jobs import FILE_FIELDS, SECRET_FIELDS

REQUEST_COLUMNS = frozenset(
    {"image_size", "quality", "num_images", "output_format", "image_urls", "mask_url", "sync_mode"}
)
JSONL_KEYS = ("id", "endpoint", "allow_unknown_model", "input", "tags")
ALLOW_COLUMN = "allow_unknown_model"  # stand-alone CSV: run a near-miss `model` as written


def csv_rows(text: str, file: str, ctx: PromptContext) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, {column: cell}) for every data row; shape problems go to ctx.problems."""
    reader = csv.reader(io.StringIO(text, newline=""))
    add = ctx.problems.add
    try:
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            add(file, 1, None, "the file is empty; it needs a header row with a prompt column")
            return
        header = [h.strip() for h in header]
        seen: set[str] = set()
        for i, name in enumerate(header):
            if not name:
                add(file, 1, None, f"column {i + 1} of the header has no name")
            elif name in seen:
                add(file, 1, name, "this column appears twice in the header")
            seen.add(name)
        if "prompt" not in header:
            add(file, 1, None, f"no 'prompt' column; the header has: {', '.join(header)}")
            return
        start = reader.line_num + 1
        for row in reader:
            line, start = start, reader.line_num + 1  # a quoted cell may span lines
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                add(file, line, None, f"the row has {len(row)} cells; the header has {len(header)}")
                continue
            yield line, dict(zip(header, row, strict=True))
    except csv.Error as exc:
        add(file, reader.line_num, None, f"CSV syntax: {exc}")


def csv_prompts(text: str, file: str, ctx: PromptContext, *, standalone: bool) -> list[PromptEntry]:
    out: list[PromptEntry] = []
    fields = REQUEST_COLUMNS | ctx.axes
    for line, row in csv_rows(text, file, ctx):
        raw: dict[str, Any] = {"prompt": row["prompt"]}
        tags: dict[str, str] = {}
        endpoint: str | None = None
        bad = False
        for name, cell in row.items():
            if name == "prompt" or not cell.strip():
                continue
            if name == "id":
                raw["id"] = cell.strip()
            elif name == "model" and standalone:
                endpoint = cell.strip()
            elif name in fields or name == "repeat" or (name == ALLOW_COLUMN and standalone):
                try:
                    raw[name] = parse_cell(name, cell)
                except CellError as exc:
                    ctx.problems.add(file, line, name, str(exc))
                    bad = True
            else:
                tags[name] = cell
        if standalone and endpoint is None:
            endpoint = EDIT if raw.get("image_urls") else TEXT_TO_IMAGE
        meant = None if raw.pop(ALLOW_COLUMN, False) else resembles_known(endpoint or "")
        if meant is not None:
            insist = f"add a column {ALLOW_COLUMN} set to true"
            ctx.problems.add(file, line, "model", typo_endpoint(str(endpoint), meant, insist))
            endpoint, bad = meant, True  # check the row's fields as the endpoint it resembles
        if tags:
            raw["tags"] = tags
        entry = build_prompt(
            raw, file=file, line=line, line_of=_fixed(line), prefix="", ctx=ctx, endpoint=endpoint
        )
        if entry is not None and not bad:
            out.append(entry)
    return out


def _fixed(line: int) -> Callable[[str], int | None]:
    """A CSV row or JSONL line has one line for all its fields."""
    return lambda _key: line


def jsonl_lines(text: str, file: str, ctx: PromptContext) -> Iterator[tuple[int, dict[str, Any]]]:
    for n, line_text in enumerate(text.splitlines(), start=1):
        if not line_text.strip():
            continue
        try:
            doc = json.loads(line_text, parse_constant=_no_constant)
        except ValueError as exc:
            ctx.problems.add(file, n, None, f"not valid JSON: {exc}")
            continue
        if not isinstance(doc, dict):
            ctx.problems.add(file, n, None, f"each line must be a JSON object, got {short(doc)}")
            continue
        yield n, doc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def jsonl_prompts(text: str, file: str, ctx: PromptContext) -> list[PromptEntry]:
    """A prompts file: one YAML-style prompt object per line."""
    out = []
    for line, doc in jsonl_lines(text, file, ctx):
        entry = build_prompt(doc, file=file, line=line, line_of=_fixed(line), prefix="", ctx=ctx)
        if entry is not None:
            out.append(entry)
    return out


def jsonl_requests(text: str, file: str, ctx: PromptContext) -> list[PromptEntry]:
    """A JSONL manifest: each line one complete request, validated by its endpoint's rules."""
    out = []
    for line, doc in jsonl_lines(text, file, ctx):
        problems: list[Problem] = []

        def add(
            fld: str | None, message: str, line: int = line, problems: list[Problem] = problems
        ) -> None:
            problems.append(Problem(file, line, fld, message))

        for key in doc:
            if key not in JSONL_KEYS:
                add(key, f"unknown key; use {', '.join(JSONL_KEYS)}{did_you_mean(key, JSONL_KEYS)}")
        endpoint = doc.get("endpoint", TEXT_TO_IMAGE)
        if not isinstance(endpoint, str) or not endpoint.strip():
            add("endpoint", f"must be an endpoint id like {TEXT_TO_IMAGE}, got {short(endpoint)}")
            endpoint = TEXT_TO_IMAGE
        allow = doc.get("allow_unknown_model", False)
        if not isinstance(allow, bool):
            add("allow_unknown_model", f"must be true or false, got {short(allow)}")
        meant = None if allow is True else resembles_known(endpoint)
        if meant is not None:
            insist = 'add "allow_unknown_model": true to the line'
            add("endpoint", typo_endpoint(endpoint, meant, insist))
            endpoint = meant  # check the input as the endpoint it resembles
        request = doc.get("input")
        if not isinstance(request, dict):
            add("input", "must be a JSON object: the request body")
            ctx.problems.extend(problems)
            continue
        request = {k: normalised(endpoint, k, v) for k, v in request.items()}
        for key in sorted(set(request) & SECRET_FIELDS):
            add(
                f"input.{key}",
                "never put an API key in a manifest; batchgen reads "
                "OPENAI_API_KEY from the environment when it submits",
            )
        for p in validate_input(
            endpoint, {k: v for k, v in request.items() if k not in SECRET_FIELDS}, size_text=True
        ):
            add(f"input.{p.field}", p.message)
        prompt = request.get("prompt")
        if isinstance(prompt, str) and len(prompt) > MAX_PROMPT_CHARS:
            add(
                "input.prompt",
                f"is {len(prompt):,} characters; a prompt may be at most {MAX_PROMPT_CHARS:,}",
            )
        for key in sorted(FILE_FIELDS & set(request)):
            value = request[key]
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str) and key == "mask_url" and is_glob(item):
                    add(f"input.{key}", f"{short(item)}: patterns are allowed in image_urls only")
                elif isinstance(item, str):
                    for why in ctx.files.check(item):
                        add(f"input.{key}", why)
        raw_id = doc.get("id", f"line{line}")
        pid = str(raw_id).strip() if isinstance(raw_id, str | int) else ""
        if not pid or isinstance(raw_id, bool):
            add("id", f"must be non-empty text, got {short(raw_id)}")
        elif pid in ctx.ids:
            add("id", f"{pid!r} is already the id of the request at {ctx.ids[pid]}")
        ctx.ids.setdefault(pid, f"{file}:{line}")
        tags = doc.get("tags", {})
        if isinstance(tags, list) and all(isinstance(t, str) and t for t in tags):
            tags = list(dict.fromkeys(tags))
        elif not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
            add("tags", "must be a list of names or a mapping of name: text")
            tags = {}
        ctx.problems.extend(problems)
        if problems:
            continue
        text = prompt if isinstance(prompt, str) else ""
        fields = {k: v for k, v in request.items() if not (k == "prompt" and text)}
        out.append(
            PromptEntry(
                id=pid,
                text=text,
                templated=False,
                fields=fields,
                tags=tags,
                endpoint=endpoint,
                source=f"{file}:{line}",
            )
        )
    return out


def unknown_endpoints(entries: list[PromptEntry]) -> list[str]:
    return sorted({e.endpoint for e in entries if e.endpoint and e.endpoint not in KNOWN_ENDPOINTS})
