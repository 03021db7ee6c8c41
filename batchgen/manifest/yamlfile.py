"""The YAML manifest: the checks between its parts (its schema is in `yamldoc`).

The checks that relate parts (a var a prompt uses, an axis a prompt overrides, a file the
manifest names) are done here. Every problem is collected before anything is raised.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batchgen.errors import ManifestError
from batchgen.manifest.fields import normalised
from batchgen.manifest.fields import value_problems as field_value_problems
from batchgen.manifest.files import files_notice
from batchgen.manifest.local import local_path_problem, short
from batchgen.manifest.model import PromptEntry, quality_notice
from batchgen.manifest.prompts import (
    PromptContext,
    build_prompt,
    did_you_mean,
    typo_endpoint,
    unify_tags,
)
from batchgen.manifest.source import Located, ProblemList, decode, dotted, read_bytes
from batchgen.manifest.tabular import csv_prompts, jsonl_prompts
from batchgen.manifest.templates import output_template_problems, parse
from batchgen.manifest.yamldoc import ManifestDoc, PricingDoc, read_doc
from batchgen.planning.gptimage import (
    FIELDS,
    KNOWN_ENDPOINTS,
    QUALITIES,
    TEXT_TO_IMAGE,
    resembles_known,
)
from batchgen.planning.jobs import SECRET_FIELDS, JobSpec
from batchgen.planning.paths import TemplateError, render_template, template_fields
from batchgen.planning.pricing import DEFAULT_TABLE, PriceTable

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ENDPOINT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")
_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BUCKET = re.compile(r"(\d+)x(\d+)")


def build_yaml(located: Located, path: Path, file: str, name_default: str) -> dict[str, Any]:
    """The keyword arguments of `Manifest` (minus path and the sha256s), or a ManifestError."""
    problems = ProblemList()
    if not isinstance(located.data, dict):
        problems.add(
            file,
            1,
            None,
            f"the manifest must be a mapping of keys (name, prompts, ...),"
            f" got {short(located.data)}",
        )
        problems.raise_if_any()
    doc, unread = read_doc(located, file, problems)

    def add(loc: tuple[str | int, ...], message: str, sub: str = "") -> None:
        # `sub` continues the path inside a value: matrix.image_size[1] + ".width"
        problems.add(file, located.line(loc), f"{dotted(loc)}{sub}", message)

    name = doc.name if doc.name is not None else name_default
    if not _NAME.fullmatch(name):
        add(
            ("name",),
            f"{short(name)} must be a simple folder name: letters, digits, '.', '_', "
            f"'-', at most 64 characters",
        )
    notices: list[str] = []
    endpoint, rules = _endpoint(doc, unread, add, notices)
    folder = path.parent
    supplied = set(doc.defaults) | set(doc.matrix)
    if unread.keys() & {"defaults", "matrix"}:
        supplied.add("image_urls")  # they may have set it: do not also call it missing
    ctx = PromptContext(
        folder=folder,
        endpoint=rules,
        problems=problems,
        axes=frozenset(doc.matrix),
        supplied=frozenset(supplied),
        vars_known="vars" not in unread,
    )
    defaults = {k: normalised(rules, k, v) for k, v in doc.defaults.items()}
    matrix = {k: [normalised(rules, k, v) for v in vs] for k, vs in doc.matrix.items()}
    for key, value in defaults.items():
        if key == "prompt":
            add(("defaults", key), "put prompts under prompts, not defaults")
            continue
        for fld, message in _field_problems(rules, key, value, ctx):
            add(("defaults", key), message, fld[len(key) :])
    for axis, values in matrix.items():
        if axis == "prompt":
            add(("matrix", axis), "prompts are listed under prompts, not as a matrix axis")
            continue
        if not values:
            add(("matrix", axis), "lists no values: the matrix would make no jobs")
        if rules in KNOWN_ENDPOINTS and axis not in FIELDS[rules] | SECRET_FIELDS:  # once
            add(("matrix", axis), _unknown_field(rules, axis))
            continue
        for i, value in enumerate(values):
            for fld, message in _field_problems(rules, axis, value, ctx):
                add(("matrix", axis, i), message, fld[len(axis) :])
    ctx.vars = _vars(doc.vars, add)
    prompts = _prompts(doc, located, file, ctx)
    if doc.prompts_file is not None:
        from_file = _prompts_file(doc.prompts_file, folder, file, ctx, add)
        if not from_file and not problems.items:
            add(("prompts_file",), f"{short(doc.prompts_file)} has no prompts")
        prompts += from_file
    unsure = unread.keys() & {"prompts", "prompts_file"}  # a misspelt `promtps:` has some
    if not doc.prompts and doc.prompts_file is None and not unsure:
        add(("prompts",), "no prompts: list them under prompts or name a prompts_file")
    for var in ctx.vars:
        if var not in ctx.used_vars:
            add(("vars", var), f"is used by no prompt (write {{{var}}} in a prompt to use it)")
    for message in _output_problems(doc.output, prompts, ctx):
        add(("output",), message)
    pricing = _pricing(doc.pricing, add)
    prompts, tags_notice = unify_tags(prompts)
    quality = quality_notice(endpoint, defaults, matrix, prompts)
    notices += [n for n in (tags_notice, files_notice(ctx.files), quality) if n]
    problems.raise_if_any()
    return {
        "name": name,
        "endpoint": endpoint,
        "output": doc.output,
        "pricing": pricing,
        "defaults": defaults,
        "matrix": matrix,
        "repeat": doc.repeat,
        "vars": ctx.vars,
        "prompts": tuple(prompts),
        "byok": doc.byok,
        "priority": doc.priority,
        "allow_fallbacks": doc.allow_fallbacks,
        "notices": tuple(notices),
        "files": ctx.files.sha256s(),
        "globs": dict(ctx.files.globs),
        "reads": dict(ctx.files.reads),
    }


def _endpoint(
    doc: ManifestDoc, unread: dict[str, Any], add: Any, notices: list[str]
) -> tuple[str, str]:
    """The manifest's endpoint id, and the id whose rules its request fields are checked by:
    a near miss of a known id is checked as the id it resembles (so the user sees every
    problem of the manifest they meant), one that could not be read by none ("")."""
    endpoint = doc.model.strip()
    if "model" in unread:  # check the fields by what a misspelt `model:` says, if it is text
        meant = unread["model"]
        if not isinstance(meant, str):
            return endpoint, ""
        return endpoint, resembles_known(meant.strip()) or meant.strip()
    if not _ENDPOINT.fullmatch(endpoint):
        add(("model",), f"{short(doc.model)} is not a fal endpoint id like {TEXT_TO_IMAGE}")
        return endpoint, endpoint
    meant = None if doc.allow_unknown_model else resembles_known(endpoint)
    if meant is not None:
        add(("model",), typo_endpoint(endpoint, meant, "add allow_unknown_model: true"))
        return endpoint, meant
    if endpoint not in KNOWN_ENDPOINTS:
        notices.append(
            f"model {endpoint} is not one batchgen knows: its inputs are sent "
            f"unchecked and its cost is not estimated (set pricing.per_image)"
        )
    return endpoint, endpoint


def _field_problems(
    endpoint: str, key: str, value: Any, ctx: PromptContext
) -> list[tuple[str, str]]:
    found = field_value_problems(endpoint, key, value, ctx.files)
    if endpoint in KNOWN_ENDPOINTS and any(m.startswith("unknown field") for _, m in found):
        return [(key, _unknown_field(endpoint, key))]
    return found


def _unknown_field(endpoint: str, key: str) -> str:
    return f"unknown field for {endpoint}{did_you_mean(key, FIELDS[endpoint] - {'prompt'})}"


def _output_problems(text: str, prompts: list[PromptEntry], ctx: PromptContext) -> list[str]:
    """The output template must name files for every job: each var or tag it uses must exist
    on every prompt, and the run's own renderer (`paths`) must accept it."""
    found = output_template_problems(text, list(ctx.vars))
    if found:
        return found
    names = parse(text).names
    for p in prompts:
        used = set(parse(p.text).names) if p.templated else set()
        for name in names:
            lacks = (name in ctx.vars and name not in used) or (
                name.startswith("tag_") and name[4:] not in p.tags
            )
            if lacks:
                return [f"uses {{{name}}}, which the prompt at {p.source} does not have"]
    sample = JobSpec(
        job_id="0" * 64,
        endpoint=ctx.endpoint,
        input={},
        prompt_id="p",
        vars=dict.fromkeys(ctx.vars, "v"),
        tags={n[4:]: "t" for n in names if n[:4] == "tag_"},
    )
    try:
        render_template(text, template_fields(sample, 0))
    except TemplateError as exc:
        return [str(exc)]
    return []


def _vars(raw: dict[str, list[Any]], add: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, values in raw.items():
        if not _VAR.fullmatch(name):
            add(
                ("vars", name),
                "a var name must be letters, digits and _ (not starting with a digit)",
            )
            continue
        if not values:
            add(("vars", name), "lists no values")
            continue
        texts = []
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, str | int | float):
                add(("vars", name, i), f"must be text or a number, got {short(v)}")
            else:
                texts.append(str(v))
        out[name] = texts
    return out


def _prompts(
    doc: ManifestDoc, located: Located, file: str, ctx: PromptContext
) -> list[PromptEntry]:
    out = []
    for i, item in enumerate(doc.prompts):
        base = ("prompts", i)
        if not isinstance(item, str | dict):
            ctx.problems.add(
                file,
                located.line(base),
                f"prompts[{i}]",
                f"must be text or a mapping, got {short(item)}",
            )
            continue
        raw = {"prompt": item} if isinstance(item, str) else item
        entry = build_prompt(
            raw,
            file=file,
            line=located.line(base),
            line_of=_lines_under(located, base),
            prefix=f"prompts[{i}]",
            ctx=ctx,
        )
        if entry is not None:
            out.append(entry)
    return out


def _lines_under(located: Located, base: tuple[str | int, ...]) -> Callable[[str], int | None]:
    """The line of each key of the mapping at `base`."""
    return lambda key: located.lines.get((*base, key))


def _prompts_file(
    rel: str, folder: Path, file: str, ctx: PromptContext, add: Any
) -> list[PromptEntry]:
    why = local_path_problem(rel, folder)
    if why is None and not rel.lower().endswith((".csv", ".jsonl")):
        why = f"{short(rel)} must be a .csv or .jsonl file"
    if why:
        add(("prompts_file",), why)
        return []
    shown = str(Path(file).parent / rel)
    try:
        data = read_bytes(folder / rel, shown)
        text = decode(data, shown)
    except ManifestError as exc:  # report it beside the manifest's own problems
        ctx.problems.extend(exc.problems)
        return []
    ctx.files.read(rel, data)  # part of the manifest's identity: an edit re-plans
    if rel.lower().endswith(".csv"):
        return csv_prompts(text, shown, ctx, standalone=False)
    return jsonl_prompts(text, shown, ctx)


def _pricing(doc: PricingDoc | None, add: Any) -> PriceTable:
    if doc is None:
        return DEFAULT_TABLE
    buckets: dict[tuple[int, int], dict[str, float]] = {}
    for key, prices in doc.table.items():
        m = _BUCKET.fullmatch(key.strip())
        if not m or int(m.group(1)) <= 0 or int(m.group(2)) <= 0:
            add(("pricing", "table", key), "a bucket is WIDTHxHEIGHT, like 1024x1024")
            continue
        for quality, usd in prices.items():
            if quality not in QUALITIES:
                add(
                    ("pricing", "table", key, quality),
                    f"unknown quality; use {', '.join(QUALITIES)}",
                )
            elif usd < 0:
                add(("pricing", "table", key, quality), "a price cannot be negative")
        buckets[(int(m.group(1)), int(m.group(2)))] = dict(prices)
    if doc.per_image is not None and doc.per_image < 0:
        add(("pricing", "per_image"), "a price cannot be negative")
    return DEFAULT_TABLE.with_overrides(buckets, doc.per_image)
