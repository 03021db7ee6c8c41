"""One line for run.log: how this run asks fal, when it stops, who hears of the end.

The controls themselves are options (``options.RunOptions``: priority, start timeout, media
expiry, fallbacks, payload storage, stop time, notify, on-exit), decided with the manifest in
``config.build_settings``; what each header means is in ``fal/headers.py``.
"""

from __future__ import annotations

from batchgen.fal.headers import RequestControls
from batchgen.running.clock import local_text
from batchgen.running.notify import NotifyURL


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
