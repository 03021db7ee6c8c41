"""What the stats route counts, and how identical submits are recognised."""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Counters the stats route always shows (zero until something happens).
STAT_KEYS: tuple[str, ...] = (
    "submit_attempts",
    "submits_accepted",
    "submits_refused_429",
    "submits_refused_503",
    "submits_refused_queue_length",
    "submits_dropped",
    "status_polls",
    "status_faults",
    "stream_connections",
    "stream_events",
    "result_requests",
    "cancel_requests",
    "cancels_effective",
    "media_requests",
    "media_truncated",
    "media_slow",
    "file_requests",
    "uploads",
    "uploads_failed",
    "references_refused",
    "refusals_retryable",
    "results_evil_name",
    "results_file_url",
    "results_blank",
    "unauthorized",
    "webhooks_delivered",
    "webhooks_failed",
)


def canonical_input_key(endpoint: str, body: Any) -> str:
    """sha256 of the canonical JSON of (endpoint, input): equal for identical submits."""
    text = json.dumps({"endpoint": endpoint, "input": body}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
