"""fal's per-request logs, kept in the journal's audit trail when a request fails.

A request's logs (what its runner printed: the status route with ``logs=1``) are the only
account of why it failed beyond the error type, and fal forgets them with the request. They
are fetched once, after the failure, and never for a success: the watch itself asks for no
logs (they would make every status answer heavier), so a run of a million good images costs
nothing extra.

Each line becomes one event of kind ``logs`` ("<timestamp> <level> <message>"), bounded per
request, redacted like everything else the journal keeps; ``batchgen status OUT --job ID``
shows them. Fetching them is best effort: a request fal no longer knows, or an error, is
noted as one event and changes nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from batchgen.fal import Handle, QueueClient
from batchgen.journal.writer import Journal
from batchgen.retry import Action, Outcome, classify

KIND = "logs"
MAX_LINES = 50  # per failed request: a runner that prints its whole stack keeps the top


def log_lines(logs: Iterable[Any] | None) -> list[str]:
    """fal's log objects ({message, level, source, timestamp}) as one line each."""
    out: list[str] = []
    for item in logs or ():
        if isinstance(item, dict):
            parts = (item.get("timestamp"), item.get("level"), item.get("message"))
            line = " ".join(str(p) for p in parts if p not in (None, ""))
        else:
            line = str(item)
        line = " ".join(line.split())
        if line:
            out.append(line)
    return out


async def keep_logs(
    client: QueueClient,
    journal: Journal,
    job_id: str,
    handle: Handle,
    failure: Outcome,
    redact: Callable[[str], str],
) -> int:
    """After a request's own failure (``failure`` is FINAL or RESUBMIT: fal answered for
    it), fetch its logs and write them as events; the number of lines kept."""
    if failure.action not in (Action.FINAL, Action.RESUBMIT) or failure.reason == "expired":
        return 0  # not answered for (a refused key, no connection), or fal forgot it
    try:
        status = await client.status(handle, logs=True)
    except Exception as exc:  # best effort: the failure itself is already decided
        why = classify(exc, op="status").message
        journal.event(job_id, KIND, redact(f"no logs for {handle.request_id}: {why}"))
        return 0
    lines = log_lines(getattr(status, "logs", None))
    for line in lines[:MAX_LINES]:
        journal.event(job_id, KIND, redact(line))
    if len(lines) > MAX_LINES:
        journal.event(job_id, KIND, f"... {len(lines) - MAX_LINES} more lines not kept")
    return min(len(lines), MAX_LINES)
