"""A request's status, as typed variants: ``Queued``, ``InProgress``, ``Completed``.

fal has no FAILED status: a request that failed is ``COMPLETED`` with an ``error``. The parser
is as strict as fal-client's: a body that does not say one of the three, with the keys each
needs, is a ``ProtocolError``, never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from batchgen.errors import ProtocolError
from batchgen.fal.transport import excerpt


@dataclass(frozen=True, slots=True)
class Queued:
    position: int  # 0 = next to start


@dataclass(frozen=True, slots=True)
class InProgress:
    logs: list[dict[str, Any]] | None


@dataclass(frozen=True, slots=True)
class Completed:
    """Finished, well or not: fal has no FAILED status, a failure is COMPLETED with ``error``."""

    error: str | None = None
    error_type: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    logs: list[dict[str, Any]] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def inference_time(self) -> float | None:
        """fal's own run time of the request, in seconds, when its metrics say."""
        t = self.metrics.get("inference_time")
        return float(t) if isinstance(t, int | float) else None


Status = Queued | InProgress | Completed


def parse_status(body: object) -> Status:
    """A status body, as strictly as fal-client reads it: IN_QUEUE needs ``queue_position``,
    IN_PROGRESS and COMPLETED need the ``logs`` key, any other status is an error."""
    if not isinstance(body, dict):
        raise ProtocolError(f"status body is not a JSON object: {excerpt(repr(body))}")
    state = body.get("status")
    if state == "IN_QUEUE":
        pos = body.get("queue_position")
        if isinstance(pos, bool) or not isinstance(pos, int) or pos < 0:
            raise ProtocolError(f"IN_QUEUE status without a valid queue_position: {pos!r}")
        return Queued(pos)
    if state == "IN_PROGRESS":
        return InProgress(_logs(body))
    if state == "COMPLETED":
        metrics = body.get("metrics")
        metrics = {} if metrics is None else metrics
        if not isinstance(metrics, dict):
            raise ProtocolError("COMPLETED status with non-object metrics")
        return Completed(
            error=_opt_str(body, "error"),
            error_type=_opt_str(body, "error_type"),
            metrics=metrics,
            logs=_logs(body),
        )
    raise ProtocolError(f"unknown queue status {excerpt(repr(state))}")


def _logs(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    if "logs" not in body:
        raise ProtocolError(f"{body.get('status')} status without the logs key")
    logs = body["logs"]
    if logs is None:
        return None
    if not isinstance(logs, list) or not all(isinstance(x, dict) for x in logs):
        raise ProtocolError("status logs are not a list of objects")
    return logs


def _opt_str(body: dict[str, Any], key: str) -> str | None:
    v = body.get(key)
    if v is None or isinstance(v, str):
        return v
    raise ProtocolError(f"status {key} is not a string")
