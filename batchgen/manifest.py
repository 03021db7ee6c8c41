"""Manifests: read a YAML, CSV or JSONL file into a validated `Manifest`, or fail with every
problem at once (`ManifestError`, exit code 2).

    manifest = load_manifest(Path("manifests/demo.yaml"))
    for spec in plan(manifest):      # lazy; identical jobs collapsed
        ...

The reader is split by concern: `manifest_source` (files, decoding, YAML lines),
`manifest_yaml` (the YAML schema), `manifest_tabular` (CSV, JSONL), `manifest_prompts` (one
prompt's rules), `manifest_fields` (one field value's rules), `manifest_model` (the result
and its expansion). This module is the public face.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from batchgen.errors import ManifestError, Problem
from batchgen.gptimage import TEXT_TO_IMAGE
from batchgen.manifest_files import files_notice
from batchgen.manifest_model import Deduplicated, Manifest, PromptEntry, plan
from batchgen.manifest_prompts import PromptContext
from batchgen.manifest_source import ProblemList, decode, load_yaml, read_bytes
from batchgen.manifest_tabular import csv_prompts, jsonl_requests, unknown_endpoints
from batchgen.manifest_yaml import build_yaml
from batchgen.pricing import estimate_cost
from batchgen.templates import slug

__all__ = [
    "Deduplicated",
    "Manifest",
    "ManifestError",
    "Problem",
    "PromptEntry",
    "estimate_cost",
    "load_manifest",
    "plan",
]

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
    sha256 = hashlib.sha256(data).hexdigest()  # of exactly the bytes that were checked
    text = decode(data, shown)
    # Names come from the file's stem only when the manifest has none; keep them folder-safe.
    name_default = slug(path.stem)
    if suffix in YAML_SUFFIXES:
        fields = build_yaml(load_yaml(text, shown), path, shown, name_default)
        return Manifest(path=path, sha256=sha256, **fields)
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
    notice = files_notice(ctx.files)
    if notice:
        notices.append(notice)
    return Manifest(
        name=name_default,
        path=path,
        sha256=sha256,
        prompts=tuple(prompts),
        notices=tuple(notices),
        files=ctx.files.sha256s(),
        globs=dict(ctx.files.globs),
    )
