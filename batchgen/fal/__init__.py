"""Talking to fal: the queue client and everything a request needs on its way out.

``client`` (``QueueClient``: submit, status, stream, result, cancel, upload; the typed
statuses), ``retry`` (the pure ``classify``/``backoff`` and the one retry loop), ``auth`` (keys
that never print), ``uploads`` (local reference files resolved at submit time) and ``byok``
(where a user's OpenAI key is added). Uses ``planning``, ``manifest`` and ``journal`` below it.
"""

from batchgen.fal.client import (
    Completed,
    Endpoints,
    Handle,
    InProgress,
    QueueClient,
    Queued,
    Status,
    data_uri,
)

__all__ = [
    "Completed",
    "Endpoints",
    "Handle",
    "InProgress",
    "QueueClient",
    "Queued",
    "Status",
    "data_uri",
]
