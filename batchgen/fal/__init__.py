"""Talking to fal: the queue client and everything a request needs on its way out.

``client`` (``QueueClient``: submit, status, stream, result, cancel, upload), ``statuses`` (the
typed status variants), ``transport`` (one request, error answers, the key's headers),
``stream`` (the SSE status stream's watchdog), ``storage`` (fal's CDN and signed uploads),
``headers`` (the platform headers a submit carries), ``webhook`` (a delivery and its signature),
``auth`` (keys that never print), ``uploads`` (local reference files resolved at submit time)
and ``byok`` (where a user's OpenAI key is added). Uses ``planning``, ``manifest``, ``journal``,
``outputs`` and ``retry`` (what a failure means, the retry policies) below it.
"""

from batchgen.fal.client import Handle, QueueClient
from batchgen.fal.statuses import Completed, InProgress, Queued, Status
from batchgen.fal.storage import data_uri
from batchgen.fal.transport import Endpoints

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
