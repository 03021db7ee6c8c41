"""Every recovery path keeps the promises the main one does, through the scheduler
and the emulator in-process: a paid image is fetched, never paid for again while fal still
holds it; what fal lost is resubmitted and counted; an outage fails nothing; failures.jsonl,
status, the gallery and the run summary tell the same, current truth."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_scheduler_support import Rig, submits_explained

from batchgen.emulator.faults import FaultSpec
from batchgen.journal.writer import JOURNAL_NAME, Journal
from batchgen.outputs.gallery import build_gallery, journal_spend
from batchgen.outputs.index import METADATA, append_rows, read_failures, read_index
from batchgen.outputs.status import build_report
from batchgen.planning.jobs import JobState
from batchgen.running.events import (
    BudgetReached,
    Failed,
    Finished,
    Reachable,
    Requeued,
    Resumed,
    Retrying,
    Unreachable,
)

S = JobState


def faults_off(rig: Rig) -> None:
    """The emulator serves again as it should (it keeps every request it holds)."""
    rig.app.state.emulator.dice.spec = FaultSpec()


def billed(rig: Rig) -> Counter[int]:
    with rig.journal() as j:
        return Counter(r.billed for r in j.iter_jobs())


# -- a paid image is fetched, never paid again ------------------------------------------------


async def test_truncated_media_then_retry_failed_downloads_every_image_with_no_new_submit(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, 6, emulator={"faults": "truncate=1.0"})
    first = await rig.run(concurrency=3)
    assert rig.states() == {S.FAILED: 6}
    assert {e.reason for e in first.of(Failed)} == {"download_truncated"}
    with rig.journal() as j:  # each kept its request and result: the image is paid for
        assert all(r.request_id and r.result for r in j.iter_jobs(S.FAILED))
    assert rig.stats()["submits_accepted"] == 6

    faults_off(rig)  # the media serve again
    second = await rig.run(concurrency=3, retry_failed=True)
    assert rig.states() == {S.DOWNLOADED: 6}
    assert rig.stats()["submits_accepted"] == 6  # not one new submit: the emulator says so
    assert billed(rig) == {1: 6}  # and the journal never counts a second charge
    assert second.of(Resumed)[0].redownload == 6
    assert second.sched.stats.redownloaded == 6  # the summary names it
    assert read_failures(rig.out) == []  # failures.jsonl: exactly the jobs failed now
    rig.check_folder()


async def test_a_plain_rerun_fetches_download_failures_again_too(tmp_path: Path) -> None:
    rig = Rig(tmp_path, 3, emulator={"faults": "truncate=1.0"})
    await rig.run(concurrency=3)
    faults_off(rig)
    await rig.run(concurrency=3)
    assert rig.states() == {S.DOWNLOADED: 3}
    assert rig.stats()["submits_accepted"] == 3


async def test_a_failed_download_rereads_the_result_within_the_run(tmp_path: Path) -> None:
    # Half the media GETs are cut short; fresh results and retries get every image home.
    rig = Rig(tmp_path, 8, emulator={"faults": "truncate=0.5", "seed": 3})
    run = await rig.run(concurrency=4)
    assert rig.states() == {S.DOWNLOADED: 8}
    assert rig.stats()["submits_accepted"] == 8
    assert rig.stats()["media_truncated"] > 0
    with rig.journal() as j:
        rereads = [e for e in j.events() if e[2] == "download"]
    assert rereads and not run.of(Failed)
    rig.check_folder()


async def test_media_fal_forgot_is_resubmitted_and_counted_lost_never_failed(
    tmp_path: Path,
) -> None:
    # Every result is fetched, every download is slow; stop once all results are in.
    rig = Rig(tmp_path, 4, emulator={"faults": "slow_media=1.0", "slow_media_s": 5.0})
    finished: list[str] = []

    def stop_when_all_finished(sched: Any, e: Any) -> None:
        if isinstance(e, Finished):
            finished.append(e.job_id)
            if len(finished) == 4:
                sched.stop(now=True)

    await rig.run(concurrency=4, control=stop_when_all_finished)
    assert rig.states() == {S.COMPLETED: 4}

    rig.new_emulator()  # fal has forgotten every request and its media
    second = await rig.run(concurrency=4)
    assert rig.states() == {S.DOWNLOADED: 4}
    lost = [e for e in second.of(Requeued) if e.lost]
    assert len(lost) == 4 and not second.of(Failed)
    with rig.journal() as j:
        assert j.tallies().lost == 4
        assert all(r.billed == 2 for r in j.iter_jobs())  # the lost one was paid, and the new
    assert rig.stats()["submits_accepted"] == 4  # the new emulator: one fresh request each


# -- failures.jsonl, status, the gallery and the summary agree --------------------------------


async def test_after_retry_failed_failures_jsonl_gallery_and_status_say_the_same(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, 10, emulator={"faults": "content_policy=0.5", "seed": 5})
    await rig.run(concurrency=5)
    failed_first = len(read_failures(rig.out))
    assert failed_first > 0

    faults_off(rig)
    await rig.run(concurrency=5, retry_failed=True)
    assert rig.states() == {S.DOWNLOADED: 10}
    assert read_failures(rig.out) == []
    gallery = build_gallery(rig.out)
    page = gallery.path.read_text()
    assert gallery.failures == 0 and "<b>0</b> failed" in page
    with rig.journal() as j:
        report = build_report(j, rig.out, now=0.0, writer_pid=None)
    assert report.counts[str(S.FAILED)] == 0 == gallery.failures
    rig.check_folder()


async def test_one_definition_of_spend_for_summary_status_gallery_and_budget(
    tmp_path: Path,
) -> None:
    # Dropped submits (possible duplicates: fal keeps no payloads to find them by) and lost
    # results make spend differ from the plan.
    rig = Rig(
        tmp_path,
        12,
        emulator={"faults": "submitdrop=0.3,runner_error=0.2", "seed": 9, "announce": False},
    )
    await rig.run(concurrency=4, no_store_io=True)
    with rig.journal() as j:
        summary_figure = j.tallies().spent  # what the runner's summary reads (RunResult.spent)
        status_figure = build_report(j, rig.out, now=0.0, writer_pid=None).spent_usd
        dups = j.tallies().possible_duplicates
    assert dups > 0  # the faults really made the folder's spend differ from one per job
    assert summary_figure > 0.12 - 1e-9
    gallery = journal_spend(rig.out)
    assert gallery is not None and gallery[0] == pytest.approx(summary_figure)
    assert status_figure == pytest.approx(summary_figure, abs=1e-4)
    page = build_gallery(rig.out).path.read_text()
    assert f"${summary_figure:,.2f}</b> spent" in page
    # --max-cost caps the same figure: a cap just under it stops at once, naming it.
    cap = summary_figure - 0.001
    budget = await rig.run(concurrency=4, retry_failed=True, max_cost=cap, no_store_io=True)
    stops = budget.of(BudgetReached)
    if stops:  # only when something was left to submit
        assert stops[0].spent == pytest.approx(summary_figure)


# -- an outage is a run-level condition ------------------------------------------------------


class Outage(httpx.AsyncBaseTransport):
    """No connection at all for the first ``refusals`` requests, then the real server."""

    def __init__(self, inner: httpx.AsyncBaseTransport, refusals: int) -> None:
        self.inner, self.refusals = inner, refusals

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.refusals > 0:
            self.refusals -= 1
            raise httpx.ConnectError("Name or service not known", request=request)
        return await self.inner.handle_async_request(request)


class FakeTime:
    """A clock that moves only when the run sleeps: backoff waits pass in no real time. Each
    wait counts at least half a second (the rig's backoff has no jitter, so it asks for 0)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.5)
        await asyncio.sleep(0)


async def test_an_outage_is_announced_once_fails_nothing_and_ends(tmp_path: Path) -> None:
    rig = Rig(tmp_path, 6)
    t = FakeTime()
    transport = Outage(httpx.ASGITransport(app=rig.app), refusals=12)
    run = await rig.run(concurrency=3, transport=transport, clock=t.clock, sleep=t.sleep)
    assert rig.states() == {S.DOWNLOADED: 6}  # nobody failed for the server's absence
    assert not run.of(Failed)
    (down,) = run.of(Unreachable)  # said once, not once per retry
    assert down.seconds >= 3.0 and "ConnectError" in down.message
    (up,) = run.of(Reachable)
    assert up.seconds >= down.seconds
    assert run.events.index(down) < run.events.index(up)
    submits_explained(rig, [run])


async def test_a_long_outage_never_fails_a_job_for_it(tmp_path: Path) -> None:
    # Far more refusals than the submit's tries for a refusal that created nothing (8).
    rig = Rig(tmp_path, 2)
    t = FakeTime()
    transport = Outage(httpx.ASGITransport(app=rig.app), refusals=40)
    run = await rig.run(concurrency=2, transport=transport, clock=t.clock, sleep=t.sleep)
    assert rig.states() == {S.DOWNLOADED: 2} and not run.of(Failed)


async def test_a_stop_during_an_outage_ends_at_once_with_every_claim_given_back(
    tmp_path: Path,
) -> None:
    # Ctrl-C while the server refuses every connection: the submit waiting out its backoff
    # gives its job back now (nothing was sent), rather than after a backoff that may last
    # many seconds. This sleep never ends on its own: without the stop's wake-up, no end.
    rig = Rig(tmp_path, 3)
    transport = Outage(httpx.ASGITransport(app=rig.app), refusals=10**6)
    waits: list[float] = []

    async def endless(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.Event().wait()

    def control(sched: Any, event: object) -> None:
        if isinstance(event, Retrying) and not waits:  # the first Ctrl-C, while they wait
            asyncio.get_running_loop().call_later(0.1, sched.stop)

    run = await asyncio.wait_for(
        rig.run(concurrency=3, transport=transport, sleep=endless, control=control), 10
    )
    assert len(waits) == 3  # each was waiting out a backoff when the stop came
    assert rig.states() == {S.PENDING: 3}  # nothing sent, nothing failed, nothing unknown
    assert not run.of(Failed) and run.error is None


# -- one writer per index file ---------------------------------------------------------------


def test_threads_appending_at_once_leave_no_blank_or_torn_line(tmp_path: Path) -> None:
    # The download pool appends from worker threads (asyncio.to_thread), eight at a time.
    # Rows larger than a page: another thread's fstat can see a row half copied in.
    def worker(w: int) -> None:
        for i in range(200):
            append_rows(tmp_path, [{"file_name": f"{w}/{i}.png", "pad": "x" * 6000}])

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    lines = (tmp_path / METADATA).read_bytes().split(b"\n")
    assert lines[-1] == b""  # ends with a newline
    assert b"" not in lines[:-1]  # and not one blank line in between
    assert len(read_index(tmp_path)) == 8 * 200


# -- an output folder is always a valid folder ------------------------------------------------


async def test_a_folder_where_every_job_failed_has_an_empty_index(tmp_path: Path) -> None:
    from batchgen.cli import main  # through the commands a user would run next

    rig = Rig(tmp_path, 3, emulator={"faults": "content_policy=1.0"})
    await rig.run(concurrency=3)
    assert rig.states() == {S.FAILED: 3}
    # The scheduler alone leaves no index (the runner writes it); the CLI tools must cope.
    (rig.out / METADATA).unlink(missing_ok=True)
    run_tools: Callable[[], Awaitable[list[int]]] = lambda: asyncio.to_thread(  # noqa: E731
        lambda: [
            main(["gallery", str(rig.out)]),
            main(["export", str(rig.out), "--format", "csv"]),
            main(["status", str(rig.out)]),
            main(["index", str(rig.out), "--rebuild"]),
        ]
    )
    assert await run_tools() == [0, 0, 0, 0]
    assert (rig.out / METADATA).read_bytes() == b""
    with Journal.open_readonly(rig.out / JOURNAL_NAME) as j:
        assert len(list(j.iter_jobs(S.FAILED))) == len(read_failures(rig.out)) == 3
