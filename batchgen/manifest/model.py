"""The validated manifest and its lazy expansion into jobs.

A `Manifest` holds only what the file says (prompts, axes, vars, defaults); the jobs are
produced one at a time by `expand()`, so planning a million jobs never holds a million objects.
`plan()` adds duplicate collapsing with a set of 32-byte digests (about 100 bytes per job).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from batchgen.manifest.files import expand_globs, references
from batchgen.manifest.templates import parse
from batchgen.planning.gptimage import DEFAULTS, TEXT_TO_IMAGE, with_defaults
from batchgen.planning.jobs import (
    DEFAULT_OUTPUT_TEMPLATE,
    FILE_FIELDS,
    Deduplicated,
    JobSpec,
    canonical_json,
    identity_input,
)
from batchgen.planning.pricing import DEFAULT_TABLE, PriceTable


class PromptEntry(BaseModel):
    """One prompt of a manifest, with what it changes for its own jobs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    text: str  # a template with {var} placeholders when `templated`, else the literal prompt
    templated: bool = True
    fields: dict[str, Any] = Field(default_factory=dict)  # request fields this prompt fixes
    axes: dict[str, list[Any]] = Field(default_factory=dict)  # axes this prompt replaces
    tags: dict[str, str] | list[str] = Field(default_factory=dict)  # one form per manifest
    repeat: int | None = None
    endpoint: str | None = None  # JSONL lines name their own endpoint
    source: str  # "file:line", for messages


class Manifest(BaseModel):
    """A manifest that passed every check: expanding it cannot fail."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    path: Path
    # The identity (`identity.py`): the file's bytes and every file it read. What decides a
    # re-plan and what each index row records as manifest_sha256.
    sha256: str
    file_sha256: str | None = None  # of the manifest file's own bytes (None: same as sha256)
    endpoint: str = TEXT_TO_IMAGE
    output: str = DEFAULT_OUTPUT_TEMPLATE
    pricing: PriceTable = DEFAULT_TABLE
    defaults: dict[str, Any] = Field(default_factory=dict)
    matrix: dict[str, list[Any]] = Field(default_factory=dict)  # insertion order = loop order
    repeat: int = 1
    vars: dict[str, list[str]] = Field(default_factory=dict)
    prompts: tuple[PromptEntry, ...] = ()
    byok: bool = False
    notices: tuple[str, ...] = ()
    files: dict[str, str] = Field(default_factory=dict)  # local reference path -> sha256
    globs: dict[str, tuple[str, ...]] = Field(default_factory=dict)  # pattern -> paths, sorted
    # Every other file read (prompts file, references, matches): normalised path relative to
    # the manifest's folder -> sha256 (files.read_name); the output folder keeps a copy of each.
    reads: dict[str, str] = Field(default_factory=dict)
    # How the run's requests ask fal to treat them (YAML keys; flags win): not part of any
    # job's identity, since the same request at another priority makes the same image.
    priority: Literal["low", "normal"] | None = None
    allow_fallbacks: bool = False

    def expand(self) -> Iterator[JobSpec]:
        """Every job, lazily: prompts × their vars × matrix axes × repeat, in file order."""
        for p in self.prompts:
            yield from self._expand_prompt(p)

    def _expand_prompt(self, p: PromptEntry) -> Iterator[JobSpec]:
        endpoint = p.endpoint or self.endpoint
        axes = {**self.matrix, **p.axes}
        names, values = list(axes), [axes[n] for n in axes]
        repeat = p.repeat or self.repeat
        base = with_defaults(endpoint, {**self.defaults, **p.fields})
        tpl = parse(p.text) if p.templated else None
        var_names = tpl.names if tpl else ()
        for combo in itertools.product(*(self.vars[n] for n in var_names)):
            var_map = dict(zip(var_names, combo, strict=True))
            prompt = tpl.render(var_map) if tpl else p.text
            with_prompt = {**base, "prompt": prompt} if prompt or p.templated else base
            for axis_values in itertools.product(*values):
                # One input dict is shared by a combination's repeats: JobSpecs never mutate it.
                combo_request = {**with_prompt, **dict(zip(names, axis_values, strict=True))}
                requests = self._with_files(combo_request) if self.globs else (combo_request,)
                for request in requests:
                    yield from self._variants(request, endpoint, repeat, p, prompt, var_map)

    def _with_files(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The request once per file each image_urls pattern matches (once without patterns)."""
        if "image_urls" not in request:
            yield request
            return
        for urls in expand_globs(request["image_urls"], self.globs):
            yield {**request, "image_urls": urls}

    def _variants(
        self,
        request: dict[str, Any],
        endpoint: str,
        repeat: int,
        p: PromptEntry,
        prompt: str,
        var_map: dict[str, str],
    ) -> Iterator[JobSpec]:
        files = self._files_of(request)
        hasher = _id_prefix(endpoint, request, files)
        for variant in range(repeat):
            h = hasher.copy()
            h.update(b"%d}" % variant)
            yield JobSpec(
                job_id=h.hexdigest(),
                endpoint=endpoint,
                input=request,
                variant=variant,
                prompt_id=p.id,
                prompt=prompt,
                vars=var_map,
                tags=p.tags,
                output_template=self.output,
                source=p.source,
                byok=self.byok,
                files=files,
            )

    def _files_of(self, request: dict[str, Any]) -> dict[str, str]:
        """path -> sha256 of the local files this request names."""
        if not self.files:
            return _NO_FILES  # shared: JobSpecs never mutate it
        named = [v for k in FILE_FIELDS & request.keys() for v in references(request[k])]
        return {v: self.files[v] for v in named if v in self.files}


_NO_FILES: dict[str, str] = {}


def _id_prefix(endpoint: str, request: dict[str, Any], files: dict[str, str]) -> Any:
    """sha256 state over the canonical JSON of {endpoint, input, variant: ...} up to the variant.

    Equal to `jobs.job_id()` (a property test pins that), but it serialises each combination
    once instead of once per repeat, which is most of the cost of planning a large matrix.
    """
    clean = identity_input(request, files)
    endpoint_json = json.dumps(endpoint, ensure_ascii=False)
    head = '{"endpoint":' + endpoint_json + ',"input":' + canonical_json(clean) + ',"variant":'
    return hashlib.sha256(head.encode())


def plan(manifest: Manifest) -> Deduplicated:
    """The manifest's jobs, lazily, with identical jobs collapsed (see `.duplicates`)."""
    return Deduplicated(manifest.expand())


def quality_notice(
    endpoint: str,
    defaults: dict[str, Any],
    matrix: dict[str, list[Any]],
    prompts: tuple[PromptEntry, ...] | list[PromptEntry],
    table: PriceTable = DEFAULT_TABLE,
) -> str | None:
    """A notice when prompts set no quality anywhere: fal then uses its default, high, the
    dearest, and a CSV without a quality column would spend that silently."""
    unset = [
        p
        for p in prompts
        if "quality" not in defaults
        and "quality" not in matrix
        and "quality" not in p.fields
        and "quality" not in p.axes
        and DEFAULTS.get(p.endpoint or endpoint, {}).get("quality") == "high"
    ]
    if not unset:
        return None
    at = unset[0].endpoint or endpoint
    size = defaults.get("image_size", DEFAULTS[at].get("image_size"))
    high, _ = table.per_image(at, size, "high")
    low, _ = table.per_image(at, size, "low")
    return (
        f"{len(unset):,} prompt(s) set no quality, so fal's default applies: high, about"
        f" ${high:.2f} an image (low: ${low:.2f}); set quality: low, medium or high"
    )
