"""The static HTML gallery of an output folder: ``index.html`` and ``.thumbs/``.

One page that works from ``file://`` with no server and no network: cards are rendered here
(so the page shows its images even with scripts off), and an inlined script only filters them.
A Content-Security-Policy allows nothing but the page's own files and its one script (by hash),
so even a bug could not make the page load a remote URL. Every piece of user text (prompts,
ids, tags, error messages) goes through :func:`html.escape`.

Thumbnails are small JPEGs named by the image's sha256 (``.thumbs/ab/ab12….jpg``): an
unchanged image keeps its thumbnail across rebuilds, and a replaced one gets a new name, so a
browser never shows a stale cached thumbnail. The folder is hidden so that ImageFolder skips it.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image

from batchgen._version import __version__
from batchgen.errors import JournalError
from batchgen.journal.writer import JOURNAL_NAME, Journal
from batchgen.outputs.index import read_failures, read_index

THUMBS = ".thumbs"
THUMB_SIDE = 320
THUMB_QUALITY = 80
GALLERY = "index.html"


@dataclass(frozen=True, slots=True)
class GalleryReport:
    path: Path
    images: int
    thumbnails_made: int
    missing: int  # index rows whose file is not on disk
    failures: int


def thumb_name(sha256: str) -> str:
    return f"{THUMBS}/{sha256[:2]}/{sha256}.jpg"


def make_thumbnail(src: Path, dest: Path, side: int = THUMB_SIDE) -> bool:
    """Write a JPEG of ``src`` fitting in ``side``×``side``; False if ``src`` is unreadable."""
    try:
        with Image.open(src, formats=["PNG", "JPEG", "WEBP"]) as im:
            im.draft("RGB", (side, side))  # JPEG: decode at reduced scale, much faster
            # Bilinear, not Pillow's default bicubic: a third less CPU for a 320 px card
            # image (decoded by the draft at no more than twice that) that looks the same.
            im.thumbnail((side, side), resample=Image.Resampling.BILINEAR, reducing_gap=2.0)
            rgb = im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    rgb.save(tmp, "JPEG", quality=THUMB_QUALITY, optimize=True)
    os.replace(tmp, dest)
    return True


def _ensure_thumbs(
    out_dir: Path, rows: Sequence[Mapping[str, Any]], workers: int
) -> tuple[set[str], int]:
    """Make missing thumbnails (in threads: Pillow decodes without the GIL).

    Returns the checksums that have a thumbnail, and how many were made now."""
    todo: dict[str, Path] = {}
    have: set[str] = set()
    for r in rows:
        sha, src = str(r.get("sha256") or ""), out_dir / str(r["file_name"])
        if len(sha) != 64 or not all(c in "0123456789abcdef" for c in sha) or not src.is_file():
            continue
        if (out_dir / thumb_name(sha)).is_file():
            have.add(sha)
        else:
            todo[sha] = src
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        made = pool.map(
            lambda kv: (kv[0], make_thumbnail(kv[1], out_dir / thumb_name(kv[0]))), todo.items()
        )
        new = {sha for sha, ok in made if ok}
    return have | new, len(new)


def build_gallery(
    out_dir: Path, *, title: str | None = None, workers: int | None = None
) -> GalleryReport:
    """(Re)write ``out_dir/index.html`` from the index, making any missing thumbnails."""
    rows = sorted(read_index(out_dir), key=lambda r: (str(r.get("prompt_id")), r["file_name"]))
    failures = read_failures(out_dir)
    thumbs, made = _ensure_thumbs(out_dir, rows, workers or os.cpu_count() or 2)
    missing = sum(1 for r in rows if not (out_dir / str(r["file_name"])).is_file())
    page = render_page(
        rows, failures, thumbs, title=title or out_dir.resolve().name, missing=missing,
        spend=journal_spend(out_dir),
    )  # fmt: skip
    dest = out_dir / GALLERY
    tmp = dest.with_name(dest.name + ".part")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, dest)
    return GalleryReport(dest, len(rows), made, missing, len(failures))


# ---- rendering: pure functions of the rows -------------------------------------------------

_e = html.escape  # quote=True by default: safe in text and in double-quoted attributes


def _asset(name: str) -> str:
    return resources.files("batchgen.outputs.gallery_assets").joinpath(name).read_text("utf-8")


def _href(rel: str) -> str:
    """A relative file name as an escaped URL attribute value (each segment %-quoted)."""
    return _e(urllib.parse.quote(rel, safe="/"))


def _size_of(r: Mapping[str, Any]) -> str:
    return str(r.get("requested_size") or f"{r.get('width')}x{r.get('height')}")


def _tags(r: Mapping[str, Any]) -> list[str]:
    tags = r.get("tags")
    if isinstance(tags, list):  # `tags: [nature]`: names
        return [str(t) for t in tags]
    if not isinstance(tags, Mapping):
        return []
    # A name in a manifest that also has mapping tags is stored as name: "": show the name.
    return [str(k) if v in ("", None) else f"{k}={v}" for k, v in tags.items()]


def _money(x: float) -> str:
    return f"${x:,.2f}" if x >= 0.1 or x == 0 else f"${x:.3f}"


def _bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n} bytes"


def _options(element_id: str, label: str, counts: Counter[str]) -> str:
    opts = "".join(
        f'<option value="{_e(v)}">{_e(v)} ({n})</option>' for v, n in sorted(counts.items()) if v
    )
    return (
        f'<label>{_e(label)} <select id="{element_id}"><option value="">all</option>'
        f"{opts}</select></label>"
    )


def _card(r: Mapping[str, Any], thumbs: set[str]) -> str:
    sha = str(r.get("sha256") or "")
    prompt = str(r.get("prompt") or "")
    tags = _tags(r)
    words = [prompt, str(r.get("prompt_id") or ""), *tags]
    if isinstance(r.get("vars"), Mapping):
        words += [str(v) for v in r["vars"].values()]
    if sha in thumbs:
        w, h = r.get("width") or 1, r.get("height") or 1
        scale = THUMB_SIDE / max(int(w), int(h), 1)
        img = (
            f'<img src="{_href(thumb_name(sha))}" loading="lazy" decoding="async" '
            f'width="{round(int(w) * scale)}" height="{round(int(h) * scale)}" '
            f'alt="{_e(prompt[:200])}">'
        )
    else:
        img = '<span class="missing">image missing</span>'
    cost = r.get("cost_estimate")
    refs = _references(r)
    words += [name for name, _ in refs]
    meta = [
        f"<span>{_e(str(r.get('width')))}×{_e(str(r.get('height')))}</span>",
        f"<span>{_e(str(r.get('quality') or ''))}</span>",
        f"<span>{_e(_money(float(cost)))}</span>" if isinstance(cost, int | float) else "",
        f"<span>{_e(str(r.get('prompt_id') or ''))} #{_e(str(r.get('image_index')))}</span>",
        *(f'<span class="tag">{_e(t)}</span>' for t in tags),
        *(f'<span class="ref" title="{_e(title)}">{_e(name)}</span>' for name, title in refs),
    ]
    return (
        f'<article class="card" data-prompt-id="{_e(str(r.get("prompt_id") or ""))}" '
        f'data-size="{_e(_size_of(r))}" data-quality="{_e(str(r.get("quality") or ""))}" '
        f'data-tags="{_e(json.dumps(tags))}" data-search="{_e(" ".join(words).lower())}">'
        f'<a class="thumb" href="{_href(str(r["file_name"]))}">{img}</a>'
        f'<div class="body"><p class="prompt">{_e(prompt)}</p>'
        f'<div class="meta">{"".join(meta)}</div></div></article>'
    )


def _references(r: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, tooltip) for an edit's inputs: file names (sha256 on hover), the mask marked."""
    found = r.get("references")
    items = found if isinstance(found, list) else []
    out: list[tuple[str, str]] = []
    for label, item in [*(("ref", i) for i in items), ("mask", r.get("mask"))]:
        if isinstance(item, Mapping):
            where = str(item.get("path") or item.get("url") or "")
            name = where.rsplit("/", 1)[-1][:40] or where[:40]
            out.append((f"{label}: {name}", f"{where} sha256 {item.get('sha256') or '?'}"))
    return out


def _failures_table(failures: Iterable[Mapping[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{_e(str(f.get('prompt_id') or ''))}</td><td>{_e(str(f.get('prompt') or ''))}"
        f'</td><td class="class">{_e(str(f.get("class") or ""))}</td>'
        f"<td>{_e(str(f.get('message') or ''))}</td><td>{_e(str(f.get('attempts') or ''))}</td>"
        f"<td><code>{_e(str(f.get('job_id') or '')[:16])}</code></td></tr>"
        for f in failures
    )
    if not rows:
        return '<p class="empty">No failures.</p>'
    head = "".join(
        f"<th>{h}</th>" for h in ("prompt id", "prompt", "class", "message", "attempts", "job")
    )
    return f'<table class="failures"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def _total_cost(rows: Iterable[Mapping[str, Any]]) -> float:
    """The sum of the rows' estimates (each row carries its image's share of the job's)."""
    return sum(float(c) for r in rows if isinstance(c := r.get("cost_estimate"), int | float))


def journal_spend(out_dir: Path) -> tuple[float, float] | None:
    """(spent, rehearsal) as the journal counts them: the one figure the run summary,
    ``batchgen status`` and ``--max-cost`` use. None for a folder without its journal."""
    path = out_dir / JOURNAL_NAME
    if not path.is_file():
        return None
    try:
        with Journal.open_readonly(path) as reader:
            t = reader.tallies()
    except JournalError:
        return None
    return t.spent, t.rehearsal


def _spend_text(rows: Iterable[Mapping[str, Any]], spend: tuple[float, float] | None) -> str:
    if spend is None:  # a copied dataset: what its images' estimates add up to
        return f"<span><b>{_e(_money(_total_cost(rows)))}</b> estimated cost</span>"
    spent, rehearsal = spend
    parts = []
    if spent or not rehearsal:
        parts.append(f"<span><b>{_e(_money(spent))}</b> spent (estimated)</span>")
    if rehearsal:
        parts.append(
            f"<span>rehearsal: <b>{_e(_money(rehearsal))}</b> on fal, nothing billed</span>"
        )
    return "".join(parts)


def render_page(
    rows: Sequence[Mapping[str, Any]],
    failures: Sequence[Mapping[str, Any]],
    thumbs: set[str],
    *,
    title: str,
    missing: int = 0,
    spend: tuple[float, float] | None = None,
) -> str:
    """The whole page as text: a pure function of the index rows and the thumbnails present."""
    script = _asset("gallery.js")
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    csp = (
        f"default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'"
    )
    jobs = len({r.get("job_id") for r in rows})
    total_bytes = sum(int(r.get("bytes") or 0) for r in rows)
    totals = [
        f"<span><b>{len(rows):,}</b> images</span>",
        f"<span><b>{jobs:,}</b> jobs</span>",
        f"<span><b>{len(failures):,}</b> failed</span>",
        _spend_text(rows, spend),
        f"<span><b>{_bytes(total_bytes)}</b></span>",
        f"<span><b>{missing:,}</b> missing files</span>" if missing else "",
        f'<span>showing <b id="shown">{len(rows):,}</b></span>',
    ]
    filters = "".join(
        [
            _options("f-prompt", "prompt", Counter(str(r.get("prompt_id") or "") for r in rows)),
            _options("f-size", "size", Counter(_size_of(r) for r in rows)),
            _options("f-quality", "quality", Counter(str(r.get("quality") or "") for r in rows)),
            _options("f-tag", "tag", Counter(t for r in rows for t in _tags(r))),
            '<input id="q" type="search" placeholder="search prompts" aria-label="search">',
        ]
    )
    cards = "\n".join(_card(r, thumbs) for r in rows)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_e(csp)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="batchgen {_e(__version__)}">
<title>{_e(title)} · batchgen</title>
<style>{_asset("gallery.css")}</style></head>
<body><header><h1>{_e(title)}</h1>
<div class="totals">{"".join(totals)}</div>
<div class="filters">{filters}</div></header>
<main><section class="grid" id="cards">
{cards}
</section>
<h2 id="failures">Failures ({len(failures):,})</h2>
{_failures_table(failures)}</main>
<script>{script}</script>
</body></html>
"""
