"""The run's controls from issue 13, decided from flags, environment and manifest in one place.

``control_settings`` returns the ``Settings`` fields for: how each submit asks fal to treat it
(``fal.headers.RequestControls``: priority, start timeout, media expiry, fallbacks, payload
storage), when to stop submitting (``--stop-at``), and who hears about the end (``--notify``,
``--on-exit``). Every refusal is a ``UsageError`` (exit 2) raised before anything is written
or sent, and none of them echoes the --notify URL.

Why the media-expiry floor is a fixed ``MIN_MEDIA_EXPIRY_S`` and not the deadline plus a
margin: fal's CDN clock starts when the image is made, at completion, and the download starts
the moment the result is fetched, so the time a download needs does not grow with how long the
request queued or ran (what --deadline bounds). What it does need: a burst of completions
waits behind --download-concurrency, a failed download is tried again with backoff and then
from a fresh read of the result, and a run killed mid-download should find its images when it
resumes minutes later. Ten minutes covers those; an image that expires first is lost after
being paid for, and is paid for again when resubmitted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batchgen.errors import UsageError
from batchgen.fal.headers import MIN_START_TIMEOUT, PRIORITIES, RequestControls
from batchgen.running.clock import local_text, next_time
from batchgen.running.notify import NotifyURL, notify_url, on_exit_argv

MIN_MEDIA_EXPIRY_S = 600


def control_settings(
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    *,
    manifest_priority: str | None,
    manifest_allows_fallbacks: bool,
    deadline: float,
    now: float,
) -> dict[str, Any]:
    """The ``Settings`` keyword arguments for the controls (flags over the manifest)."""
    priority = flags.get("priority") or manifest_priority
    if priority is not None and priority not in PRIORITIES:
        raise UsageError(f"--priority must be low or normal, got {priority!r}")
    start_timeout = _start_timeout(flags.get("start_timeout"), deadline)
    controls = RequestControls(
        priority=priority,
        start_timeout=start_timeout,
        media_expiry=_media_expiry(flags.get("media_expiry")),
        allow_fallbacks=bool(flags.get("allow_fallbacks")) or manifest_allows_fallbacks,
        store_io=not flags.get("no_store_io"),
    )
    stop = flags.get("stop_at")
    return {
        "controls": controls,
        "stop_at": next_time(str(stop), now=now) if stop else None,
        "notify": notify_url(flags.get("notify"), environ),
        "on_exit": on_exit_argv(flags.get("on_exit")),
    }


def public_controls(
    controls: RequestControls, stop_at: float | None, notify: object, on_exit: object
) -> dict[str, Any]:
    """As the journal records them: the URL and the command only as whether they were set
    (the URL is a credential; a command line may hold one too)."""
    return {
        **controls.public(),
        "stop_at": local_text(stop_at) if stop_at is not None else None,
        "notify": notify is not None,
        "on_exit": on_exit is not None,
    }


def describe_controls(
    controls: RequestControls, stop_at: float | None, notify: NotifyURL | None, on_exit: object
) -> str:
    """One line for run.log: how this run asks fal, when it stops, who hears of the end."""
    parts = [
        f"priority {controls.priority or 'fal default (normal)'}",
        f"start timeout {controls.start_timeout:g} s" if controls.start_timeout else "",
        f"images expire {controls.media_expiry} s after they are made"
        if controls.media_expiry
        else "",
        "fallbacks allowed" if controls.allow_fallbacks else "fallbacks disabled",
        "" if controls.store_io else "payloads not stored (X-Fal-Store-IO: 0)",
        f"stop submitting at {local_text(stop_at)}" if stop_at is not None else "",
        f"notify {notify.host}" if notify is not None else "",
        "on-exit command" if on_exit else "",
    ]
    return ", ".join(p for p in parts if p)


def _number(flag: str, value: object) -> float:
    try:
        x = float(str(value))
    except ValueError:
        raise UsageError(f"{flag} must be a number of seconds, got {value!r}") from None
    if x != x or x in (float("inf"), float("-inf")):
        raise UsageError(f"{flag} must be a finite number of seconds, got {value!r}")
    return x


def _start_timeout(value: object, deadline: float) -> float | None:
    if value is None:
        return None
    s = _number("--start-timeout", value)
    if s <= MIN_START_TIMEOUT:
        raise UsageError(
            f"--start-timeout must be more than {MIN_START_TIMEOUT:g} s (fal's"
            f" minimum), got {value}"
        )
    if s >= deadline:
        # The deadline (submit to result) would cancel the request before fal's start timeout
        # could ever answer: the flag would do nothing.
        raise UsageError(
            f"--start-timeout {s:g} s is not shorter than --deadline {deadline:g} s, which"
            " would cancel the request first; lower it or raise --deadline"
        )
    return s


def _media_expiry(value: object) -> int | None:
    if value is None:
        return None
    s = _number("--media-expiry", value)
    if s != int(s):
        raise UsageError(f"--media-expiry is whole seconds (fal takes an integer), got {value}")
    if s < MIN_MEDIA_EXPIRY_S:
        raise UsageError(
            f"--media-expiry {s:g} s is too short to download within: fal's CDN would delete"
            f" the images before a busy or resumed run fetches them, and each lost image is paid"
            f" for again; use at least {MIN_MEDIA_EXPIRY_S} s (10 minutes)"
        )
    return int(s)
