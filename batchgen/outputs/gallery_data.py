"""What the gallery's browser code reads: per-row records and columns, written as JS chunks.

For every ``CHUNK_ROWS`` index rows the build writes two files under ``.gallery/``:

- ``r-000012.js``: the rows as the cards show them (file, thumbnail, prompt, tags, …), loaded
  only for the page on screen;
- ``s-000012.js``: the rows as filters and sorts need them, columnar and small (a few dozen
  bytes a row plus each distinct search text of the chunk once), all loaded in the background
  so that a filter or a sort covers every row, not one page.

Each file is a script calling one registration function with ``json.dumps`` output (ASCII
only, so the page's encoding cannot matter and no text can end the script): pages opened from
``file://`` cannot ``fetch()`` JSON in Chromium, but they can load scripts. String columns are
dictionary-encoded per chunk (rows of one job sit together in the index, so its prompt is
stored once); the browser maps them to its own codes as chunks arrive.

:class:`Totals` are the header's figures and the filters' options: small whatever the rows
(each facet lists at most ``FACET_CAP`` values; the rest are counted, and reachable by
search), and JSON, so that a refresh can resume from the totals of a chunk boundary.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

CHUNK_ROWS = 1000
FACET_CAP = 1000
DATA_DIR = ".gallery"
FACETS = ("prompt", "size", "quality", "tag")


def chunk_name(kind: str, k: int) -> str:
    """``.gallery/r-000012.js``: ``kind`` is r (records), s (summary) or f (failures)."""
    return f"{DATA_DIR}/{kind}-{k:06d}.js"


def write_script(out_dir: Path, rel: str, call: str, *args: Any) -> None:
    """Write ``call(args…);`` atomically (a tmp name per process: a run's build and a
    ``batchgen gallery`` may write the same folder at once, and each file is whole)."""
    text = ",".join(json.dumps(a, separators=(",", ":")) for a in args)
    dest = out_dir / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(dest, f"{call}({text});\n")  # json.dumps's ASCII: UTF-8 is the same


def write_text_atomic(dest: Path, text: str) -> None:
    """A killed build leaves the old file or the new one, never half of one: a temporary
    file in the same folder (named per process), then ``os.replace``."""
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, dest)


# ---- one row ----------------------------------------------------------------------------


def size_of(r: Mapping[str, Any]) -> str:
    return str(r.get("requested_size") or f"{r.get('width')}x{r.get('height')}")


def tags_of(r: Mapping[str, Any]) -> list[str]:
    tags = r.get("tags")
    if isinstance(tags, list):  # `tags: [nature]`: names
        return [str(t) for t in tags]
    if not isinstance(tags, Mapping):
        return []
    # A name in a manifest that also has mapping tags is stored as name: "": show the name.
    return [str(k) if v in ("", None) else f"{k}={v}" for k, v in tags.items()]


def references(r: Mapping[str, Any]) -> list[list[str]]:
    """[label, tooltip] for an edit's inputs: file names (sha256 on hover), the mask marked."""
    found = r.get("references")
    items = found if isinstance(found, list) else []
    out: list[list[str]] = []
    for label, item in [*(("ref", i) for i in items), ("mask", r.get("mask"))]:
        if isinstance(item, Mapping):
            where = str(item.get("path") or item.get("url") or "")
            name = where.rsplit("/", 1)[-1][:40] or where[:40]
            out.append([f"{label}: {name}", f"{where} sha256 {item.get('sha256') or '?'}"])
    return out


def _int(x: Any) -> int | None:
    return x if isinstance(x, int) and not isinstance(x, bool) else None


def _number(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def epoch(r: Mapping[str, Any]) -> float | None:
    """Completion time in epoch seconds (the download time when completion is unknown)."""
    for key in ("completed_at", "downloaded_at"):
        text = r.get(key)
        if isinstance(text, str):
            try:
                return round(datetime.fromisoformat(text).timestamp(), 3)
            except ValueError:
                continue
    return None


def record(r: Mapping[str, Any], thumb: str | None) -> list[Any]:
    """A card: [file, thumbnail sha256 or null, width, height, prompt, prompt id, image
    index, quality, size, tags, cost, references, take, replaces, blank]. The order is
    gallery.js's ``card``, which reads a 16th item, the image's mark, that the build appends to
    a marked image's. The take is the job's ``variant``: which of a ``repeat``'s requests made
    the image; ``replaces``: the rejected image a ``run --replace-rejected`` take replaces, or
    ""; ``blank``: the image is near-uniform (outputs/quality.py)."""
    return [
        str(r["file_name"]),
        thumb,
        _int(r.get("width")),
        _int(r.get("height")),
        str(r.get("prompt") or ""),
        str(r.get("prompt_id") or ""),
        _int(r.get("image_index")),
        str(r.get("quality") or ""),
        size_of(r),
        tags_of(r),
        _number(r.get("cost_estimate")),
        references(r),
        _int(r.get("variant")),
        str(r.get("replaces") or ""),
        r.get("blank") is True,
    ]


def take_key(r: Mapping[str, Any], rec: Sequence[Any]) -> str:
    """The "takes side by side" sort's key: prompt id, the request apart from its take (a
    short digest of prompt, endpoint, size, quality, format and inputs), take, image."""
    request = [rec[4], r.get("endpoint"), rec[8], rec[7], r.get("output_format"), rec[11]]
    digest = hashlib.sha256(json.dumps(request, default=str).encode()).hexdigest()[:8]
    return f"{rec[5]}\t{digest}\t{rec[12] or 0:06d}\t{rec[6] or 0:04d}"


def search_text(r: Mapping[str, Any], rec: Sequence[Any]) -> str:
    """What the search box matches, lowercased: prompt, prompt id, tags, vars, references.
    It starts with the prompt, so sorting these texts sorts by prompt (case aside)."""
    words = [rec[4], rec[5], *rec[9]]
    if isinstance(r.get("vars"), Mapping):
        words += [str(v) for v in r["vars"].values()]
    words += [name for name, _ in rec[11]]
    return "\n".join(words).lower()


class _Codes:
    """A chunk's dictionary for one string column: value -> code, in first-seen order."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self._index: dict[str, int] = {}

    def code(self, value: Any) -> int:
        key = value if isinstance(value, str) else json.dumps(value)
        found = self._index.get(key)
        if found is None:
            found = self._index[key] = len(self.values)
            self.values.append(value)
        return found


def summary(rows: Sequence[Mapping[str, Any]], recs: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """The columns of a chunk: codes into its dictionaries, then cost, time, pixel area and
    the blank flag (1 or 0).
    ``recs`` are the rows' :func:`record` (derived once a row)."""
    dicts = {k: _Codes() for k in ("prompt", "size", "quality", "tags", "text", "take")}
    cols: dict[str, list[Any]] = {k: [] for k in (*dicts, "cost", "time", "area", "blank")}
    for r, rec in zip(rows, recs, strict=True):
        cols["prompt"].append(dicts["prompt"].code(rec[5]))
        cols["size"].append(dicts["size"].code(rec[8]))
        cols["quality"].append(dicts["quality"].code(rec[7]))
        cols["tags"].append(dicts["tags"].code(rec[9]))
        cols["text"].append(dicts["text"].code(search_text(r, rec)))
        cols["take"].append(dicts["take"].code(take_key(r, rec)))
        cols["cost"].append(rec[10])
        cols["time"].append(epoch(r))
        w, h = rec[2], rec[3]
        cols["area"].append(w * h if w is not None and h is not None else None)
        cols["blank"].append(1 if rec[14] else 0)
    return {"n": len(rows), "dict": {k: d.values for k, d in dicts.items()}, "cols": cols}


# ---- the aggregates ------------------------------------------------------------------------


@dataclass
class Totals:
    """The header's figures and the filters' options over the rows read so far."""

    rows: int = 0
    bytes: int = 0
    cost: float = 0.0  # the rows' estimates, for a folder without its journal
    missing: int = 0
    stale: int = 0  # rows left out: images of prompts no longer in the manifest
    blank: int = 0  # rows flagged blank (outputs/quality.py)
    facets: dict[str, dict[str, int]] = field(default_factory=lambda: {f: {} for f in FACETS})
    unlisted: dict[str, int] = field(default_factory=lambda: {f: 0 for f in FACETS})

    def add(self, r: Mapping[str, Any], rec: Sequence[Any], *, missing: bool) -> None:
        """Count row ``r`` (``rec`` is its :func:`record`)."""
        self.rows += 1
        self.bytes += _int(r.get("bytes")) or 0
        self.cost += rec[10] or 0.0
        self.missing += missing
        self.blank += r.get("blank") is True
        values = {"prompt": [rec[5]], "size": [rec[8]], "quality": [rec[7]], "tag": rec[9]}
        for facet, found in values.items():
            counts = self.facets[facet]
            for v in found:
                if v in counts:
                    counts[v] += 1
                elif len(counts) < FACET_CAP:
                    counts[v] = 1
                else:  # a million prompt ids would make the page huge: search finds them
                    self.unlisted[facet] += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "bytes": self.bytes,
            "cost": self.cost,
            "missing": self.missing,
            "stale": self.stale,
            "blank": self.blank,
            "facets": {k: dict(v) for k, v in self.facets.items()},
            "unlisted": dict(self.unlisted),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Totals:
        return cls(
            int(d["rows"]),
            int(d["bytes"]),
            float(d["cost"]),
            int(d["missing"]),
            int(d["stale"]),
            int(d["blank"]),
            {f: {str(k): int(n) for k, n in d["facets"][f].items()} for f in FACETS},
            {f: int(d["unlisted"][f]) for f in FACETS},
        )


# ---- failures ----------------------------------------------------------------------------


def failure_record(f: Mapping[str, Any], size: str, quality: str) -> list[Any]:
    """[prompt id, prompt, size, quality, class, message, attempts, job id (16)]."""
    return [
        str(f.get("prompt_id") or ""),
        str(f.get("prompt") or ""),
        size,
        quality,
        str(f.get("class") or ""),
        str(f.get("message") or ""),
        _int(f.get("attempts")),
        str(f.get("job_id") or "")[:16],
    ]
