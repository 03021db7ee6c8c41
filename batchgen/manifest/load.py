"""``load_manifest``: the entry point of the manifest reader (see the package docstring).

Picks the reader by suffix (YAML, CSV, JSONL), runs every check, and returns the strict
``Manifest`` or raises ``ManifestError`` with every problem found.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from batchgen.errors import ManifestError, Problem
from batchgen.manifest.files import files_notice
from batchgen.manifest.identity import identity
from batchgen.manifest.model import Manifest, quality_notice
from batchgen.manifest.prompts import PromptContext, unify_tags
from batchgen.manifest.source import ProblemList, decode, load_yaml, read_bytes
from batchgen.manifest.tabular import csv_prompts, jsonl_requests, unknown_endpoints
from batchgen.manifest.templates import slug
from batchgen.manifest.yamlfile import build_yaml
from batchgen.planning.gptimage import TEXT_TO_IMAGE

YAML_SUFFIXES = (".yaml", ".yml")
SUFFIXES = (*YAML_SUFFIXES, ".csv", ".jsonl", ".ndjson")


def load_manifest(path: Path) -> Manifest:
    """Read and check the manifest at `path`; raises ManifestError listing every problem."""
    path = Path(path)
    shown = str(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ManifestError(
            [
                Problem(
                    shown,
                    None,
                    None,
                    f"unknown manifest type {suffix!r}; use .yaml, .yml, .csv or .jsonl",
                )
            ]
        )
    data = read_bytes(path, shown)
    own = hashlib.sha256(data).hexdigest()  # of exactly the bytes that were checked
    text = decode(data, shown)
    # Names come from the file's stem only when the manifest has none; keep them folder-safe.
    name_default = slug(path.stem)
    if suffix in YAML_SUFFIXES:
        fields = build_yaml(load_yaml(text, shown), path, shown, name_default)
        sha256 = identity(own, fields["reads"], fields["globs"])
        return Manifest(path=path, sha256=sha256, file_sha256=own, **fields)
    problems = ProblemList()
    ctx = PromptContext(
        folder=path.parent, endpoint=TEXT_TO_IMAGE, problems=problems, templated=False
    )
    if suffix == ".csv":
        prompts = csv_prompts(text, shown, ctx, standalone=True)
    else:
        prompts = jsonl_requests(text, shown, ctx)
    if not prompts and not problems.items:
        problems.add(shown, None, None, "no jobs: the file has no rows")
    problems.raise_if_any()
    notices = [
        f"model {e} is not one batchgen knows: its inputs are sent unchecked and its "
        f"cost is not estimated"
        for e in unknown_endpoints(prompts)
    ]
    prompts, tags_notice = unify_tags(prompts)
    quality = quality_notice(TEXT_TO_IMAGE, {}, {}, prompts)
    notices += [n for n in (tags_notice, files_notice(ctx.files), quality) if n]
    return Manifest(
        name=name_default,
        path=path,
        sha256=identity(own, ctx.files.reads, ctx.files.globs),
        file_sha256=own,
        prompts=tuple(prompts),
        notices=tuple(notices),
        files=ctx.files.sha256s(),
        globs=dict(ctx.files.globs),
        reads=dict(ctx.files.reads),
    )
