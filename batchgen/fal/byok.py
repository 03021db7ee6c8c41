"""Bring your own key: which jobs carry the user's OpenAI key, and the one place it is added.

fal documents BYOK request shapes for gpt-image-2 (an extra, required ``openai_api_key`` input
and a ``usage`` object in the output) but not their endpoint ids. So a job is BYOK when:

* its manifest says ``byok: true`` (authoritative; the key goes to whatever endpoint id the
  manifest names, the documented ``openai/gpt-image-2`` ones included), or
* its endpoint id has a path segment ``byok`` (``openai/gpt-image-2/byok``,
  ``openai/gpt-image-2/byok/edit``): naming such an endpoint implies the key.

The key comes from ``OPENAI_API_KEY`` (``config.build_settings``), is checked before anything
is submitted or written, and enters a request body only in :func:`submit_input`, called by the
scheduler for each POST. The body is never stored: the journal keeps ``JobSpec.input``
(which refuses secret fields), so the key is not in the job id, the journal, the index or a log.
Errors that echo it back are scrubbed where they are made (``QueueClient(redact=...)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batchgen.errors import UsageError
from batchgen.fal.auth import OpenAIKey
from batchgen.manifest.model import Manifest
from batchgen.planning.jobs import JobSpec

KEY_FIELD = "openai_api_key"  # the input field fal's BYOK request shapes require
SEGMENT = "byok"
ENV = "OPENAI_API_KEY"
MISSING_KEY = (
    f"the manifest uses your own OpenAI key (byok: true, or a byok endpoint id) but {ENV} is "
    f"not set; set it in the environment (a manifest never holds a key)"
)


def is_byok_endpoint(endpoint: str) -> bool:
    """True when the endpoint id names a BYOK endpoint (a ``byok`` path segment)."""
    return SEGMENT in endpoint.strip("/").split("/")


def base_endpoint(endpoint: str) -> str:
    """The endpoint id without its ``byok`` segment: whose input rules a BYOK id follows."""
    return "/".join(p for p in endpoint.strip("/").split("/") if p != SEGMENT)


def wants_key(spec: JobSpec) -> bool:
    """Whether this job's request must carry the OpenAI key."""
    return spec.byok or is_byok_endpoint(spec.endpoint)


def manifest_wants_key(manifest: Manifest) -> bool:
    """Whether any job of ``manifest`` will need the key: its ``byok`` flag, or an endpoint id
    it names (its own, or a prompt's: JSONL lines and CSV rows name theirs) being a BYOK one.
    Looks at the prompts only, never at the expanded jobs."""
    endpoints = {manifest.endpoint, *(p.endpoint for p in manifest.prompts if p.endpoint)}
    return manifest.byok or any(is_byok_endpoint(e) for e in endpoints)


def submit_input(
    spec: JobSpec, key: OpenAIKey | None, body: Mapping[str, Any] | None = None
) -> Mapping[str, Any]:
    """The body to POST for ``spec``: ``body`` (its input, local files already resolved;
    ``spec.input`` when not given), plus the key for a BYOK job.

    A fresh dict each time, never kept: callers send it and drop it.
    """
    body = spec.input if body is None else body
    if not wants_key(spec):
        return body
    if key is None:  # settings refuse a BYOK manifest without a key; a resumed journal may not
        raise UsageError(MISSING_KEY)
    return {**body, KEY_FIELD: key.reveal()}


def plan_note(manifest: Manifest, key_set: bool) -> dict[str, Any] | None:
    """What ``batchgen plan`` says about BYOK: None for a manifest that is not BYOK.

    ``plan`` warns and still exits 0 when the key is missing: it reads no secret and sends
    nothing, and a manifest is checked (and priced) on machines that will never run it.
    ``run`` refuses it (exit 2) before anything is submitted or written.
    """
    if not manifest_wants_key(manifest):
        return None
    return {
        "enabled": True,
        "openai_key_set": key_set,
        "problem": None if key_set else MISSING_KEY + "; `batchgen run` will refuse to start",
    }
