"""A request's deadline against the emulator in-process: fal is asked where the request stands
before anything is cancelled, so a run that wakes from a stop (a closed lid, SIGSTOP) longer
than its deadlines fetches what fal finished meanwhile and pays for nothing twice; only a
request still queued or running is cancelled and sent again, and only one that ran is counted
as a possible duplicate charge."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from starlette.types import ASGIApp
from test_scheduler_support import Rig, RunResult, submits_explained

from batchgen.outputs.index import read_index
from batchgen.planning.jobs import JobState
from batchgen.running.events import Requeued, Retrying, Saved, Started
from batchgen.running.follow import ASK_PAST_DEADLINE_S
from batchgen.running.summary import Summary, build_summary
from batchgen.running.webhooks import Inbox, Webhook

S = JobState


class ServerClock:
    """fal's clock: still until the test moves it (``t``) or sets it going ``factor`` times
    faster than the wall clock (``go``). ``sleep`` waits on it, so an emulator's stream
    sleeps for as long as the server stands still."""

    def __init__(self) -> None:
        self.t = 0.0
        self._going: tuple[float, float] | None = None
        self._gone = asyncio.Event()

    def __call__(self) -> float:
        if self._going is None:
            return self.t
        since, factor = self._going
        return self.t + (time.monotonic() - since) * factor

    def go(self, factor: float) -> None:
        self.t, self._going = self(), (time.monotonic(), factor)
        self._gone.set()

    async def sleep(self, seconds: float) -> None:
        await self._gone.wait()  # nothing on the server moves before it goes
        assert self._going is not None
        await asyncio.sleep(seconds / self._going[1])


class RunClock:
    """The run's monotonic clock, which a stop moves forward (``jump``) as SIGSTOP does."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


def kind(request: httpx.Request) -> str:
    path = request.url.path
    if request.method == "POST":
        return "submit"
    if request.method == "PUT" and path.endswith("/cancel"):
        return "cancel"
    if path.endswith("/status/stream"):
        return "stream"
    if path.endswith("/status"):
        return "status"
    return "other"


class Lid(httpx.AsyncBaseTransport):
    """The emulator in-process, with the test's hand on what the run sees, and when:
    ``before[(kind, n)]`` runs before the n-th request of a kind reaches the server,
    ``after[(kind, n)]`` once its n-th answer is in; ``hold[kind] = n`` keeps the first n
    answers of a kind from the run until all n are in (they were on their way when it
    stopped, and it reads them all when it wakes)."""

    def __init__(self, app: ASGIApp) -> None:
        self._inner = httpx.ASGITransport(app=app)
        self.before: dict[tuple[str, int], Callable[[], None]] = {}
        self.after: dict[tuple[str, int], Callable[[], None]] = {}
        self.hold: dict[str, int] = {}
        self.down: set[str] = set()  # kinds a load balancer answers 503 for: fal unreachable
        self.asked: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        self._released: dict[str, asyncio.Event] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        k = kind(request)
        self.asked[k] += 1
        if (hook := self.before.pop((k, self.asked[k]), None)) is not None:
            hook()
        if k in self.down:
            return httpx.Response(503, text="<html>503 Service Temporarily Unavailable</html>")
        response = await self._inner.handle_async_request(request)
        self.answered[k] += 1
        n = self.answered[k]
        if (hook := self.after.pop((k, n), None)) is not None:
            hook()
        if k in self.hold:
            released = self._released.setdefault(k, asyncio.Event())
            if n >= self.hold[k]:
                released.set()
            await released.wait()
        return response


def summary_of(rig: Rig, r: RunResult) -> Summary:
    """The summary `batchgen run` prints, from the journal and the run's counters."""
    with rig.journal() as j:
        t = j.tallies()
        failures = [(g.error_class, g.count, g.example) for g in j.failures_by_class()]
        counts = j.counts()
    return build_summary(
        counts,
        failures=failures,
        journal_retries=t.retries,
        possible_duplicates=t.possible_duplicates,
        lost=t.lost,
        spent=t.spent,
        stats=r.sched.stats,
        wall_seconds=1.0,
        stop=r.sched.stop_reason,
    )


def deadline_events(rig: Rig) -> Counter[str]:
    """What each job's audit trail says happened at its deadline, counted over the jobs."""
    seen: Counter[str] = Counter()
    with rig.journal() as j:
        for row in j.iter_jobs():
            kinds = {e[2] for e in j.events(row.job_id)}
            seen.update(k for k in ("deadline", "cancel") if k in kinds)
    return seen


def assert_nothing_paid_twice(rig: Rig, r: RunResult, n: int, retries: int = 0) -> None:
    """Every job done with one submit and one download; the summary says so (``retries``:
    the status requests asked again, the only thing "retried" counts then)."""
    assert r.error is None
    assert rig.states() == {S.DOWNLOADED: n}
    stats = rig.stats()
    assert stats["submits_accepted"] == n  # each job submitted once: nothing paid twice
    assert stats["duplicate_submits"] == 0
    assert stats.get("cancel_requests", 0) == 0
    assert r.of(Requeued) == []
    assert len(r.of(Saved)) == n
    assert len(read_index(rig.out)) == n  # each job downloaded once
    rig.check_folder()
    submits_explained(rig, [r])
    s = summary_of(rig, r)
    assert (s.done, s.retried, s.possible_duplicates, s.lost, s.unfinished) == (n, retries, 0, 0, 0)
    assert s.lines()[1] == (
        f"this run: submitted {n}, retried {retries}, possible duplicate charges 0,"
        " lost results 0 (resubmitted)"
    )
    assert s.lines()[2] == (
        f"folder totals (all runs): retried {retries}, possible duplicate charges 0, lost results 0"
    )
    assert s.exit_code == 0


@pytest.mark.parametrize("way", ["stream", "webhook"])
async def test_requests_fal_finished_while_unseen_past_their_deadline_are_fetched(
    tmp_path: Path, way: str
) -> None:
    """The status stream (the default way of watching) and a webhook that never comes: the
    run has heard nothing of any request when its deadline passes, and fal finished every
    one meanwhile (the server's clock moves at the run's first question). Each is asked once,
    fetched, downloaded; none is resent."""
    n, server = 6, ServerClock()
    # fal's deliveries go nowhere: the receiver hears nothing, as when a tunnel is down
    nowhere = httpx.AsyncClient(transport=httpx.MockTransport(lambda _: httpx.Response(200)))
    # Requests take minutes of the server's time, which stands still until the test moves
    # it; keep-alives never come: the streams say nothing before their deadlines.
    emulator = {"clock": server, "time_scale": 10, "keepalive_s": 1e4, "webhook_client": nowhere}
    rig = Rig(tmp_path, n, emulator=emulator)
    lid = Lid(rig.app)
    lid.before[("status", 1)] = lambda: setattr(server, "t", 600.0)
    hook = Webhook(Inbox(), "http://receiver.invalid/hook") if way == "webhook" else None
    try:
        r = await rig.run(concurrency=str(n), deadline=1.0, transport=lid, webhook=hook)
    finally:
        await rig.app.state.webhooks.aclose()
        await nowhere.aclose()
    assert_nothing_paid_twice(rig, r, n)
    assert lid.asked["stream"] == (n if way == "stream" else 0)
    assert lid.asked["status"] == n  # each asked about once, at its deadline
    assert deadline_events(rig) == {"deadline": n}


async def test_a_stop_longer_than_every_deadline_fetches_what_fal_finished_meanwhile(
    tmp_path: Path,
) -> None:
    """Polling: the run stops (SIGSTOP, a closed lid) with a status answer of every request
    on its way, for longer than its deadlines, while fal finishes them all. It wakes to
    stale IN_PROGRESS answers and deadlines long past: each request is asked again, found
    complete, fetched once; none is cancelled or sent again."""
    n, server, clock = 6, ServerClock(), RunClock()
    rig = Rig(tmp_path, n, emulator={"clock": server, "time_scale": 10})

    def stop_for_40_s() -> None:
        clock.offset += 40.0  # past every --deadline 30
        server.t += 600.0  # fal went on meanwhile: every request finished

    lid = Lid(rig.app)
    lid.hold["status"] = n
    lid.after[("status", n)] = stop_for_40_s
    r = await rig.run(concurrency=str(n), deadline=30, watch="poll", transport=lid, clock=clock)
    assert_nothing_paid_twice(rig, r, n)
    assert len(r.of(Started)) == n  # each was seen running before the stop
    assert deadline_events(rig) == {"deadline": n}


async def test_at_the_deadline_only_a_request_that_ran_counts_as_a_possible_duplicate(
    tmp_path: Path,
) -> None:
    """One slot on fal: of two requests, one runs and one waits in the queue, and neither
    finishes by its deadline. Both are cancelled and sent again; the one that ran may be
    billed as well as its second request (a possible duplicate charge), the one cancelled in
    the queue never ran and is not. The second requests finish."""
    server = ServerClock()
    rig = Rig(
        tmp_path,
        2,
        emulator={
            "clock": server,
            "sleep": server.sleep,
            "time_scale": 10,
            "concurrency_limit": 1,
        },
    )
    lid = Lid(rig.app)
    lid.hold["status"] = 2  # both asked before either is cancelled (which frees the slot)
    lid.after[("cancel", 2)] = lambda: server.go(1000.0)  # then fal runs the new ones
    r = await rig.run(concurrency="2", deadline=1.0, max_attempts=3, transport=lid)
    assert r.error is None
    assert rig.states() == {S.DOWNLOADED: 2}
    stats = rig.stats()
    assert (stats["submits_accepted"], stats["cancel_requests"]) == (4, 2)
    requeued = {e.job_id: e for e in r.of(Requeued)}
    assert {e.reason for e in requeued.values()} == {"deadline"}
    cut = r.events.index(r.of(Requeued)[-1])
    (ran,) = {e.job_id for e in r.events[:cut] if isinstance(e, Started)}  # before its cancel
    assert {j: e.possible_duplicate for j, e in requeued.items()} == {
        ran: True,
        next(j for j in requeued if j != ran): False,
    }
    with rig.journal() as j:
        dups = {row.job_id: row.possible_duplicates for row in j.iter_jobs()}
    assert dups[ran] == 1 and sum(dups.values()) == 1
    s = summary_of(rig, r)
    assert (s.done, s.retried, s.possible_duplicates, s.lost) == (2, 2, 1, 0)
    assert s.lines()[1] == (
        "this run: submitted 4, retried 2, possible duplicate charges 1, lost results 0"
        " (resubmitted)"
    )
    assert s.lines()[2] == (
        "folder totals (all runs): retried 2, possible duplicate charges 1, lost results 0"
    )


async def test_a_deadline_check_fal_cannot_answer_is_asked_again_then_left_for_the_next_run(
    tmp_path: Path,
) -> None:
    """Past the deadline fal cannot be asked (every status answer a load balancer's 503):
    nothing is cancelled or sent blind. The status is asked again, more slowly, for
    ``ASK_PAST_DEADLINE_S`` of the run's clock, then the request is left attached (the
    journal keeps its id); the next run asks again, finds it complete and fetches it."""
    n, server, clock = 3, ServerClock(), RunClock()

    async def sleep(seconds: float) -> None:
        # Backoffs take the run's time, not the test's; at least a second each, as the rig's
        # jitter is 0 (a backoff of 0 s would never bring the bound any nearer).
        clock.offset += max(seconds, 1.0)
        await asyncio.sleep(0)

    rig = Rig(tmp_path, n, emulator={"clock": server, "time_scale": 10, "keepalive_s": 1e4})
    lid = Lid(rig.app)
    lid.down.add("status")
    first = await rig.run(concurrency=str(n), deadline=1.0, transport=lid, clock=clock, sleep=sleep)
    assert first.error is None
    assert rig.states() == {S.QUEUED: n}  # attached: their ids are in the journal
    assert first.of(Requeued) == [] and lid.asked["cancel"] == 0
    assert clock.offset >= ASK_PAST_DEADLINE_S  # asked again for that long before leaving it
    with rig.journal() as j:
        left = [
            e[3] for row in j.iter_jobs() for e in j.events(row.job_id) if e[2] == "unreachable"
        ]
    assert len(left) == n and all("503" in why for why in left)
    s = summary_of(rig, first)
    assert (s.unfinished, s.possible_duplicates, s.exit_code) == (n, 0, 1)

    server.t = 600.0  # fal finished them meanwhile
    lid.down.clear()
    second = await rig.run(concurrency=str(n), deadline=1.0, transport=lid)
    assert rig.states() == {S.DOWNLOADED: n}
    stats = rig.stats()
    assert (stats["submits_accepted"], stats.get("cancel_requests", 0)) == (n, 0)
    assert second.of(Requeued) == []
    submits_explained(rig, [first, second])


async def test_a_network_back_soon_after_the_deadline_gets_the_results_in_the_same_run(
    tmp_path: Path,
) -> None:
    """Polling through an outage (every status answer a 503) that lasts past the deadlines,
    as a laptop's network does for a while after it wakes: the requests are asked about
    until fal answers again, then fetched; nothing is cancelled, sent again or left over."""
    n, server, clock = 3, ServerClock(), RunClock()
    rig = Rig(tmp_path, n, emulator={"clock": server, "time_scale": 10})
    lid = Lid(rig.app)
    lid.down.add("status")

    async def sleep(seconds: float) -> None:  # as above; the network is back 40 s past
        clock.offset += max(seconds, 1.0)
        if clock.offset > 70.0 and lid.down:
            server.t = 600.0  # fal finished them meanwhile
            lid.down.clear()
        await asyncio.sleep(0)

    r = await rig.run(
        concurrency=str(n), deadline=30, watch="poll", transport=lid, clock=clock, sleep=sleep
    )
    asked_again = r.of(Retrying)
    assert asked_again and {e.op for e in asked_again} == {"status"}
    assert_nothing_paid_twice(rig, r, n, retries=len(asked_again))
    assert deadline_events(rig) == {"deadline": n}
