"""Request ids fsynced off the event loop, one fsync for many: ``GroupSync`` and
``WalSync``, and the promise they keep in a run — a job's request id is committed and on disk
before anything else happens to that job."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_journal_support import handle, open_journal, spec
from test_scheduler_support import Rig

from batchgen.journal.groupsync import GroupSync
from batchgen.journal.writer import Journal
from batchgen.planning.jobs import JobState
from batchgen.running.events import Event, Submitted

S = JobState


async def test_waiters_share_one_fsync_that_began_after_they_did() -> None:
    log: list[str] = []
    gate = threading.Event()

    def sync() -> None:
        log.append("start")
        gate.wait(5)
        log.append("end")

    g = GroupSync(sync)
    first = asyncio.ensure_future(g.wait())
    await asyncio.sleep(0.05)  # the first fsync is under way...
    log.append("commits")  # ...when these ten commit: it cannot cover them
    rest = [asyncio.ensure_future(g.wait()) for _ in range(10)]
    await asyncio.sleep(0.05)
    assert not any(t.done() for t in rest)
    gate.set()
    await asyncio.gather(first, *rest)
    assert log == ["start", "commits", "end", "start", "end"]
    assert g.syncs == 2


async def test_a_failed_fsync_reaches_every_waiter_and_the_next_one_runs() -> None:
    calls = 0

    def sync() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            time.sleep(0.05)
            raise OSError(5, "Input/output error")

    g = GroupSync(sync)
    waiters = [asyncio.ensure_future(g.wait()) for _ in range(3)]
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert isinstance(results[0], OSError)
    # the others asked while the first ran: they got a fsync of their own, which worked
    assert results[1:] == [None, None] and calls == 2


async def test_a_cancelled_waiter_does_not_cancel_the_others_fsync() -> None:
    gate = threading.Event()
    g = GroupSync(lambda: gate.wait(5) and None)
    a, b = asyncio.ensure_future(g.wait()), asyncio.ensure_future(g.wait())
    await asyncio.sleep(0.02)
    a.cancel()
    gate.set()
    await b
    with pytest.raises(asyncio.CancelledError):
        await a


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc")
def test_sync_wal_fsyncs_the_wal_file_and_once_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    path = tmp_path / "out" / "journal.sqlite"
    with open_journal(path) as j:
        j.add_jobs([spec(0), spec(1)])
        rows = j.claim(2)
        monkeypatch.setattr(os, "fsync", fsync)
        for r in rows:
            j.set_submitted(r.job_id, handle(f"req-{r.spec.prompt_id}"), sync=False)
            j.sync_wal()
        assert synced == [f"{path}-wal", str(path.parent), f"{path}-wal"]
        assert [r.request_id for r in j.attached()] == ["req-p0", "req-p1"]


async def test_in_a_run_each_request_id_is_on_disk_before_its_job_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log: list[tuple[str, Any]] = []
    real_submitted, real_sync = Journal.set_submitted, Journal.sync_wal

    def set_submitted(self: Journal, job_id: str, *a: Any, **kw: Any) -> None:
        real_submitted(self, job_id, *a, **kw)
        log.append(("commit", job_id))

    def sync_wal(self: Journal) -> None:
        log.append(("sync", "start"))
        time.sleep(0.02)  # a slow disk: jobs pile up behind each fsync
        real_sync(self)
        log.append(("sync", "end"))

    monkeypatch.setattr(Journal, "set_submitted", set_submitted)
    monkeypatch.setattr(Journal, "sync_wal", sync_wal)

    def control(_: Any, e: Event) -> None:
        if isinstance(e, Submitted):  # what the scheduler does once the submit is recorded
            log.append(("goes on", e.job_id))

    rig = Rig(tmp_path, 24)
    res = await rig.run(concurrency=12, control=control)
    assert res.error is None and rig.states() == {S.DOWNLOADED: 24}
    for job in {j for kind, j in log if kind == "commit"}:
        committed = log.index(("commit", job))
        goes_on = log.index(("goes on", job))
        started = [i for i, e in enumerate(log) if e == ("sync", "start") and i > committed]
        ended = [i for i, e in enumerate(log) if e == ("sync", "end") and i > started[0]]
        assert ended[0] < goes_on, job
    syncs = log.count(("sync", "start"))
    assert syncs < 24  # grouped: several request ids per fsync
    assert res.sched.durable.syncs == syncs
