"""The gallery's ``index.html`` and its failures chunks.

The page is small whatever the folder holds: the header's figures, the filters' options (at
most ``FACET_CAP`` a facet), the pager and one script tag; the cards come from chunks. Every
piece of user text here (title, prompt ids, sizes, qualities, tags) goes through
:func:`html.escape`; in the chunks it is JSON that the script puts on the page with
``textContent``, never as HTML.

The Content-Security-Policy allows scripts from ``'self'`` only: no inline script, no eval,
nothing from the network (for a ``file://`` page Chromium counts every local file as
``'self'``; the script only ever adds ``<script>`` elements for chunk names it makes from
numbers). Images come from the folder; nothing may be fetched, posted or framed.

With scripts off the page says so and links the index, the failures and the images folder:
a plain page of a million cards is exactly what this design avoids.
"""

from __future__ import annotations

import contextlib
import html
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from batchgen._version import __version__
from batchgen.errors import JournalError
from batchgen.journal.bills import Billed
from batchgen.journal.query import JournalReader
from batchgen.journal.writer import JOURNAL_NAME, Journal
from batchgen.outputs import gallery_scan as scan
from batchgen.outputs.gallery_data import Totals, chunk_name, failure_record, write_script
from batchgen.outputs.index import FAILURES, METADATA, input_value
from batchgen.outputs.scan import parse_row
from batchgen.outputs.status import reconciled_when
from batchgen.planning.disk import size_text
from batchgen.planning.paths import size_label

_e = html.escape  # quote=True by default: safe in text and in double-quoted attributes

CSP = (
    "default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
    "script-src 'self'; base-uri 'none'; form-action 'none'"
)
SORTS = (
    ("", "as written"),
    ("-time", "newest first"),
    ("time", "oldest first"),
    ("prompt", "prompt A–Z"),
    ("take", "takes side by side"),
    ("-cost", "dearest first"),
    ("cost", "cheapest first"),
    ("-size", "largest first"),
    ("size", "smallest first"),
)


class Spend(NamedTuple):
    """What the journal says the folder cost: the estimate (the figure of the run summary,
    `batchgen status` and --max-cost), the rehearsal's, and fal's bill once reconciled."""

    spent: float
    rehearsal: float
    billed: Billed | None = None


@dataclass(frozen=True, slots=True)
class PageFacts:
    title: str
    totals: Totals
    jobs: int
    failures: int
    failure_chunks: int
    spend: Spend | None
    chunk_rows: int
    script: str
    groups: int = 0  # near-duplicate groups (gallery_dups) ...
    grouped: int = 0  # ... and the rows in them


def money(x: float) -> str:
    return f"${x:,.2f}" if x >= 0.1 or x == 0 else f"${x:.3f}"


def _bytes(n: int) -> str:
    return size_text(n)  # binary units, as every size batchgen prints


def _asset(name: str) -> str:
    return resources.files("batchgen.outputs.gallery_assets").joinpath(name).read_text("utf-8")


def _options(element_id: str, label: str, counts: dict[str, int], unlisted: int) -> str:
    opts = "".join(
        f'<option value="{_e(v)}">{_e(v)} ({n:,})</option>' for v, n in sorted(counts.items()) if v
    )
    more = (
        f'<option value="" disabled>… {unlisted:,} more rows: use the search box</option>'
        if unlisted
        else ""
    )
    return (
        f'<label>{_e(label)} <select id="{element_id}"><option value="">all</option>'
        f"{opts}{more}</select></label>"
    )


def _spend_text(cost: float, spend: Spend | None) -> str:
    if spend is None:  # a copied dataset: what its images' estimates add up to
        return f"<span><b>{_e(money(cost))}</b> estimated cost</span>"
    spent, rehearsal, billed = spend
    parts = []
    if billed is not None:  # what `batchgen reconcile` fetched, beside the estimate
        n = f"{billed.requests:,} request{'' if billed.requests == 1 else 's'}"
        late = ", before the last run started" if billed.before_last_run else ""
        parts.append(
            f"<span>billed by {_e(billed.server)} <b>{_e(money(billed.usd))}</b> for {n},"
            f" reconciled {_e(reconciled_when(billed))}{late}</span>"
        )
    if spent or not rehearsal:
        parts.append(f"<span><b>{_e(money(spent))}</b> spent (estimated)</span>")
    if rehearsal:
        parts.append(
            f"<span>rehearsal: <b>{_e(money(rehearsal))}</b> on fal, nothing billed</span>"
        )
    return "".join(parts)


def render_page(facts: PageFacts) -> str:
    """The whole page as text: a pure function of the totals (the rows are in the chunks)."""
    t = facts.totals
    totals = [
        f"<span><b>{t.rows:,}</b> images</span>",
        f"<span><b>{facts.jobs:,}</b> jobs</span>",
        f'<span><a href="#failures"><b>{facts.failures:,}</b> failed</a></span>',
        _spend_text(t.cost, facts.spend),
        f"<span><b>{_bytes(t.bytes)}</b></span>",
        f"<span><b>{t.missing:,}</b> missing files</span>" if t.missing else "",
        (
            f"<span><b>{t.stale:,}</b> stale (of prompts no longer in the manifest) left out:"
            " batchgen gallery --include-stale shows them</span>"
            if t.stale
            else ""
        ),
        '<span>showing <b id="shown">…</b></span><span id="status"></span>',
    ]
    labels = {"prompt": "prompt", "size": "size", "quality": "quality", "tag": "tag"}
    filters = [_options(f"f-{f}", label, t.facets[f], t.unlisted[f]) for f, label in labels.items()]
    sorts = "".join(f'<option value="{v}">{_e(label)}</option>' for v, label in SORTS)
    flags = (
        '<label>quality <select id="f-flag"><option value="">all</option>'
        f'<option value="blank">blank ({t.blank:,})</option>'
        f'<option value="dup">near duplicates ({facts.grouped:,} in {facts.groups:,} groups)'
        "</option></select></label>"
    )
    filters += [
        flags,
        '<input id="q" type="search" placeholder="search prompts" aria-label="search">',
        f'<label>sort <select id="sort">{sorts}</select></label>',
    ]
    pager = (
        '<nav class="pager" hidden><button type="button" data-go="-1">‹ previous</button>'
        '<span class="where"></span><button type="button" data-go="1">next ›</button></nav>'
    )
    data = (
        f'data-rows="{t.rows}" data-chunk-rows="{facts.chunk_rows}" '
        f'data-failures="{facts.failures}" data-failure-chunks="{facts.failure_chunks}"'
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="batchgen {_e(__version__)}">
<title>{_e(facts.title)} · batchgen</title>
<style>{_asset("gallery.css")}</style></head>
<body {data}><header><h1>{_e(facts.title)}</h1>
<div class="totals">{"".join(totals)}</div>
<div class="filters">{"".join(filters)}</div></header>
<noscript><p class="noscript">This gallery needs JavaScript to show its {t.rows:,} images
(a page with every card would be too big to open). Without it: the index
<a href="{METADATA}">{METADATA}</a> (one JSON row per image), the failures
<a href="{FAILURES}">{FAILURES}</a>, and the <a href="images/">images</a> folder.</p></noscript>
<main>{pager}<section class="grid" id="cards"></section>{pager}
<h2 id="failures">Failures ({facts.failures:,})</h2>
<div id="failure-list">{'<p class="empty">No failures.</p>' if not facts.failures else ""}</div>
<nav class="pager" id="failure-pager" hidden><button type="button" data-go="-1">‹ previous</button>
<span class="where"></span><button type="button" data-go="1">next ›</button></nav></main>
<script src="{_e(facts.script)}"></script>
</body></html>
"""


# ---- failures ----------------------------------------------------------------------------


def write_failures(out_dir: Path, chunk_rows: int) -> tuple[int, int]:
    """Write ``failures.jsonl`` as chunks (one row per job, the last written wins), with each
    job's size and quality from the journal; returns (failures, chunks)."""
    path = out_dir / FAILURES
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return 0, 0
    reader: JournalReader | None = None
    if (out_dir / JOURNAL_NAME).is_file():
        try:
            reader = Journal.open_readonly(out_dir / JOURNAL_NAME)
        except JournalError:
            reader = None
    count = chunks = 0
    with f, contextlib.closing(reader) if reader else contextlib.nullcontext():
        end = scan.complete_end(f)
        keys = scan.Keys()
        for off, raw in scan.lines(f, 0, end):
            if (row := parse_row(raw, "job_id")) is not None:
                keys.add(row["job_id"], row["job_id"], off)
        skip = keys.superseded(f, "job_id")
        batch: list[list[Any]] = []
        for off, raw in scan.lines(f, 0, end):
            row = None if off in skip else parse_row(raw, "job_id")
            if row is None:
                continue
            batch.append(failure_record(row, *_size_quality(reader, row["job_id"])))
            if len(batch) == chunk_rows:
                write_script(
                    out_dir, chunk_name("f", chunks), "batchgenGallery.failures", chunks, batch
                )
                count, chunks, batch = count + len(batch), chunks + 1, []
        if batch:
            write_script(
                out_dir, chunk_name("f", chunks), "batchgenGallery.failures", chunks, batch
            )
            count, chunks = count + len(batch), chunks + 1
    return count, chunks


def _size_quality(reader: JournalReader | None, job_id: str) -> tuple[str, str]:
    """A failed job's requested size and quality: failures.jsonl does not carry them."""
    if reader is None:
        return "", ""
    try:
        job = reader.get(job_id)
    except JournalError:
        return "", ""
    if job is None:
        return "", ""
    quality = input_value(job.spec, "quality")
    return size_label(input_value(job.spec, "image_size")), "" if quality is None else str(quality)
