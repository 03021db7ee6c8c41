"""The platform headers a submit may carry, as the emulator reads and honours them.

The client's side is ``batchgen.fal.headers`` (which also says what is confirmed about each).
Here: the priority picks the request's lane (``lanes``), the start timeout fails it if no slot
frees in time (the new name first, then the deprecated one fal-client still sends, as fal's
docs say the new one wins), the lifecycle preference ends its images' life on the media route,
``x-fal-disable-fallbacks`` keeps the ``fallback`` fault from rerouting it, and
``X-Fal-Store-IO: 0`` keeps the request's payloads out of its history entry
(``/v1/models/requests/by-endpoint``). The runner hint and ``x-fal-no-retry`` change nothing.

Every one of them is counted per value in the stats (``control_headers``), so a test asserts on
what the server was asked, not on what the client meant to send.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

CONTROL_HEADERS = (
    "x-fal-queue-priority",
    "x-fal-request-start-timeout",
    "x-fal-request-timeout",
    "x-fal-object-lifecycle-preference",
    "x-fal-disable-fallbacks",
    "x-fal-store-io",
    "x-fal-runner-hint",
    "x-fal-no-retry",
)
FALSE = ("false", "0", "no")


@dataclass(frozen=True, slots=True)
class Controls:
    priority: str = "normal"
    start_timeout: float | None = None  # seconds
    media_expiry: float | None = None  # seconds the images are served after completion
    fallbacks: bool = True  # fal may reroute (no x-fal-disable-fallbacks)
    store_io: bool = True  # fal keeps the payloads (no X-Fal-Store-IO: 0)


def read_controls(headers: Mapping[str, str]) -> Controls:
    """What the submit's headers ask for; an unreadable value is ignored, as a proxy would."""
    priority = headers.get("x-fal-queue-priority", "normal").strip().lower()
    disable = headers.get("x-fal-disable-fallbacks")
    return Controls(
        priority="low" if priority == "low" else "normal",
        start_timeout=_start_timeout(headers),
        media_expiry=_media_expiry(headers.get("x-fal-object-lifecycle-preference")),
        fallbacks=disable is None or disable.strip().lower() in FALSE,
        store_io=headers.get("x-fal-store-io", "1").strip() != "0",
    )


def count(headers: Mapping[str, str], into: dict[str, Counter[str]]) -> None:
    for name in CONTROL_HEADERS:
        value = headers.get(name)
        if value is not None:
            into.setdefault(name, Counter())[value[:200]] += 1


def _seconds(raw: str | None) -> float | None:
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and value > 0 else None


def _start_timeout(headers: Mapping[str, str]) -> float | None:
    new = _seconds(headers.get("x-fal-request-start-timeout"))
    return new if new is not None else _seconds(headers.get("x-fal-request-timeout"))


def _media_expiry(raw: str | None) -> float | None:
    """``{"expiration_duration_seconds": N}``; null (or anything else) means fal's default."""
    try:
        doc = json.loads(raw) if raw else None
    except ValueError:
        return None
    value = doc.get("expiration_duration_seconds") if isinstance(doc, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value)
