"""Which lost submit became which request in fal's history: pure logic, no I/O.

A submit whose answer never came (``UnknownOutcome``) may have made a request that fal runs
and bills; the job never learnt its id. fal's request history (``platform.py``) lists the
requests with the input each was sent with, so a job can find its request again by its input.

The rules (tests/test_matching.py has one case or more for each):

- An entry matches an attempt only by the canonical JSON of the input sent, with the user's
  OpenAI key left out (``input_key``): the history keeps a BYOK request's input as sent, key
  included, and the journal never holds the key (``fal/byok.py`` adds it at submit time).
  When both sides name an endpoint id, it must be the same.
- Jobs with identical inputs (``repeat: N``, or a prompt listed twice) are interchangeable: the
  unowned requests of that input are shared among the unowned jobs of that input as a
  multiset, each request to at most one job and each job to at most one request.
- An entry that reached fal before the attempt was made (less ``skew_s``) is not its request:
  it is an older one (another run, another folder, an attempt that is already owned). The
  allowance covers the gap between our clock and fal's: 60 s by default, far more than an
  NTP-synced machine drifts and far less than the minutes between two runs of a folder. An
  entry without a time, or without its input (not asked for, or not stored: ``X-Fal-Store-IO:
  0``), cannot be proved to be a job's and matches nothing.
- A request some job already owns (``owned``) is never given to another.

Among the entries one input may take, each job (earliest attempt first) takes the earliest
eligible request: the eligible sets are nested (a later attempt's are a subset of an earlier
one's), so this greedy order matches as many jobs as any assignment can, and pairs attempts
and requests in the order they were made.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from batchgen.fal.byok import KEY_FIELD
from batchgen.fal.platform import RequestItem
from batchgen.planning.jobs import SECRET_FIELDS, canonical_json

CLOCK_SKEW_S = 60.0


def input_key(body: Mapping[str, Any]) -> str:
    """The sha256 (hex) of a request's input as canonical JSON without the OpenAI key: equal
    for the same input whatever the key order, and whoever's key was in it. A digest, so the
    journal keeps 64 characters per lost submit, not an edit's inline images."""
    clean = {k: v for k, v in body.items() if k not in SECRET_FIELDS | {KEY_FIELD}}
    return hashlib.sha256(canonical_json(clean).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class LostSubmit:
    """One submit attempt whose answer never came: its job, the input it sent (as
    ``input_key``), and when it was made (seconds since the epoch, our clock)."""

    job_id: str
    input_key: str
    at: float
    endpoint: str | None = None


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One request of fal's history, as the matcher needs it (``entry_of`` builds it)."""

    request_id: str
    input_key: str | None  # None: the history gave no input
    at: float | None  # when it reached fal (seconds since the epoch, fal's clock)
    endpoint: str | None = None


def entry_of(item: RequestItem) -> HistoryEntry:
    """A history item as an entry (its payloads must have been asked for)."""
    reached = item.reached_fal
    return HistoryEntry(
        request_id=item.request_id,
        input_key=input_key(item.json_input) if item.json_input is not None else None,
        at=reached.timestamp() if reached is not None else None,
        endpoint=item.endpoint_id or None,
    )


@dataclass(frozen=True, slots=True)
class Matching:
    """``pairs``: job id -> the request it re-attaches to. ``unmatched``: lost jobs no request
    was found for. ``spare``: unowned requests with a lost job's input, made after its first
    lost attempt, that no job took (more requests than jobs: a duplicate, billed). ``blind``:
    the unmatched jobs that an entry without its input (or its time) might be: the history
    cannot say they were not made (``X-Fal-Store-IO: 0``)."""

    pairs: dict[str, str] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)
    spare: list[str] = field(default_factory=list)
    blind: list[str] = field(default_factory=list)


def match(
    lost: Sequence[LostSubmit],
    history: Iterable[HistoryEntry],
    owned: Collection[str],
    *,
    skew_s: float = CLOCK_SKEW_S,
) -> Matching:
    """Re-attach lost submits to requests of fal's history (the rules: module docstring)."""
    # Per input: each job once, at its earliest attempt (any of its attempts may have made
    # the request, and the earliest admits the most).
    jobs: dict[tuple[str, str | None], dict[str, float]] = defaultdict(dict)
    for a in lost:
        group = jobs[(a.input_key, a.endpoint)]
        group[a.job_id] = min(a.at, group.get(a.job_id, a.at))
    requests: dict[str, list[HistoryEntry]] = defaultdict(list)
    unreadable: list[HistoryEntry] = []  # unowned entries that cannot be compared
    seen: set[str] = set()
    for e in history:
        if e.request_id in owned or e.request_id in seen:
            continue
        seen.add(e.request_id)
        if e.input_key is not None and e.at is not None:
            requests[e.input_key].append(e)
        else:
            unreadable.append(e)
    pairs: dict[str, str] = {}
    taken: set[str] = set()
    for (key, endpoint), group in sorted(jobs.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        candidates = sorted(
            (e for e in requests.get(key, []) if _same_endpoint(endpoint, e.endpoint)),
            key=lambda e: (e.at, e.request_id),
        )
        for job_id, at in sorted(group.items(), key=lambda kv: (kv[1], kv[0])):
            if job_id in pairs:
                continue  # matched under another input it was sent with
            for e in candidates:
                assert e.at is not None
                if e.request_id not in taken and e.at >= at - skew_s:
                    pairs[job_id] = e.request_id
                    taken.add(e.request_id)
                    break
    # Left over, yet made after a lost attempt of its input: a request nobody will collect.
    earliest: dict[str, float] = {}
    for (key, _), group in jobs.items():
        earliest[key] = min(min(group.values()), earliest.get(key, float("inf")))
    spare = sorted(
        e.request_id
        for key, first in earliest.items()
        for e in requests.get(key, [])
        if e.request_id not in taken and e.at is not None and e.at >= first - skew_s
    )
    unmatched = sorted({a.job_id for a in lost} - pairs.keys())
    missing = set(unmatched)
    blind = sorted(
        {
            a.job_id
            for a in lost
            if a.job_id in missing
            and any(
                _same_endpoint(a.endpoint, e.endpoint) and (e.at is None or e.at >= a.at - skew_s)
                for e in unreadable
            )
        }
    )
    return Matching(pairs, unmatched, spare, blind)


def _same_endpoint(asked: str | None, listed: str | None) -> bool:
    return asked is None or listed is None or asked == listed
