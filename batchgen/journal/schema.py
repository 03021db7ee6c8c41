"""The journal's tables and the pure value types read from them (no I/O here).

Kept apart from ``writer`` so the SQL text, the row shapes and the secret/size scrubbing
rules can be read (and tested) without opening a database.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from batchgen.journal.origin import is_rehearsal
from batchgen.planning.jobs import SECRET_FIELDS, JobSpec, JobState

# Bump when a table changes shape, with a migration in ``opening.MIGRATIONS``. A journal of a
# newer version is refused: mixing two layouts is how a resume would pay twice.
SCHEMA_VERSION = 4

JOURNAL_NAME = "journal.sqlite"

# What fal billed, as `batchgen reconcile` fetched it (schema 3): one row per billing event,
# ``n`` its place among the events of the same request on the same server (a request billed
# twice has two rows). ``job_id`` is NULL for a request the folder never knew of. Rows are
# only added or updated: an event fal no longer lists was still billed once.
BILLS_TABLE = """
CREATE TABLE IF NOT EXISTS bills (
    server TEXT NOT NULL,
    request_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    job_id TEXT,
    endpoint_id TEXT,
    billed_at TEXT,
    cost REAL NOT NULL,
    fetched_at REAL NOT NULL,
    PRIMARY KEY (server, request_id, n)
)"""

# ``attempt_at`` and ``sent_key`` (schema 4) are written just before each submit's POST: when it
# was made (our clock) and ``fal.matching.input_key`` of the input sent. They outlive the POST
# only when its answer is lost (UNKNOWN), for the look-up in fal's history that finds the
# request it made (``running/lookup.py``); a claim clears them, so a claimed row without them
# was never sent. ``sent_key = '?'``: sent, what is unknown (a journal of schema 3).
#
# ``seq`` is the rowid: FIFO order is insertion order, and ``jobs_state`` (state, in_manifest)
# implicitly ends with the rowid, so "the first N PENDING jobs in the manifest" is an index
# range scan with no sort, however many rows are done already.
DDL = (
    """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    manifest_sha256 TEXT NOT NULL,
    manifest_path TEXT,
    version TEXT NOT NULL,
    settings TEXT NOT NULL,
    started_at REAL NOT NULL,
    planned_at REAL,
    ended_at REAL,
    exit_code INTEGER
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    in_manifest INTEGER NOT NULL DEFAULT 1,
    request_id TEXT,
    handle TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    submits INTEGER NOT NULL DEFAULT 0,
    possible_duplicates INTEGER NOT NULL DEFAULT 0,
    lost INTEGER NOT NULL DEFAULT 0,
    billed INTEGER NOT NULL DEFAULT 0,
    cost REAL NOT NULL DEFAULT 0,
    result TEXT,
    files TEXT,
    error_class TEXT,
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    submitted_at REAL,
    origin TEXT,
    attempt_at REAL,
    sent_key TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, in_manifest);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    job_id TEXT,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id);
CREATE TABLE IF NOT EXISTS uploads (
    sha256 TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    content_type TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    uploaded_at REAL NOT NULL,
    origin TEXT
);
"""
    + BILLS_TABLE
    + ";\n"
)

JOB_COLUMNS = (
    "seq, job_id, spec, state, in_manifest, request_id, handle, attempts, submits, "
    "possible_duplicates, lost, cost, result, files, error_class, error, created_at, "
    "updated_at, submitted_at, billed, origin"
)

# States whose request may exist on fal's side and whose cost is committed but not yet known
# to be delivered: the budget counts them as in flight.
IN_FLIGHT = frozenset({JobState.SUBMITTING, JobState.UNKNOWN, JobState.QUEUED, JobState.RUNNING})

MAX_MESSAGE = 1000


@dataclass(frozen=True, slots=True)
class JobRow:
    """One job as the journal knows it. ``files`` is what ``mark_downloaded`` recorded."""

    spec: JobSpec
    state: JobState
    request_id: str | None
    handle: dict[str, Any] | None
    attempts: int
    result: dict[str, Any] | None
    error_class: str | None
    error: str | None
    cost: float
    created_at: float
    updated_at: float
    submitted_at: float | None = None
    seq: int = 0
    in_manifest: bool = True
    submits: int = 0
    possible_duplicates: int = 0
    lost: int = 0
    files: list[dict[str, Any]] | None = None
    billed: int = 0  # completions on fal's side (each one charged), lost ones included
    origin: str | None = None  # where its requests were made (journal.origin); None: none yet

    @property
    def job_id(self) -> str:
        return self.spec.job_id


@dataclass(frozen=True, slots=True)
class AddReport:
    """What ``add_jobs`` did: new rows, rows already there, rows this manifest no longer names."""

    new: int
    kept: int
    not_in_manifest: int


@dataclass(frozen=True, slots=True)
class RunInfo:
    id: int
    manifest_sha256: str
    manifest_path: str | None
    version: str
    settings: dict[str, Any]
    started_at: float
    planned_at: float | None
    ended_at: float | None
    exit_code: int | None


@dataclass(frozen=True, slots=True)
class FailureGroup:
    """Final failures of one class, with the most recent message as the example."""

    error_class: str
    count: int
    example: str
    example_job_id: str


@dataclass(frozen=True, slots=True)
class Upload:
    sha256: str
    url: str
    content_type: str
    bytes: int
    uploaded_at: float
    origin: str | None = None  # the server it was uploaded to: its URL is good there only


@dataclass(frozen=True, slots=True)
class Tallies:
    """Aggregates over every job. ``counts`` covers jobs named by the current manifest only;
    money covers every job, since work paid for is paid for whatever the manifest says now.

    ``spent`` is the one definition of spend everywhere (run summary, status, gallery,
    ``--max-cost``): the estimate of every request fal may bill, i.e. each completion (lost
    results included) and each possible duplicate, on fal or an ``--endpoint`` server.
    ``rehearsal`` is the same figure for the emulator's requests, which billed nothing."""

    counts: dict[JobState, int]
    not_in_manifest: dict[JobState, int]
    spent: float
    in_flight: float
    to_submit: float  # cost of the manifest's PENDING jobs (UNKNOWN ones count as in flight)
    lost: int
    possible_duplicates: int
    retries: int
    rehearsal: float = 0.0


class JobHead(NamedTuple):
    """The columns a state change needs (reading the whole row would parse the spec)."""

    seq: int
    state: JobState
    in_manifest: bool
    cost: float
    possible_duplicates: int
    billed: int
    request_id: str | None
    origin: str | None = None


def charges(old: JobState, new: JobState, *, lost: bool = False) -> int:
    """How many fal charges a state change reveals (0 or 1).

    A request that completes is charged once, however often its result is fetched. A lost
    result (expired before we fetched it) was charged too, even if we never saw it complete.
    """
    already = old in (JobState.COMPLETED, JobState.DOWNLOADED)
    return int((new is JobState.COMPLETED or lost) and not already)


class LiveTallies:
    """The writer's running counts and money, exact because it is the only writer.

    Updated after each commit in O(1), so the scheduler can check the budget before every
    submit instead of summing a million rows.
    """

    def __init__(self, t: Tallies) -> None:
        self.counts: Counter[JobState] = Counter(t.counts)
        self.spent = t.spent
        self.rehearsal = t.rehearsal
        self.in_flight = t.in_flight

    def move(
        self, r: JobHead | JobRow, new: JobState, *, dup: int, billed: int, origin: str | None
    ) -> None:
        """Account ``r`` going from ``r.state`` to ``new`` with its new dup/billed counts,
        its requests made at ``origin``.

        Spending only grows: a charge is never undone by a later retry or failure.
        """
        old = r.state
        if r.in_manifest:
            self.counts[old] -= 1
            self.counts[new] += 1
        charged = r.cost * ((dup - r.possible_duplicates) + (billed - r.billed))
        if is_rehearsal(origin):
            self.rehearsal += charged
        else:
            self.spent += charged
        self.in_flight += r.cost * ((new in IN_FLIGHT) - (old in IN_FLIGHT))


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


# One encoder for every row: json.dumps() with non-default options builds a new one per call,
# which is a third of the cost of planning a million jobs.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def dumps(value: Any) -> str:
    return _ENCODER.encode(value)


# Quoted names as they appear in serialized JSON, for a C-speed pre-check of every row.
SECRET_MARKERS = tuple(f'"{name}"' for name in SECRET_FIELDS)


def job_row(r: tuple[Any, ...]) -> JobRow:
    """Build a JobRow from a ``SELECT {JOB_COLUMNS}`` tuple."""
    return JobRow(
        seq=r[0],
        spec=JobSpec.from_json(json.loads(r[2])),
        state=JobState(r[3]),
        in_manifest=bool(r[4]),
        request_id=r[5],
        handle=_loads(r[6]),
        attempts=r[7],
        submits=r[8],
        possible_duplicates=r[9],
        lost=r[10],
        cost=r[11],
        result=_loads(r[12]),
        files=_loads(r[13]),
        error_class=r[14],
        error=r[15],
        created_at=r[16],
        updated_at=r[17],
        submitted_at=r[18],
        billed=r[19],
        origin=r[20],
    )


def find_secret(value: Any, path: str = "input") -> str | None:
    """The path of the first secret field inside ``value`` (nested dicts/lists), or None.

    Callers that have the JSON text first test it for ``SECRET_MARKERS`` (a substring search)
    and walk the value only on a hit.
    """
    if isinstance(value, Mapping):
        for k, v in value.items():
            if k in SECRET_FIELDS:
                return f"{path}.{k}"
            found = find_secret(v, f"{path}.{k}")
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = find_secret(v, f"{path}[{i}]")
            if found:
                return found
    return None


# Settings are recorded for the audit trail only, so dropping a field costs nothing while
# storing a key would leak it into every backup of the output folder.
_SECRET_NAME = re.compile(r"(^|_)(key|secret|token|password|authorization)s?($|_)", re.I)


def redact_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``settings`` without any field whose name looks like a credential."""
    out: dict[str, Any] = {}
    for k, v in settings.items():
        if _SECRET_NAME.search(str(k)) or k in SECRET_FIELDS:
            continue
        out[str(k)] = redact_settings(v) if isinstance(v, Mapping) else v
    return out


DATA_URI_KEEP = 1024


def strip_data_uris(value: Any) -> Any:
    """Replace large ``data:`` URIs by a short marker.

    A result may carry its images inline (sync mode). They must be committed before the
    download, since they are the paid work; once the files are on disk the journal need not
    keep a second copy of every image.
    """
    if isinstance(value, str):
        if value.startswith("data:") and len(value) > DATA_URI_KEEP:
            head = value[: value.find(",") + 1] if "," in value[:200] else "data:"
            return f"{head}<{len(value)} characters, saved to disk>"
        return value
    if isinstance(value, Mapping):
        return {k: strip_data_uris(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strip_data_uris(v) for v in value]
    return value


def one_line(message: str | None) -> str | None:
    if message is None:
        return None
    flat = " ".join(message.split())
    return flat if len(flat) <= MAX_MESSAGE else flat[: MAX_MESSAGE - 1] + "…"
