"""fal's own controls for overnight runs, end to end through the scheduler and the in-process
emulator (docs/controls.md): queue priority, the start timeout, media expiry, fallbacks and payload
storage, the logs of failed requests, and --stop-at on an injected wall clock."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
from test_scheduler_support import BASE, ManualClock, Rig, short_sleep

from batchgen.emulator.model import QueueModel
from batchgen.outputs.index import read_index
from batchgen.planning.jobs import JobState
from batchgen.running.events import (
    Event,
    Finished,
    Requeued,
    Stopping,
    StopReason,
    Submitted,
)
from batchgen.running.scheduler import Scheduler

S = JobState
APP = "openai/gpt-image-2"
FALLBACK_ENDPOINT = "emulator/fallback"  # who the emulator's `fallback` fault says answered


def _interactive(model: QueueModel, prompt: str, now: float, quality: str = "low") -> str:
    """Someone else's request on the same account, straight into the queue (fal's default
    priority: normal)."""
    body = {"prompt": prompt, "quality": quality, "image_size": "square_hd"}
    return model.submit(APP, APP, body, now).id


async def _ticking(clock: ManualClock, model: QueueModel, go: list[bool]) -> None:
    """Server time jumps to its next event, once the test says go."""
    while True:
        await asyncio.sleep(0.005)
        nxt = model.next_event_at()
        if go and nxt is not None:
            clock.t = max(clock.t, nxt)


async def test_a_low_priority_run_yields_to_interactive_traffic(tmp_path: Path) -> None:
    clock = ManualClock()
    emulator = {"concurrency_limit": 1, "time_scale": 1.0, "clock": clock, "sleep": short_sleep}
    rig = Rig(tmp_path, 3, emulator=emulator)
    model = rig.app.state.emulator
    _interactive(model, "blocker", clock.t, quality="high")  # holds the only slot
    go: list[bool] = []

    def control(sched: Scheduler, e: Event) -> None:
        # All three of ours wait in the queue; then two interactive requests arrive.
        if isinstance(e, Submitted) and len(model.requests) == 4:
            _interactive(model, "interactive a", clock.t)
            _interactive(model, "interactive b", clock.t)
            go.append(True)

    ticker = asyncio.create_task(_ticking(clock, model, go))
    try:
        async with asyncio.timeout(30):
            r = await rig.run(concurrency="3", control=control, priority="low")
    finally:
        ticker.cancel()
    assert r.error is None and rig.states() == {S.DOWNLOADED: 3}
    ran = [q for q in model.requests.values() if q.started_at is not None]
    started = sorted(ran, key=lambda q: (q.started_at, q.qseq))
    order = [q.input["prompt"] for q in started]
    # Sent later, the interactive requests still ran first: ours said low.
    assert order[:3] == ["blocker", "interactive a", "interactive b"]
    assert rig.stats()["control_headers"]["x-fal-queue-priority"] == {"low": 3}


async def test_a_start_timeout_is_resubmitted_not_billed_and_counted(tmp_path: Path) -> None:
    clock = ManualClock()
    emulator = {"concurrency_limit": 1, "time_scale": 1.0, "clock": clock, "sleep": short_sleep}
    rig = Rig(tmp_path, 1, emulator=emulator)
    model = rig.app.state.emulator
    blocker = _interactive(model, "blocker", clock.t, quality="high")  # ~30 s

    def control(sched: Scheduler, e: Event) -> None:
        if isinstance(e, Requeued):  # the slot frees: the second request can start
            model.cancel(blocker, clock.t)

    async def ticking() -> None:
        while True:
            await asyncio.sleep(0.01)
            clock.t += 0.5

    ticker = asyncio.create_task(ticking())
    try:
        async with asyncio.timeout(30):
            r = await rig.run(concurrency="1", control=control, start_timeout=5.0)
    finally:
        ticker.cancel()
    assert r.error is None and rig.states() == {S.DOWNLOADED: 1}
    assert [(e.reason, e.lost) for e in r.of(Requeued)] == [("start_timeout", False)]
    assert r.sched.stats.start_timeouts == 1
    headers = rig.stats()["control_headers"]
    assert headers["x-fal-request-start-timeout"] == {"5.0": 2}  # both requests said so
    assert headers["x-fal-request-timeout"] == {"5.0": 2}  # and under fal-client's old name
    with rig.journal() as j:
        (row,) = list(j.iter_jobs())
        t = j.tallies()
        logs = [d for _, _, kind, d in j.events(row.job_id) if kind == "logs"]
    # Two requests, one charge: the one that never started cost nothing.
    assert (row.submits, row.billed, row.attempts, row.lost) == (2, 1, 1, 0)
    assert t.spent + t.rehearsal == row.cost
    assert any("request_timeout" in line for line in logs)  # fal's logs, kept


async def test_media_expiry_is_sent_and_the_images_are_gone_after_it(tmp_path: Path) -> None:
    offset = [0.0]  # the emulator's clock runs on real time, plus what the test adds
    emulator = {"retention_scale": 1.0, "clock": lambda: time.monotonic() + offset[0]}
    rig = Rig(tmp_path, 2, emulator=emulator)
    r = await rig.run(media_expiry=600)
    assert r.error is None and rig.states() == {S.DOWNLOADED: 2}  # fetched in time
    lifecycle = json.dumps({"expiration_duration_seconds": 600})
    assert rig.stats()["control_headers"]["x-fal-object-lifecycle-preference"] == {lifecycle: 2}
    with rig.journal() as j:
        urls = [img["url"] for row in j.iter_jobs() for img in (row.result or {})["images"]]
    offset[0] = 601.0  # ten minutes after they were made: fal's CDN has deleted them
    async with httpx.AsyncClient(transport=httpx.ASGITransport(rig.app), base_url=BASE) as http:
        assert [(await http.get(u)).status_code for u in urls] == [404, 404]


async def test_fallbacks_are_disabled_by_default_and_recorded_when_allowed(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "strict", 2, emulator={"faults": "fallback=1"})
    assert (await rig.run(no_store_io=True)).error is None
    s = rig.stats()
    assert s["control_headers"]["x-fal-disable-fallbacks"] == {"true": 2}
    assert s["control_headers"]["x-fal-store-io"] == {"0": 2}
    assert (s.get("fallbacks_used", 0), s["fallbacks_disabled"]) == (0, 2)
    assert [row["answered_by"] for row in read_index(rig.out)] == [None, None]

    rig = Rig(tmp_path / "lenient", 2, emulator={"faults": "fallback=1"})
    assert (await rig.run(allow_fallbacks=True)).error is None
    assert "x-fal-disable-fallbacks" not in rig.stats()["control_headers"]
    rows = read_index(rig.out)
    assert [row["answered_by"] for row in rows] == [FALLBACK_ENDPOINT] * 2
    assert {row["endpoint"] for row in rows} == {APP}  # what was asked, beside who answered


async def test_logs_are_kept_for_failed_requests_only(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "refused", 2, emulator={"faults": "content_policy=1"})
    assert (await rig.run()).error is None
    with rig.journal() as j:
        failed = list(j.iter_jobs(S.FAILED))
        logs = {r.job_id: [d for _, _, k, d in j.events(r.job_id) if k == "logs"] for r in failed}
    assert len(failed) == 2
    for lines in logs.values():
        assert lines and "content_policy_violation" in lines[-1] and "ERROR" in lines[-1]

    rig = Rig(tmp_path / "fine", 2)
    assert (await rig.run()).error is None
    with rig.journal() as j:
        assert not [e for e in j.events() if e[2] == "logs"]  # nothing asked for successes
    assert rig.stats()["status_polls"] <= 2  # ...and no extra status GETs for them either


class Wall:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def test_stop_at_stops_submitting_and_finishes_what_is_paid_for(tmp_path: Path) -> None:
    wall = Wall()
    stop_at = wall.t + 3600
    # Slow enough that the first request cannot finish (and free a slot for a third) before
    # the second one's answer has come, however loaded the machine.
    rig = Rig(tmp_path, 6, emulator={"time_scale": 0.1})

    submitted: list[Submitted] = []

    def control(sched: Scheduler, e: Event) -> None:
        if isinstance(e, Submitted):
            submitted.append(e)
            if len(submitted) == 2:
                wall.t = stop_at  # the clock reaches --stop-at with two requests in flight

    r = await rig.run(concurrency="2", control=control, wall=wall, stop_at=stop_at)
    assert r.error is None and r.sched.stop_reason is StopReason.STOP_AT
    assert rig.states() == {S.DOWNLOADED: 2, S.PENDING: 4}  # paid ones finished, no others
    assert rig.stats()["submits_accepted"] == 2
    assert [e.reason for e in r.of(Stopping)] == ["stop_at"]


async def test_stop_at_is_noticed_while_the_loop_waits_for_a_slot(tmp_path: Path) -> None:
    # One slot, taken by a request that cannot finish until the test moves server time: only
    # the timer can notice --stop-at now, and the request must still finish afterwards.
    clock, wall = ManualClock(), Wall()
    stop_at = wall.t + 60
    rig = Rig(tmp_path, 3, emulator={"time_scale": 1.0, "clock": clock, "sleep": short_sleep})
    model = rig.app.state.emulator
    go: list[bool] = []

    def control(sched: Scheduler, e: Event) -> None:
        if isinstance(e, Submitted):
            wall.t = stop_at + 1
        if isinstance(e, Stopping):
            go.append(True)  # only now does the request in flight get to finish

    ticker = asyncio.create_task(_ticking(clock, model, go))
    try:
        async with asyncio.timeout(30):
            r = await rig.run(concurrency="1", control=control, wall=wall, stop_at=stop_at)
    finally:
        ticker.cancel()
    assert r.error is None and r.sched.stop_reason is StopReason.STOP_AT
    kinds = [type(e).__name__ for e in r.events if isinstance(e, Stopping | Finished)]
    assert kinds == ["Stopping", "Finished"]
    assert rig.states() == {S.DOWNLOADED: 1, S.PENDING: 2}
