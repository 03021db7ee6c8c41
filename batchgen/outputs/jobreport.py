"""``batchgen status OUT --job ID``: one job, as the journal knows it.

Its row (state, request, attempts, money, error, where it was made, its files), then its audit
trail in order (every state change, retry, cancel, requeue), then the logs fal kept for its
failed requests (events of kind ``logs``, written by ``running.logs``). ``ID`` is the job id or
a prefix of it (file names carry its first 16 hex digits), or the request id fal gave it.
Read-only and pure like the rest of ``status``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from batchgen.errors import UsageError
from batchgen.journal.query import JournalReader
from batchgen.outputs.index import answered_by_of

LOGS = "logs"  # the event kind running.logs writes
MIN_PREFIX = 6  # fewer hex digits than this match too much to be meant


@dataclass(frozen=True, slots=True)
class Event:
    at: str  # ISO time, UTC
    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class JobReport:
    job_id: str
    state: str
    prompt_id: str
    prompt: str
    endpoint: str
    source: str  # where in the manifest it comes from ("file:line")
    request_id: str | None
    origin: str | None
    answered_by: str | None  # the endpoint fal said answered instead (a fallback)
    attempts: int
    submits: int
    lost: int
    possible_duplicates: int
    billed: int
    cost_estimate: float
    error_class: str | None
    error: str | None
    submitted_at: str | None
    updated_at: str
    files: list[dict[str, Any]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    logs: list[Event] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def build_job_report(reader: JournalReader, job: str) -> JobReport:
    """The report of the one job ``job`` names; UsageError (exit 2) if none or several."""
    text = job.strip()
    hexish = all(c in "0123456789abcdefABCDEF" for c in text)
    if hexish and len(text) < MIN_PREFIX:
        raise UsageError(f"--job {text!r} is too short: give at least {MIN_PREFIX} hex digits")
    with reader.snapshot():
        found = reader.find(text)
        if not found:
            raise UsageError(
                f"no job {text!r} in {reader.path.parent} (a job id, a prefix of"
                " one, or a request id)"
            )
        if len(found) > 1:
            raise UsageError(f"--job {text!r} matches more than one job; give more of the id")
        row = found[0]
        trail = reader.events(row.job_id)
    events = [Event(_iso(ts) or "", kind, detail) for ts, _, kind, detail in trail]
    return JobReport(
        job_id=row.job_id,
        state=str(row.state),
        prompt_id=row.spec.prompt_id,
        prompt=row.spec.prompt or str(row.spec.input.get("prompt", "")),
        endpoint=row.spec.endpoint,
        source=row.spec.source,
        request_id=row.request_id,
        origin=row.origin,
        answered_by=answered_by_of(row.result),
        attempts=row.attempts,
        submits=row.submits,
        lost=row.lost,
        possible_duplicates=row.possible_duplicates,
        billed=row.billed,
        cost_estimate=round(row.cost, 6),
        error_class=row.error_class,
        error=row.error,
        submitted_at=_iso(row.submitted_at),
        updated_at=_iso(row.updated_at) or "",
        files=list(row.files or []),
        events=[e for e in events if e.kind != LOGS],
        logs=[e for e in events if e.kind == LOGS],
    )


def render_job(rep: JobReport) -> str:
    lines = [
        f"job {rep.job_id}",
        f"  state {rep.state.lower()}, attempts {rep.attempts}, submits {rep.submits},"
        f" billed {rep.billed}, lost {rep.lost}, possible duplicates {rep.possible_duplicates},"
        f" estimate ${rep.cost_estimate:.4f} a request",
        f"  prompt {rep.prompt_id}: {rep.prompt}",
        f"  endpoint {rep.endpoint}"
        + (f" (answered by {rep.answered_by})" if rep.answered_by else "")
        + (f", made at {rep.origin}" if rep.origin else ""),
        f"  from {rep.source}",
    ]
    if rep.request_id:
        lines.append(f"  request {rep.request_id}, submitted {rep.submitted_at}")
    if rep.error_class or rep.error:
        lines.append(f"  error {rep.error_class or '?'}: {rep.error or ''}".rstrip())
    lines += [f"  file {f.get('file_name')}" for f in rep.files if isinstance(f, dict)]
    lines.append(f"events ({len(rep.events)}):")
    lines += [f"  {e.at}  {e.kind:8} {e.detail}" for e in rep.events]
    if rep.logs:
        lines.append(f"fal's logs of its failed requests ({len(rep.logs)} lines):")
        lines += [f"  {e.detail}" for e in rep.logs]
    else:
        lines.append("no logs kept (fal's logs are kept for failed requests)")
    return "\n".join(lines) + "\n"
