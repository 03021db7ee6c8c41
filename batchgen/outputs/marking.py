"""Which images ``batchgen mark`` marks: its targets resolved against the index (pure).

A target is an index file name (``images/fox/<job>_0.png``, as ``metadata.jsonl`` writes it)
or a job: a whole job id, or an unambiguous prefix of at least ``MIN_PREFIX`` hex digits,
which stands for every image of that job. ``--where`` adds the rows a quality field selects:
``blank`` (rows whose ``blank`` is true) or ``near-duplicate`` (every row of a near-duplicate
group but the first, in index order). Everything is resolved before anything is marked, so an
unknown name or an ambiguous prefix changes nothing (all or nothing).

The index is streamed once; only the selected rows (and, for ``near-duplicate``, each row's
name, job and phash) are held.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from batchgen.errors import UsageError
from batchgen.outputs.marks import MarkError, check_name
from batchgen.outputs.neardup import MAX_DISTANCE

MIN_PREFIX = 8
JOB_ID_HEX = 64  # a whole job id (a sha256)
WHERE = ("blank", "near-duplicate")
# The Hamming distance (of 64-bit phashes) under which two images are near duplicates.
NEAR_DUPLICATE_DISTANCE = MAX_DISTANCE  # one distance for the gallery, the page and mark
QUALITY_FIELDS = ("blank", "phash")
_HEX = re.compile(rf"[0-9a-f]{{{MIN_PREFIX},}}")

Row = Mapping[str, Any]
Image = tuple[str, str | None]  # (file_name, job_id): what Marks.set takes
# phashes in index order -> groups of near duplicates, each a sequence of indices into them
Grouping = Callable[[Sequence[str]], Iterable[Sequence[int]]]


def is_job_target(target: str) -> bool:
    """A job id or a prefix of one (hex, at least MIN_PREFIX digits); else a file name."""
    return _HEX.fullmatch(target.lower()) is not None


@dataclass
class Selection:
    """The images selected, in index order, each once; and the targets nothing matched."""

    images: dict[str, str | None] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    ambiguous: dict[str, int] = field(default_factory=dict)  # prefix -> jobs it matches

    def problem(self) -> str | None:
        """What makes the selection unusable, in one line; None when it is sound."""
        parts = []
        if self.unknown:
            short = any(re.fullmatch(r"[0-9a-fA-F]{1,7}", t) for t in self.unknown)
            hint = f" (a job prefix has at least {MIN_PREFIX} hex digits)" if short else ""
            parts.append("not in the index: " + ", ".join(self.unknown) + hint)
        if self.ambiguous:
            amb = ", ".join(f"{p} ({n} jobs)" for p, n in self.ambiguous.items())
            parts.append(f"ambiguous job prefixes: {amb}")
        return "; ".join(parts) or None

    def add(self, row: Row) -> None:
        name = row.get("file_name")
        if isinstance(name, str) and name not in self.images:
            job = row.get("job_id")
            self.images[name] = job if isinstance(job, str) else None


def select_targets(
    rows: Iterable[Row], targets: Sequence[str], *, marked: Container[str] = frozenset()
) -> Selection:
    """The rows ``targets`` name. A file name not in the index but in ``marked`` (an image
    since gone, still marked) is selected too, so that its mark can be cleared."""
    names: set[str] = set()
    jobs: set[str] = set()
    for t in targets:
        if is_job_target(t):
            jobs.add(t.lower())
        else:
            try:
                names.add(check_name(t))
            except MarkError as exc:
                raise UsageError(str(exc)) from None
    found = Selection()
    seen_names: set[str] = set()
    matched: dict[str, set[str]] = {j: set() for j in jobs}  # target -> job ids it matches
    prefixes = [j for j in jobs if len(j) < JOB_ID_HEX]
    for row in rows:
        name, job = row.get("file_name"), row.get("job_id")
        hit = isinstance(name, str) and name in names
        if hit:
            seen_names.add(str(name))
        if jobs and isinstance(job, str):
            low = job.lower()
            if low in jobs:  # a whole id: one look-up, however many are named
                matched[low].add(job)
                hit = True
            for j in prefixes:
                if low.startswith(j):
                    matched[j].add(job)
                    hit = True
        if hit:
            found.add(row)
    for name in sorted(names - seen_names):
        if name in marked:
            found.images.setdefault(name, None)
        else:
            found.unknown.append(name)
    for j, ids in sorted(matched.items()):
        if not ids:
            found.unknown.append(j)
        elif len(ids) > 1:
            found.ambiguous[j] = len(ids)
    return found


def select_blank(rows: Iterable[Row]) -> list[Row]:
    """The rows whose ``blank`` is true; a row without the field is not blank."""
    return [r for r in rows if r.get("blank") is True]


def select_near_duplicates(rows: Sequence[Row], grouping: Grouping) -> list[Row]:
    """Every row of a near-duplicate group but its first (in index order): what to reject so
    that one image of each group stays. Rows without a ``phash`` are in no group."""
    hashed = [r for r in rows if isinstance(r.get("phash"), str)]
    extra: set[int] = set()
    for group in grouping([str(r["phash"]) for r in hashed]):
        members = sorted(set(group))
        extra.update(members[1:])
    return [hashed[i] for i in sorted(extra)]


@dataclass
class WhereScan:
    """``--where``'s selection, made on the way through the rows :func:`select_targets` reads
    (one pass over the index); only the selected rows (and, for ``near-duplicate``, each
    hashed row's name, job and phash) are kept."""

    where: Sequence[str]
    grouping: Grouping | None = None
    seen_quality: bool = False  # some row has a quality field (else: index --rebuild first)
    blank: list[Row] = field(default_factory=list)
    hashed: list[Row] = field(default_factory=list)

    def watch(self, rows: Iterable[Row]) -> Iterator[Row]:
        for row in rows:
            if self.where:
                self._see(row)
            yield row

    def _see(self, row: Row) -> None:
        if not self.seen_quality and any(f in row for f in QUALITY_FIELDS):
            self.seen_quality = True
        small = {"file_name": row.get("file_name"), "job_id": row.get("job_id")}
        if "blank" in self.where and select_blank([row]):
            self.blank.append(small)
        # Blank images all hash alike: they are --where blank's, as in the gallery, and are no
        # one's near duplicates (rejecting all blanks but one by accident).
        hashed = isinstance(row.get("phash"), str) and row.get("blank") is not True
        if self.grouping is not None and hashed:
            self.hashed.append(dict(small, phash=row["phash"]))

    def selected(self) -> list[Row]:
        near = [] if self.grouping is None else select_near_duplicates(self.hashed, self.grouping)
        return near + self.blank


def near_duplicate_grouping(max_distance: int = NEAR_DUPLICATE_DISTANCE) -> Grouping:
    """``batchgen.outputs.neardup.near_duplicate_groups`` at ``max_distance``; a UsageError in
    one line when this batchgen has no such module."""
    try:
        neardup = importlib.import_module("batchgen.outputs.neardup")
    except ImportError:
        raise UsageError(
            "--where near-duplicate needs batchgen.outputs.neardup, which this batchgen lacks"
        ) from None
    groups: Callable[..., Iterable[Sequence[int]]] = neardup.near_duplicate_groups

    def grouping(phashes: Sequence[str]) -> Iterable[Sequence[int]]:
        return groups(phashes, max_distance)

    return grouping
