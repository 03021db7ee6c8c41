"""Jobs: the unit of work, its identity, and the pure rules for its states.

A job is one request to one endpoint. Its id is derived from its content so that the same
manifest maps onto the same journal rows on every run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

# Input fields that carry secrets: never part of an id, never stored.
SECRET_FIELDS = frozenset({"openai_api_key"})

DEFAULT_OUTPUT_TEMPLATE = "{prompt_id}/{job_id16}_{n}.{ext}"


def canonical_json(value: Any) -> str:
    """Stable JSON: sorted keys, compact separators, no NaN."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def job_id(endpoint: str, request_input: Mapping[str, Any], variant: int) -> str:
    """sha256 of {endpoint, input without secrets, variant}: key order and secrets never matter."""
    clean = {k: v for k, v in request_input.items() if k not in SECRET_FIELDS}
    doc = {"endpoint": endpoint, "input": clean, "variant": variant}
    return hashlib.sha256(canonical_json(doc).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One fully resolved request, as planned from a manifest.

    ``input`` is the exact JSON body to submit (minus secrets added at submit time);
    ``variant`` tells apart the ``repeat`` copies of one combination; ``source`` locates the
    prompt in the manifest for messages ("demo.yaml:12").
    """

    job_id: str
    endpoint: str
    input: Mapping[str, Any]
    variant: int = 0
    prompt_id: str = ""
    prompt: str = ""
    vars: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    output_template: str = DEFAULT_OUTPUT_TEMPLATE
    source: str = ""
    byok: bool = False

    @property
    def short_id(self) -> str:
        return self.job_id[:16]

    @property
    def num_images(self) -> int:
        n = self.input.get("num_images", 1)
        return n if isinstance(n, int) and n > 0 else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "endpoint": self.endpoint,
            "input": dict(self.input),
            "variant": self.variant,
            "prompt_id": self.prompt_id,
            "prompt": self.prompt,
            "vars": dict(self.vars),
            "tags": dict(self.tags),
            "output_template": self.output_template,
            "source": self.source,
            "byok": self.byok,
        }

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
            tags=dict(doc.get("tags", {})),
            output_template=doc.get("output_template", DEFAULT_OUTPUT_TEMPLATE),
            source=doc.get("source", ""),
            byok=bool(doc.get("byok", False)),
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
    S.UNKNOWN: frozenset({S.SUBMITTING, S.PENDING, S.FAILED}),
    S.QUEUED: frozenset({S.RUNNING, S.COMPLETED, S.PENDING, S.FAILED}),
    S.RUNNING: frozenset({S.COMPLETED, S.PENDING, S.FAILED}),
    S.COMPLETED: frozenset({S.DOWNLOADED, S.PENDING, S.FAILED}),
    S.DOWNLOADED: frozenset({S.PENDING}),  # only when files vanished and the result is gone
    S.FAILED: frozenset({S.PENDING}),  # --retry-failed
}

# States in which a request exists on fal's side and must be re-attached, never resubmitted.
ATTACHED = frozenset({S.QUEUED, S.RUNNING})
FINAL = frozenset({S.DOWNLOADED, S.FAILED})


class InvalidTransition(ValueError):
    pass


def check_transition(old: JobState, new: JobState) -> None:
    if new not in TRANSITIONS[old]:
        raise InvalidTransition(f"a job cannot go from {old} to {new}")
