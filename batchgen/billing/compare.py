"""The bill beside the estimate: pure comparison and its two renderings (text, JSON).

``Folder`` is what the journal says about one server's requests (``reconcile.read_folder``
builds it); the billing events are what that server says it billed. ``compare`` lines them up:

- billed total and requests, and the average per quality (the quality of the job whose request
  it was; "unknown" for a request the folder never knew of);
- requests billed more than once;
- billed requests unknown to the folder: a dropped submit that made a request after all (the
  folder counts such possible duplicates in its estimate without knowing their ids), or
  another program's request to the same endpoints in the same hours;
- requests the folder counts as paid (completed, or completed with the result lost) that were
  not billed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from batchgen.journal.bills import StoredBill
from batchgen.planning.pricing import usd

UNKNOWN_QUALITY = "unknown"
SHOWN = 20  # request ids listed per finding in the text; --json lists them all


@dataclass(frozen=True, slots=True)
class FolderJob:
    job_id: str
    quality: str
    cost: float  # the estimate of one request of it
    charged: int  # requests the folder counts as billed: completions and possible duplicates


@dataclass
class Folder:
    """One server's side of a folder: its requests, their jobs, what the folder estimates."""

    server: str  # "fal", or the base URL of an --endpoint server
    owners: dict[str, str] = field(default_factory=dict)  # request id -> job id
    paid: set[str] = field(default_factory=set)  # requests counted as billed
    jobs: dict[str, FolderJob] = field(default_factory=dict)
    endpoints: list[str] = field(default_factory=list)
    window: tuple[float, float] | None = None  # (first request, last) seconds since the epoch
    possible_duplicates: int = 0

    @property
    def estimated_usd(self) -> float:
        return sum(j.cost * j.charged for j in self.jobs.values())


@dataclass(frozen=True, slots=True)
class Event:
    """One billing event, as compared (``fal.platform.BillingEvent`` reduced)."""

    request_id: str
    cost: float
    endpoint_id: str | None = None
    billed_at: str | None = None  # ISO 8601


@dataclass
class Reconciliation:
    server: str
    billed_usd: float
    billed_requests: int
    estimated_usd: float
    by_quality: dict[str, tuple[int, float]]  # quality -> (requests, USD)
    billed_twice: list[str]
    unknown_requests: list[str]
    unknown_usd: float
    not_billed: list[str]
    possible_duplicates: int
    rows: list[StoredBill]  # what the journal records

    def to_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "billed_usd": usd(self.billed_usd),
            "billed_requests": self.billed_requests,
            "estimated_usd": usd(self.estimated_usd),
            "difference_usd": usd(self.billed_usd - self.estimated_usd),
            "by_quality": {
                q: {"requests": n, "usd": usd(cost), "average_usd": usd(cost / n)}
                for q, (n, cost) in sorted(self.by_quality.items())
            },
            "billed_twice": self.billed_twice,
            "unknown_requests": self.unknown_requests,
            "unknown_usd": usd(self.unknown_usd),
            "not_billed": self.not_billed,
            "possible_duplicates": self.possible_duplicates,
        }


def compare(folder: Folder, events: list[Event]) -> Reconciliation:
    """Line the events up with the folder (see the module docstring)."""
    per_request: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        per_request[e.request_id].append(e)
    by_quality: dict[str, list[float]] = defaultdict(list)
    rows: list[StoredBill] = []
    unknown_usd = 0.0
    for rid, evs in sorted(per_request.items()):
        job_id = folder.owners.get(rid)
        job = folder.jobs.get(job_id) if job_id else None
        cost = sum(e.cost for e in evs)
        by_quality[job.quality if job else UNKNOWN_QUALITY].append(cost)
        if job_id is None:
            unknown_usd += cost
        ordered = sorted(evs, key=lambda e: (e.billed_at or "", e.cost))
        rows += [
            StoredBill(rid, n, job_id, e.endpoint_id, e.billed_at, e.cost)
            for n, e in enumerate(ordered)
        ]
    return Reconciliation(
        server=folder.server,
        billed_usd=sum(e.cost for e in events),
        billed_requests=len(per_request),
        estimated_usd=folder.estimated_usd,
        by_quality={q: (len(c), sum(c)) for q, c in by_quality.items()},
        billed_twice=sorted(r for r, evs in per_request.items() if len(evs) > 1),
        unknown_requests=sorted(r for r in per_request if r not in folder.owners),
        unknown_usd=unknown_usd,
        not_billed=sorted(folder.paid - per_request.keys()),
        possible_duplicates=folder.possible_duplicates,
        rows=rows,
    )


def _usd(x: float) -> str:
    return f"${x:,.4f}"


def _ids(ids: list[str]) -> list[str]:
    lines = [f"    {r}" for r in ids[:SHOWN]]
    if len(ids) > SHOWN:
        lines.append(f"    ... and {len(ids) - SHOWN:,} more (--json lists them all)")
    return lines


def _n(n: int, what: str = "request") -> str:
    return f"{n:,} {what}{'' if n == 1 else 's'}"


def render_text(rec: Reconciliation, where: str) -> str:
    """The report as a person reads it; ``where`` names the journal the bill went into."""
    who = "fal" if rec.server == "fal" else rec.server
    diff = rec.billed_usd - rec.estimated_usd
    lines = [
        f"billed by {who}: {_usd(rec.billed_usd)} for {_n(rec.billed_requests)}",
        f"the folder's estimate: {_usd(rec.estimated_usd)}"
        + (f" ({'+' if diff >= 0 else '-'}{_usd(abs(diff))} billed)" if abs(diff) >= 5e-5 else ""),
    ]
    for q, (n, cost) in sorted(rec.by_quality.items()):
        lines.append(f"  {q}: {_n(n)}, {_usd(cost / n)} each on average")
    if rec.billed_twice:
        lines.append(f"billed more than once: {_n(len(rec.billed_twice))}")
        lines += _ids(rec.billed_twice)
    if rec.unknown_requests:
        dups = _n(rec.possible_duplicates, "possible duplicate")
        lines.append(
            f"billed but unknown to the folder: {_n(len(rec.unknown_requests))},"
            f" {_usd(rec.unknown_usd)} (the folder counts {dups}; another program's requests"
            " to the same endpoints show here too)"
        )
        lines += _ids(rec.unknown_requests)
    if rec.not_billed:
        lines.append(f"counted as paid by the folder, not billed: {_n(len(rec.not_billed))}")
        lines += _ids(rec.not_billed)
    if not (rec.billed_twice or rec.unknown_requests or rec.not_billed):
        lines.append(
            "every billed request is one the folder knows, and every one it counts is billed"
        )
    lines.append(f"recorded in {where}")
    return "\n".join(lines) + "\n"
