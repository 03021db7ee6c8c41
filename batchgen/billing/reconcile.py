"""`batchgen reconcile`'s work: read a folder, fetch what its server billed, record it.

Which server: the one named (``--endpoint URL``), else the one the folder's requests went to
(fal when any did; the one ``--endpoint`` server otherwise). A folder made with ``--emulate``
cannot be reconciled: its requests were made by an emulator inside the run's own process,
which stopped with the run, and its record with it (a UsageError says so, and how to rehearse
a reconcile against ``batchgen emulator``).

What is fetched: the billing events of every request the folder made there (by id, 50 a
call), and every event of the folder's endpoints from its first request to now (to find what
was billed that the folder never learnt of), each in windows of at most 89 days (fal allows
90); an event seen both ways counts once. Nothing is written until all of it came: a refused
key (401, or a 403 for want of an admin key) leaves the journal as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from batchgen.billing.compare import Event, Folder, FolderJob, Reconciliation, compare
from batchgen.errors import AdminKeyRequired, JournalError, UsageError
from batchgen.fal.platform import BillingEvent, PlatformClient
from batchgen.journal.bills import reconcile_head, record_bills
from batchgen.journal.origin import FAL, server_of
from batchgen.journal.writer import JOURNAL_NAME, Journal, writer_pid
from batchgen.planning.gptimage import with_defaults

WINDOW = timedelta(days=89)
# Our clock against fal's, and a request's completion after the run that made it stopped.
SLACK = timedelta(hours=1)
PAGE = 100

EMULATE_FOLDER = (
    "{out} was made with --emulate: its requests were made by an emulator inside that run's"
    " process, which stopped with it, and fal's record of them never existed. A rehearsal's"
    " bill can be fetched from a 'batchgen emulator' that outlives the run: run with"
    " --endpoint URL, then 'batchgen reconcile {out} --endpoint URL' with an admin key"
    " (FAL_KEY=admin-...)"
)


def read_folder(out: Path, server: str | None) -> Folder:
    """One server's side of the folder (``server`` None: the folder's own, see above)."""
    path = out / JOURNAL_NAME
    with Journal.open_readonly(path) as reader:
        trail = reader.request_trail()
        jobs = list(reader.iter_jobs())
    where = {rid: server_of(o) for rid, o in trail.origins.items()}
    known = {server_of(j.origin) for j in jobs if j.origin} | set(where.values())
    if server is None:
        real = sorted(s for s in known if s is not None)
        if FAL in real or not known:
            server = FAL
        elif len(real) == 1:
            server = real[0]
        elif real:
            raise UsageError(
                f"{out} made requests at {len(real)} servers ({', '.join(real)}); name one"
                " with --endpoint URL"
            )
        else:
            raise UsageError(EMULATE_FOLDER.format(out=out))
    rids = {rid for rid, s in where.items() if s == server}
    if not rids and not any(server_of(j.origin) == server for j in jobs):
        went = sorted(s or "the emulator of --emulate" for s in known)
        said = f" (its requests went to {', '.join(went)})" if went else ""
        raise UsageError(f"{out} made no requests at {server}{said}: nothing to reconcile")
    mine = {trail.owners[rid] for rid in rids}
    folder = Folder(server=server, owners={r: trail.owners[r] for r in rids})
    folder.paid = trail.paid & rids
    for j in jobs:
        at_server = server_of(j.origin) == server
        if not (at_server or j.job_id in mine):
            continue
        quality = with_defaults(j.spec.endpoint, j.spec.input).get("quality")
        charged = j.billed + j.possible_duplicates if at_server else 0
        folder.jobs[j.job_id] = FolderJob(j.job_id, str(quality or "n/a"), j.cost, charged)
        folder.possible_duplicates += j.possible_duplicates if at_server else 0
        if j.spec.endpoint not in folder.endpoints:
            folder.endpoints.append(j.spec.endpoint)
    times = [trail.made_at[r] for r in rids]
    if times:
        folder.window = (min(times), max(times))
    return folder


def check_not_running(out: Path) -> None:
    pid = writer_pid(out / JOURNAL_NAME)
    if pid is not None:
        who = f" (pid {pid})" if pid > 0 else ""
        raise JournalError(f"a run is in progress in {out}{who}; reconcile it when the run ends")


def windows(start: datetime, end: datetime) -> Iterator[tuple[datetime, datetime]]:
    """``[start, end)`` in pieces fal accepts (at most 90 days each)."""
    while start < end:
        yield start, min(start + WINDOW, end)
        start += WINDOW


async def fetch(client: PlatformClient, folder: Folder, now: float) -> list[Event]:
    """Every billing event of the folder's requests and endpoints (see the module docstring)."""
    first = folder.window[0] if folder.window else now
    start = datetime.fromtimestamp(first, UTC) - SLACK
    end = datetime.fromtimestamp(now, UTC) + SLACK
    seen: dict[tuple[str, str | None, float], Event] = {}

    def add(e: BillingEvent) -> None:
        when = e.timestamp.isoformat() if e.timestamp is not None else None
        seen.setdefault(
            (e.request_id, when, e.cost_usd), Event(e.request_id, e.cost_usd, e.endpoint_id, when)
        )

    for a, b in windows(start, end):
        if folder.owners:
            async for e in client.billing_events(
                request_ids=sorted(folder.owners), start=a, end=b, limit=PAGE
            ):
                add(e)
        for endpoint in folder.endpoints:
            async for e in client.billing_events(start=a, end=b, endpoint_id=endpoint, limit=PAGE):
                add(e)
    return list(seen.values())


async def reconcile(
    out: Path,
    client_for: Callable[[str], PlatformClient],
    *,
    server: str | None,
    now: float,
) -> Reconciliation:
    """Fetch the bill of ``out`` (at ``server``, else its own), record it in the journal, and
    return it. ``client_for(server)`` gives the client for the server decided (``fal`` or a
    base URL). Raises UsageError for a folder made with --emulate, JournalError for a folder
    that is not one (or that a run holds), AdminKeyRequired or AuthError for a refused key
    (nothing written)."""
    check_not_running(out)
    folder = read_folder(out, server)
    try:
        events = await fetch(client_for(folder.server), folder, now)
    except AdminKeyRequired as exc:
        if folder.server == FAL:
            raise
        hint = "; batchgen's emulator takes any key starting with admin- as an admin key"
        raise AdminKeyRequired(f"{exc}{hint}") from None
    rec = compare(folder, events)
    summary = (
        f"{reconcile_head(folder.server)}${rec.billed_usd:.4f} for {rec.billed_requests}"
        " requests;"
        f" estimated ${rec.estimated_usd:.4f}; {len(rec.unknown_requests)} unknown,"
        f" {len(rec.billed_twice)} billed twice, {len(rec.not_billed)} not billed"
    )
    record_bills(out / JOURNAL_NAME, folder.server, rec.rows, summary, now=now)
    return rec
