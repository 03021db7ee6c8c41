"""One emulated request and what a status read sees of it: plain data, shared by the queue
model (``model``), the bodies it answers with (``bodies``) and the webhook sender."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from batchgen.planning import gptimage


class Phase(StrEnum):
    QUEUED = "IN_QUEUE"
    RUNNING = "IN_PROGRESS"
    DONE = "COMPLETED"


class Outcome(StrEnum):
    OK = "ok"
    INVALID = "invalid"  # 422 with a detail list
    CONTENT_POLICY = "content_policy"  # 422 content_policy_violation
    RUNNER_ERROR = "runner_error"  # 5xx with an error_type
    CANCELLED = "cancelled"  # 499 client_cancelled
    START_TIMEOUT = "start_timeout"  # 504: still queued when its start timeout ran out


@dataclass(slots=True)
class Request:
    id: str
    app: str  # owner/alias (with a workflows/ or comfy/ prefix), as in the request URLs
    endpoint: str  # the full endpoint id the submit was posted to, sub-path included
    input: dict[str, Any]
    submitted_at: float
    run_time: float  # seconds from start to completion, already scaled
    outcome: Outcome
    qseq: int  # submit order (ties in the heaps)
    webhook: str | None = None
    start_by: float | None = None  # fail if still queued at this time (the start timeout)
    priority: str = "normal"  # X-Fal-Queue-Priority: its lane
    ticket: int = 0  # its place in its lane
    media_expiry: float | None = None  # seconds fal's CDN keeps its images (lifecycle header)
    answered_by: str | None = None  # the endpoint that answered instead (a fallback)
    problems: list[gptimage.InputProblem] = field(default_factory=list)
    reference: Any = None  # an edit's first reference image (references.Reference)
    runner_error: tuple[int, str, str] | None = None
    evil_name: str | None = None  # the file_name its result gives (faults: evil_name)
    file_url: bool = False  # its result's image URLs are file:// (faults: file_url)
    blank: bool = False  # its images are one flat colour (faults: blank)
    retryable_refusal: bool = False  # its 422 says X-Fal-Retryable: true (policy_retryable)
    store_io: bool = True  # False (X-Fal-Store-IO: 0): its history entry carries no payloads
    phase: Phase = Phase.QUEUED
    started_at: float | None = None
    finish_at: float | None = None  # planned completion, set when it starts
    completed_at: float | None = None
    expires_at: float | None = None

    @property
    def error(self) -> tuple[str, str] | None:
        """(error, error_type) as the status body shows them; None on success."""
        if self.outcome is Outcome.OK:
            return None
        if self.outcome is Outcome.RUNNER_ERROR and self.runner_error:
            return self.runner_error[2], self.runner_error[1]
        if self.outcome is Outcome.CANCELLED:
            return "Request was cancelled", "client_cancelled"
        if self.outcome is Outcome.START_TIMEOUT:
            return "Request timed out before it started", "request_timeout"
        if self.outcome is Outcome.CONTENT_POLICY:
            return "Invalid status code: 422", "content_policy_violation"
        return "Invalid status code: 422", "validation_error"


@dataclass(frozen=True, slots=True)
class StatusView:
    phase: Phase
    position: int | None  # IN_QUEUE only: 0 = next to start
    request: Request
