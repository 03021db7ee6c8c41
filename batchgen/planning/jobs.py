"""Jobs: the unit of work, its identity, the pure rules for its states, and duplicates collapsed.

A job is one request to one endpoint. Its id is derived from its content so that the same
manifest maps onto the same journal rows on every run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

# Input fields that carry secrets: never part of an id, never stored.
SECRET_FIELDS = frozenset({"openai_api_key"})

DEFAULT_OUTPUT_TEMPLATE = "{prompt_id}/{job_id16}_{n}.{ext}"

# A prompt's tags: a list of names (`tags: [nature]`), or a mapping of name -> value when the
# manifest gives one. Kept in that form through the journal and into the index, so a dataset
# loader sees a list column, not a mapping of names to "".
Tags = Mapping[str, str] | list[str]


def tags_json(tags: Tags) -> dict[str, str] | list[str]:
    """Tags as plain JSON data, in the form they were given."""
    return list(tags) if isinstance(tags, list) else dict(tags)


def canonical_json(value: Any) -> str:
    """Stable JSON: sorted keys, compact separators, no NaN."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


# Request fields that may name a local file (replaced by a hosted URL when submitted).
FILE_FIELDS = frozenset({"image_urls", "mask_url"})


def identity_input(
    request_input: Mapping[str, Any], files: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The input a job id is made of: no secrets, and each local file named by its content
    (``sha256:<hex>``) rather than its path, so an edited reference makes a new job and the
    same bytes under another name are the same job."""
    clean = {k: v for k, v in request_input.items() if k not in SECRET_FIELDS}
    if files:
        for key in FILE_FIELDS & clean.keys():
            value = clean[key]
            if isinstance(value, list):
                clean[key] = [_content_name(v, files) for v in value]
            else:
                clean[key] = _content_name(value, files)
    return clean


def _content_name(value: Any, files: Mapping[str, str]) -> Any:
    return f"sha256:{files[value]}" if isinstance(value, str) and value in files else value


def job_id(
    endpoint: str,
    request_input: Mapping[str, Any],
    variant: int,
    files: Mapping[str, str] | None = None,
) -> str:
    """sha256 of {endpoint, input without secrets, variant}: key order and secrets never
    matter; local files (``files``: path -> sha256) count by content, not by name."""
    clean = identity_input(request_input, files)
    doc = {"endpoint": endpoint, "input": clean, "variant": variant}
    return hashlib.sha256(canonical_json(doc).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One fully resolved request, as planned from a manifest.

    ``input`` is the exact JSON body to submit (minus secrets added at submit time), except
    that local reference files are named by their path relative to the manifest (``files``
    maps each to the sha256 it had when planned; ``uploads`` resolves them at submit time);
    ``variant`` tells apart the ``repeat`` copies of one combination; ``source`` locates the
    prompt in the manifest for messages ("demo.yaml:12"); ``replaces`` is set on a take made
    by ``run --replace-rejected``: the rejected image it replaces (``file_name``, ``job_id``)
    and ``root``, the manifest's job the takes descend from (empty on the manifest's jobs).
    """

    job_id: str
    endpoint: str
    input: Mapping[str, Any]
    variant: int = 0
    prompt_id: str = ""
    prompt: str = ""
    vars: Mapping[str, str] = field(default_factory=dict)
    tags: Tags = field(default_factory=dict)
    output_template: str = DEFAULT_OUTPUT_TEMPLATE
    source: str = ""
    byok: bool = False
    files: Mapping[str, str] = field(default_factory=dict)  # local path -> sha256 when planned
    replaces: Mapping[str, str] = field(default_factory=dict)  # run --replace-rejected's takes

    @property
    def short_id(self) -> str:
        return self.job_id[:16]

    @property
    def num_images(self) -> int:
        n = self.input.get("num_images", 1)
        return n if isinstance(n, int) and n > 0 else 1

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "job_id": self.job_id,
            "endpoint": self.endpoint,
            "input": dict(self.input),
            "variant": self.variant,
            "prompt_id": self.prompt_id,
            "prompt": self.prompt,
            "vars": dict(self.vars),
            "tags": tags_json(self.tags),
            "output_template": self.output_template,
            "source": self.source,
            "byok": self.byok,
            "files": dict(self.files),
        }
        if self.replaces:  # only on a replacement take: the manifest's rows stay as they were
            doc["replaces"] = dict(self.replaces)
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> JobSpec:
        return cls(
            job_id=doc["job_id"],
            endpoint=doc["endpoint"],
            input=dict(doc["input"]),
            variant=int(doc.get("variant", 0)),
            prompt_id=doc.get("prompt_id", ""),
            prompt=doc.get("prompt", ""),
            vars=dict(doc.get("vars", {})),
            tags=tags_json(doc.get("tags", {})),
            output_template=doc.get("output_template", DEFAULT_OUTPUT_TEMPLATE),
            source=doc.get("source", ""),
            byok=bool(doc.get("byok", False)),
            files=dict(doc.get("files", {})),
            replaces=dict(doc.get("replaces", {})),
        )


class JobState(StrEnum):
    PENDING = "PENDING"
    SUBMITTING = "SUBMITTING"
    UNKNOWN = "UNKNOWN"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    DOWNLOADED = "DOWNLOADED"
    FAILED = "FAILED"


S = JobState
# Which state may follow which. PENDING is re-entered by retries and --retry-failed.
TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    S.PENDING: frozenset({S.SUBMITTING, S.FAILED}),
    S.SUBMITTING: frozenset({S.QUEUED, S.UNKNOWN, S.PENDING, S.FAILED}),
    S.UNKNOWN: frozenset({S.QUEUED, S.PENDING, S.FAILED}),  # QUEUED: found in fal's history
    S.QUEUED: frozenset({S.RUNNING, S.COMPLETED, S.PENDING, S.FAILED}),
    S.RUNNING: frozenset({S.COMPLETED, S.PENDING, S.FAILED}),
    S.COMPLETED: frozenset({S.DOWNLOADED, S.PENDING, S.FAILED}),
    # its files missing or broken on disk: COMPLETED, fetched again from the kept result
    # (running/recovery.py); PENDING when the result (or the emulator that made it) is gone
    S.DOWNLOADED: frozenset({S.COMPLETED, S.PENDING}),
    # --retry-failed; COMPLETED again when only the download failed (the result is kept)
    S.FAILED: frozenset({S.PENDING, S.COMPLETED}),
}

FINAL = frozenset({S.DOWNLOADED, S.FAILED})


class InvalidTransition(ValueError):
    pass


def check_transition(old: JobState, new: JobState) -> None:
    if new not in TRANSITIONS[old]:
        raise InvalidTransition(f"a job cannot go from {old} to {new}")


class Deduplicated(Iterator[JobSpec]):
    """Passes each job through once; later jobs with an id already seen are counted, not kept.

    Memory: one 32-byte digest per distinct job, never the jobs themselves.
    """

    EXAMPLES = 5

    def __init__(self, specs: Iterable[JobSpec]) -> None:
        self._specs = iter(specs)
        self._seen: set[bytes] = set()
        self.duplicates = 0
        self.examples: list[JobSpec] = []  # the first few duplicates, for the plan's notice

    def __next__(self) -> JobSpec:
        while True:
            spec = next(self._specs)
            digest = bytes.fromhex(spec.job_id)
            if digest not in self._seen:
                self._seen.add(digest)
                return spec
            self.duplicates += 1
            if len(self.examples) < self.EXAMPLES:
                self.examples.append(spec)
