"""fal's platform headers: what batchgen sends with each submit, and what it reads back.

These headers steer how fal treats a request without changing its input, so they are not part
of a job's identity (``job_id``): the same job asked at low priority is the same job.

Sent (``RequestControls.headers()``), each confirmed by fal's documentation unless marked:

- ``X-Fal-Queue-Priority: low|normal``: fal keeps one queue per endpoint for every caller; a
  low request waits behind every normal one. Sent only when asked (fal's default is normal).
- ``X-Fal-Request-Start-Timeout: S`` and the deprecated ``X-Fal-Request-Timeout: S``: fail
  the request (504, ``X-Fal-Request-Timeout-Type: user``) if no runner has started it S
  seconds after the submit. Both are sent, same value: fal's docs say the new name wins when
  both come, and the official Python client (1.0.3) still sends only the old one, so fal
  must keep honouring it; sending both works on either side of the rename.
- ``X-Fal-Object-Lifecycle-Preference: {"expiration_duration_seconds": N}``: how long fal's
  CDN keeps the images this request makes (default: at least 7 days, public URLs).
- ``x-fal-disable-fallbacks: true``: fal may reroute a request that keeps failing to an
  "equivalent" endpoint; a reproducible asset set wants the model it named. Sent unless the
  run allows fallbacks.
- ``X-Fal-Store-IO: 0``: fal does not keep the request's input and output payloads (30 days
  by default, shown in the dashboard).

Read back (INFERRED, not documented by fal): ``x-fal-fallback-endpoint`` on a result answer
names the endpoint that answered when fal rerouted the request. fal's docs describe fallbacks
but no header that reports one; batchgen reads this one name (the emulator sends it) and keeps
it in the result as ``ANSWERED_BY_KEY``, so a real header needs a change here only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Where the answering endpoint is kept inside a stored result (the index reads it there).
from batchgen.outputs.index import ANSWERED_BY_KEY

PRIORITY = "X-Fal-Queue-Priority"
START_TIMEOUT = "X-Fal-Request-Start-Timeout"
START_TIMEOUT_OLD = "X-Fal-Request-Timeout"  # deprecated by fal, still sent by fal-client
LIFECYCLE = "X-Fal-Object-Lifecycle-Preference"
DISABLE_FALLBACKS = "x-fal-disable-fallbacks"
STORE_IO = "X-Fal-Store-IO"
TIMEOUT_TYPE = "x-fal-request-timeout-type"  # on a 504: "user" = the start timeout ran out
ANSWERED_BY = "x-fal-fallback-endpoint"  # INFERRED: see the module docstring


__all__ = ["ANSWERED_BY_KEY", "RequestControls", "answered_by"]

PRIORITIES = ("low", "normal")
# fal's documented minimum is "> 0.1 s"; the official client refuses 1 s or less.
MIN_START_TIMEOUT = 0.1


@dataclass(frozen=True, slots=True)
class RequestControls:
    """How every submit of a run asks fal to treat it (see the module docstring)."""

    priority: str | None = None  # low | normal; None: not sent (fal's default, normal)
    start_timeout: float | None = None  # seconds
    media_expiry: int | None = None  # seconds the CDN keeps the generated images
    allow_fallbacks: bool = False  # False: x-fal-disable-fallbacks: true
    store_io: bool = True  # False: X-Fal-Store-IO: 0

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.priority is not None:
            out[PRIORITY] = self.priority
        if self.start_timeout is not None:
            value = str(float(self.start_timeout))  # "30.0", as fal-client sends it
            out[START_TIMEOUT] = value
            out[START_TIMEOUT_OLD] = value
        if self.media_expiry is not None:
            out[LIFECYCLE] = json.dumps({"expiration_duration_seconds": int(self.media_expiry)})
        if not self.allow_fallbacks:
            out[DISABLE_FALLBACKS] = "true"
        if not self.store_io:
            out[STORE_IO] = "0"
        return out

    def public(self) -> dict[str, Any]:
        """As the journal records a run's settings."""
        return {
            "priority": self.priority,
            "start_timeout": self.start_timeout,
            "media_expiry": self.media_expiry,
            "allow_fallbacks": self.allow_fallbacks,
            "store_io": self.store_io,
        }


def answered_by(headers: Mapping[str, str]) -> str | None:
    """The endpoint fal says answered instead of the one asked (INFERRED header), if any."""
    value = headers.get(ANSWERED_BY)
    value = value.strip() if value else ""
    # An endpoint id, never a sentence: a bogus value must not pass for one in the index.
    if not value or len(value) > 200 or any(c.isspace() for c in value):
        return None
    return value
