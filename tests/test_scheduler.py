"""The scheduler end to end against the emulator in-process: what the server saw, what the
journal and the output folder hold."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import httpx
import pytest
from test_scheduler_support import FastClock, ManualClock, Rig, short_sleep, submits_explained

from batchgen.errors import AuthError
from batchgen.outputs.index import METADATA, read_rows
from batchgen.planning.jobs import JobState
from batchgen.running.events import (
    BudgetReached,
    Event,
    Failed,
    Finished,
    Found,
    Requeued,
    Resumed,
    Retrying,
    Saved,
    StopReason,
    SubmitLost,
    Submitted,
    WindowChanged,
)
from batchgen.running.scheduler import Scheduler
from batchgen.running.window import AutoWindow, FixedWindow

S = JobState


async def test_clean_run(tmp_path: Path) -> None:
    rig = Rig(tmp_path, 12)
    r = await rig.run(concurrency="4")
    assert r.error is None
    assert rig.states() == {S.DOWNLOADED: 12}
    stats = rig.stats()
    assert stats["submits_accepted"] == 12
    assert stats["duplicate_submits"] == 0
    assert stats["peak_in_progress"] <= 4  # never more than the window
    assert len(r.of(Saved)) == 12
    assert r.sched.stop_reason is None
    rig.check_folder()
    submits_explained(rig, [r])
    # at most 2 status-ish requests per job with the stream (fal-client polls ~20 times)
    assert stats.get("status_polls", 0) + stats.get("stream_connections", 0) <= 2 * 12


@pytest.mark.parametrize("seed", [1, 2])
async def test_flaky_profile_ends_done_or_failed_for_a_reason(tmp_path: Path, seed: int) -> None:
    rig = Rig(tmp_path, 40, emulator={"faults": "flaky", "seed": seed})
    r = await rig.run(concurrency="8")
    assert r.error is None
    with rig.journal() as j:
        rows = list(j.iter_jobs())
    assert {row.state for row in rows} <= {S.DOWNLOADED, S.FAILED}
    for row in rows:
        if row.state is S.FAILED:
            assert row.error_class and row.error  # a recorded, final reason
    rig.check_folder()
    submits_explained(rig, [r])
    stats = rig.stats()
    # every repeat of an input is explained by a drop or a failed run, never a blind retry
    explained = len([e for e in r.of(Requeued)]) + len(
        [e for e in r.of(Failed) if e.reason == "submit_dropped"]
    )
    assert stats["duplicate_submits"] <= explained
    # a dropped submit's request runs on fal unseen by us: the only way past the window
    assert stats["peak_in_progress"] <= 8 + stats["submits_dropped"]


async def test_hostile_profile_no_submit_without_a_reason(tmp_path: Path) -> None:
    rig = Rig(tmp_path, 30, emulator={"faults": "hostile", "seed": 7})
    r = await rig.run(concurrency="6", max_attempts=5)
    assert r.error is None
    assert set(rig.states()) <= {S.DOWNLOADED, S.FAILED}
    submits_explained(rig, [r])
    rig.check_folder()
    # The profile's lies were told (test_hostile_server aims each one and checks it in full).
    stats = rig.stats()
    assert stats["results_evil_name"] > 0 and stats["refusals_retryable"] > 0


async def test_a_dropped_submit_is_found_in_fals_history_not_sent_again(tmp_path: Path) -> None:
    rig = Rig(tmp_path, 10, emulator={"faults": "submitdrop=0.3", "seed": 1})
    r = await rig.run(concurrency="4", max_attempts=6)
    stats = rig.stats()
    assert stats["submits_dropped"] > 0
    lost = r.of(SubmitLost)
    assert len(lost) == stats["submits_dropped"]
    # each request the dropped answers made was found and followed: nothing paid twice
    assert sorted(e.job_id for e in r.of(Found)) == sorted(e.job_id for e in lost)
    assert stats["duplicate_submits"] == 0
    assert r.sched.stats.possible_duplicates == 0 and r.sched.stats.lookups >= 1
    assert set(rig.states()) == {S.DOWNLOADED}
    with rig.journal() as j:
        assert j.tallies().possible_duplicates == 0
    submits_explained(rig, [r])


async def test_auto_window_settles_at_the_hidden_limit(tmp_path: Path) -> None:
    # ~0.2 s per request: long next to our own bookkeeping, as fal's seconds are
    rig = Rig(tmp_path, 36, emulator={"concurrency_limit": 3, "time_scale": 0.05})
    window = AutoWindow()
    r = await rig.run(window=window)
    assert r.error is None
    assert rig.states() == {S.DOWNLOADED: 36}
    stats = rig.stats()
    # It used the whole account: three of ours ran at once...
    assert stats["peak_in_progress"] == 3
    # ...and it learned from a wait rather than piling requests into fal's queue (a window
    # that ignored waits would have queued up to 33 here).
    sizes = [e.size for e in r.of(WindowChanged)]
    shrinks = [b for a, b in zip([2, *sizes], sizes, strict=False) if b < a]
    assert shrinks, sizes
    assert stats["peak_queue_length"] <= 3
    # A wait never talks it below the limit: its estimate can only run high (a request that
    # finished before we saw it counts as running), so it never starves the account. Exactly
    # where it ends depends on how late a loaded machine sees completions, so that is a bound:
    # the exact ceiling (often 4 under load, or cleared by a late start) is window.py's tables.
    assert min(shrinks) >= 3, sizes
    assert window.size >= 3 and (window.ceiling is None or window.ceiling >= 3)


async def test_budget_stop_then_continue(tmp_path: Path) -> None:
    rig = Rig(tmp_path, 10)  # low quality 1024x768: $0.01 a job
    r1 = await rig.run(concurrency="2", max_cost=0.045)
    assert r1.sched.stop_reason is StopReason.BUDGET
    assert len(r1.of(BudgetReached)) == 1
    assert rig.stats()["submits_accepted"] == 4  # 4 × $0.01 fit under $0.045, a 5th would not
    with rig.journal() as j:
        assert j.spent_estimate() <= 0.045
    assert rig.states() == {S.DOWNLOADED: 4, S.PENDING: 6}
    r2 = await rig.run(concurrency="2", max_cost=1.0)
    assert r2.sched.stop_reason is None
    assert rig.states() == {S.DOWNLOADED: 10}
    assert rig.stats()["duplicate_submits"] == 0
    submits_explained(rig, [r1, r2])


async def test_stop_finishes_paid_work_then_resume(tmp_path: Path) -> None:
    rig = Rig(tmp_path, 20, emulator={"time_scale": 0.02})
    submitted: list[str] = []

    def control(sched: Scheduler, e: Event) -> None:
        if isinstance(e, Submitted):
            submitted.append(e.job_id)
            if len(submitted) == 5:
                sched.stop()  # what the first Ctrl-C does

    r1 = await rig.run(concurrency="4", control=control)
    assert r1.sched.stop_reason is StopReason.INTERRUPTED
    states = rig.states()
    # everything submitted was finished and downloaded; nothing else was sent
    assert states[S.DOWNLOADED] == len(submitted) == rig.stats()["submits_accepted"]
    assert states[S.PENDING] == 20 - len(submitted)
    r2 = await rig.run(concurrency="4")
    assert rig.states() == {S.DOWNLOADED: 20}
    assert rig.stats()["duplicate_submits"] == 0
    submits_explained(rig, [r1, r2])
    rig.check_folder()


async def test_stop_now_leaves_journal_resumable(tmp_path: Path) -> None:
    rig = Rig(tmp_path, 16, emulator={"time_scale": 0.05})
    n = 0

    def control(sched: Scheduler, e: Event) -> None:
        nonlocal n
        if isinstance(e, Submitted):
            n += 1
            if n == 6:
                sched.stop(now=True)  # the second Ctrl-C

    r1 = await rig.run(concurrency="4", control=control)
    assert r1.sched.stop_reason is StopReason.INTERRUPTED
    states = rig.states()
    assert S.SUBMITTING not in states
    assert states[S.QUEUED] + states[S.RUNNING] + states[S.COMPLETED] >= 1  # left attached
    r2 = await rig.run(concurrency="4")
    resumed = r2.of(Resumed)[0]
    assert resumed.reattached + resumed.to_download >= 1
    assert rig.states() == {S.DOWNLOADED: 16}
    # re-attached requests were watched, never resubmitted
    assert rig.stats()["duplicate_submits"] <= resumed.unknown
    rig.check_folder()


async def test_expired_results_are_resubmitted_and_counted_lost(tmp_path: Path) -> None:
    rig = Rig(tmp_path, 6, emulator={"time_scale": 0.05})

    def control(sched: Scheduler, e: Event) -> None:
        if isinstance(e, Submitted) and sched.stats.submitted == 3:
            sched.stop(now=True)

    await rig.run(concurrency="3", control=control)
    attached = rig.states()[S.QUEUED] + rig.states()[S.RUNNING]
    assert attached >= 1
    rig.new_emulator()  # fal no longer knows those requests: their results are gone
    r2 = await rig.run(concurrency="3")
    lost = [e for e in r2.of(Requeued) if e.lost]
    assert len(lost) == attached
    assert r2.sched.stats.lost == attached
    with rig.journal() as j:
        assert j.tallies().lost == attached
    assert rig.states() == {S.DOWNLOADED: 6}


async def test_retry_failed(tmp_path: Path) -> None:
    rig = Rig(tmp_path, 5, emulator={"faults": "content_policy=1"})
    r1 = await rig.run(concurrency="5")
    assert rig.states() == {S.FAILED: 5}
    assert {e.reason for e in r1.of(Failed)} == {"content_policy_violation"}
    assert rig.stats()["submits_accepted"] == 5  # a 422 is final: never retried
    again = await rig.run(concurrency="5")  # without the flag nothing is resent
    assert again.sched.stats.submitted == 0
    rig.new_emulator()
    r2 = await rig.run(concurrency="5", retry_failed=True)
    assert r2.of(Resumed)[0].retried_failed == 5
    assert rig.states() == {S.DOWNLOADED: 5}


async def test_runner_errors_resubmit_up_to_max_attempts(tmp_path: Path) -> None:
    rig = Rig(tmp_path, 4, emulator={"faults": "runner_error=1"})
    r = await rig.run(concurrency="4", max_attempts=3)
    assert rig.states() == {S.FAILED: 4}
    assert rig.stats()["submits_accepted"] == 12  # 3 attempts each, then final
    assert len(r.of(Requeued)) == 8
    submits_explained(rig, [r])


async def test_deadline_cancels_and_retries(tmp_path: Path) -> None:
    rig = Rig(tmp_path, 2, emulator={"time_scale": 1.0})  # ~3 s per job
    r = await rig.run(concurrency="2", deadline=0.2, max_attempts=2)
    assert rig.states() == {S.FAILED: 2}
    assert {e.reason for e in r.of(Failed)} == {"deadline"}
    stats = rig.stats()
    assert stats["cancel_requests"] == 4
    assert stats["submits_accepted"] == 4


async def test_unauthorized_stops_the_run(tmp_path: Path) -> None:
    rig = Rig(tmp_path, 5)
    r = await rig.run(concurrency="1", key=None)
    assert isinstance(r.error, AuthError)
    assert r.sched.stop_reason is StopReason.FATAL
    assert rig.states() == {S.PENDING: 5}  # refused: nothing exists, nothing counted
    assert rig.stats()["submits_accepted"] == 0


async def test_poll_mode_never_opens_a_stream(tmp_path: Path) -> None:
    rig = Rig(tmp_path, 8, emulator={"time_scale": 0.02})
    r = await rig.run(concurrency="8", watch="poll")
    assert rig.states() == {S.DOWNLOADED: 8}
    stats = rig.stats()
    assert stats.get("stream_connections", 0) == 0
    assert stats["status_polls"] <= 6 * 8
    assert len(r.of(Finished)) == 8


class NoStreams(httpx.AsyncBaseTransport):
    """A network on which SSE streams cannot connect (a proxy that refuses them)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.refused = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/status/stream"):
            self.refused += 1
            raise httpx.ConnectError("stream refused", request=request)
        return await self.inner.handle_async_request(request)


async def test_stream_failure_falls_back_to_polling(tmp_path: Path) -> None:
    # Requests of fal's seconds (run 50 times faster): too long for a single quick check, so
    # every one tries the stream first, whatever the machine's speed. (With 70 ms requests a
    # slow machine's first look found some done, and those never tried a stream.)
    clock = FastClock(50)
    rig = Rig(tmp_path, 6, emulator={"time_scale": 1.0, "clock": clock, "sleep": clock.sleep})
    transport = NoStreams(httpx.ASGITransport(app=rig.app))
    r = await rig.run(concurrency="3", transport=transport)
    assert rig.states() == {S.DOWNLOADED: 6}
    assert transport.refused >= 6
    assert rig.stats()["status_polls"] >= 6
    broken = [e for e in r.of(Retrying) if e.reason == "stream_broken"]
    assert len(broken) == transport.refused


async def test_fixed_window_bounds_in_progress(tmp_path: Path) -> None:
    # The server's time stands still until every task the scheduler has in flight has its
    # request on the server: then the next one finishes. So the first five run together
    # however slow the machine, and a sixth let out by the window would run beside them.
    # (On the wall clock, a loaded machine let early requests finish before the fifth was
    # sent.)
    clock = ManualClock()
    emulator = {"concurrency_limit": 40, "time_scale": 1.0, "clock": clock, "sleep": short_sleep}
    rig = Rig(tmp_path, 30, emulator=emulator)
    model = rig.app.state.emulator
    on_server = 0  # submitted, not yet seen finished
    seen: list[Scheduler] = []

    def control(sched: Scheduler, e: Event) -> None:
        nonlocal on_server
        seen[:] = [sched]
        on_server += isinstance(e, Submitted) - isinstance(e, Finished)

    async def server_time() -> None:
        while True:
            await asyncio.sleep(0.005)  # how often to look, not what happens
            nxt = model.next_event_at()
            if seen and on_server == seen[0].in_flight > 0 and nxt is not None:
                clock.t = max(clock.t, nxt)  # the next completion, never past it

    ticker = asyncio.create_task(server_time())
    try:
        async with asyncio.timeout(30):
            r = await rig.run(window=FixedWindow(5), control=control)
    finally:
        ticker.cancel()
    assert r.error is None and rig.states() == {S.DOWNLOADED: 30}
    assert rig.stats()["peak_in_progress"] == 5


async def test_quick_requests_are_checked_once_instead_of_streamed(tmp_path: Path) -> None:
    rig = Rig(tmp_path, 24, emulator={"time_scale": 0.0})  # every request done at once
    r = await rig.run(window=FixedWindow(4))
    assert rig.states() == {S.DOWNLOADED: 24}
    stats = rig.stats()
    # only the first few, before any run time was known, opened a stream; then one GET each
    assert stats.get("stream_connections", 0) <= 4
    assert stats["status_polls"] + stats.get("stream_connections", 0) <= 24 + 4
    assert r.sched.runtimes.expected() == 0.0  # fal's inference_time, not our own lag


async def test_ctrl_c_after_the_budget_reports_the_interruption(tmp_path: Path) -> None:
    rig = Rig(tmp_path, 6)

    def control(sched: Scheduler, e: Event) -> None:
        if isinstance(e, BudgetReached):
            sched.stop()  # the user presses Ctrl-C while paid requests finish

    r = await rig.run(concurrency="2", max_cost=0.02, control=control)
    assert r.sched.stop_reason is StopReason.INTERRUPTED  # exit 130, not 3


async def test_images_in_place_after_a_crash_are_kept_without_a_request(tmp_path: Path) -> None:
    # A run that died after renaming its images into place but before committing DOWNLOADED
    # leaves the job COMPLETED, its index rows written. By the time it resumes the result's
    # URLs may be gone (here: a fal that forgot everything); the images on disk, whose
    # checksums the index holds, are kept rather than fetched (or failed) again.
    rig = Rig(tmp_path, 3)
    assert (await rig.run()).error is None
    files = {f: f.read_bytes() for f in (rig.out / "images").rglob("*.jpg")}
    assert len(files) == 3
    # The state such a crash leaves (no public transition goes back from DOWNLOADED):
    with sqlite3.connect(rig.out / "journal.sqlite") as db:
        db.execute("UPDATE jobs SET state = 'COMPLETED', files = NULL")
    rig.new_emulator()

    r = await rig.run()
    assert r.error is None and rig.states() == {S.DOWNLOADED: 3}
    assert rig.stats()["media_requests"] == 0 and rig.stats()["submits_accepted"] == 0
    assert {f: f.read_bytes() for f in (rig.out / "images").rglob("*.jpg")} == files
    # One row per image: the rows written before the crash are not appended again.
    assert len(list(read_rows(rig.out / METADATA))) == 3
    rig.check_folder()
