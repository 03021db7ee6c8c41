"""How a request is followed until its result is in hand: one interface, three ways.

``Watching.completed`` waits for a request to complete. The way is chosen once per run
(``--watch``):

- ``QueueWatch(STREAM)``, the default: fal's SSE status stream, one connection instead of a
  dozen polls; a single status GET first when recent run times say the request is done
  almost at once (a GET is cheaper than a stream handshake); polling for this request only
  when its stream breaks;
- ``QueueWatch(POLL)``: polling with growing intervals (``window.poll_delay``, never a fixed
  100 ms);
- ``WebhookWatch``: fal POSTs the result to the run's receiver (``webhooks.Inbox``); a status
  GET only when a delivery is late.

After the stream or polling, the caller reads the result with one GET; a delivery carries it.
``op`` names what a failure inside ``completed`` is about, for ``retry.classify``: a status
(stream, poll) or the result (a delivery, or the GET a late delivery needs). The deadline
bounds all of it: past it, ``DeadlineExceeded`` tells the caller to cancel and send the
request again. No way retries a failure: that is the caller's decision (``follow``).
The polling intervals and a webhook's late checks are a schedule for watching a live
request, not retries.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from batchgen.errors import StatusStreamError
from batchgen.fal import Completed, Handle, QueueClient, Status
from batchgen.retry import Action, Outcome, Sleep, classify
from batchgen.running.recorder import Recorder
from batchgen.running.webhooks import Inbox
from batchgen.running.window import RunTimes, WatchMode, plan_watch, poll_delay

# Called with each status and whether it was asked for right after the submit.
Note = Callable[[Status, bool], None]


class DeadlineExceeded(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Done:
    result: dict[str, Any] | None  # None: read it with the result GET
    inference_time: float | None  # fal's own run time, when it says so


class Watching(Protocol):
    op: str  # what a failure inside ``completed`` is about: "status" or "result"

    async def completed(
        self,
        job: str,
        handle: Handle,
        *,
        submitted_at: float,
        deadline_at: float,
        prompt: bool,
        note: Note,
    ) -> Done:
        """Once the request completed: its result when the way of watching carried it.
        ``prompt``: ask for its first status at once (an auto window learns from it). Raises
        ``DeadlineExceeded`` past ``deadline_at``, and the request's own failure or a
        transport error for the caller to classify."""
        ...


class QueueWatch:
    """The status stream (``WatchMode.STREAM``) or polling (``WatchMode.POLL``)."""

    op = "status"

    def __init__(
        self,
        client: QueueClient,
        mode: WatchMode,
        runtimes: RunTimes,
        record: Recorder,
        *,
        clock: Callable[[], float],
        sleep: Sleep,
    ) -> None:
        self._client, self._mode, self._runtimes, self._record = client, mode, runtimes, record
        self._clock, self._sleep = clock, sleep

    async def completed(
        self,
        job: str,
        handle: Handle,
        *,
        submitted_at: float,
        deadline_at: float,
        prompt: bool,
        note: Note,
    ) -> Done:
        def broken(message: str) -> None:  # polling takes over, for this request only
            stream = Outcome(Action.RETRY, "stream_broken", message)
            self._record.retrying(job, "status", stream, 0.0, 1)

        done = await watch(
            self._client,
            handle,
            mode=self._mode,
            expected=self._runtimes.expected(),
            prompt=prompt,
            submitted_at=submitted_at,
            deadline_at=deadline_at,
            note=note,
            on_stream_broken=broken,
            clock=self._clock,
            sleep=self._sleep,
        )
        return Done(None, done.inference_time)


class WebhookWatch:
    """fal's delivery to the run's receiver; a status GET only when it is late."""

    op = "result"

    def __init__(
        self,
        inbox: Inbox,
        client: QueueClient,
        runtimes: RunTimes,
        *,
        clock: Callable[[], float],
        sleep: Sleep,
    ) -> None:
        self.inbox = inbox
        self._client, self._runtimes, self._clock, self._sleep = client, runtimes, clock, sleep

    async def completed(
        self,
        job: str,
        handle: Handle,
        *,
        submitted_at: float,
        deadline_at: float,
        prompt: bool,
        note: Note,
    ) -> Done:
        if prompt:
            note(await self._client.status(handle), True)
        try:
            payload = await self.inbox.wait(
                self._client,
                handle,
                submitted_at=submitted_at,
                deadline_at=deadline_at,
                clock=self._clock,
                sleep=self._sleep,
                expected=self._runtimes.expected(),
            )
        except TimeoutError:
            raise DeadlineExceeded from None
        return Done(payload, None)


async def watch(
    client: QueueClient,
    handle: Handle,
    *,
    mode: WatchMode,
    expected: float | None,
    prompt: bool,
    submitted_at: float,
    deadline_at: float,
    note: Note,
    on_stream_broken: Callable[[str], None],
    clock: Callable[[], float],
    sleep: Sleep,
) -> Completed:
    """The request's final status (``QueueWatch``'s way: the stream, a quick check, or
    polling, as ``window.plan_watch`` decides for this request)."""
    plan = plan_watch(mode, expected)
    if plan.check_after is not None or (prompt and plan.mode is WatchMode.POLL):
        if not prompt and plan.check_after is not None:
            await sleep(max(0.0, min(submitted_at + plan.check_after, deadline_at) - clock()))
        st = await client.status(handle)
        note(st, prompt)
        if isinstance(st, Completed):
            return st
    if plan.mode is WatchMode.STREAM:
        try:
            async with (
                asyncio.timeout(max(0.0, deadline_at - clock())),
                contextlib.aclosing(_closable(client.stream_status(handle))) as stream,
            ):
                async for st in stream:
                    note(st, True)
                    if isinstance(st, Completed):
                        return st
        except TimeoutError:
            raise DeadlineExceeded from None
        except StatusStreamError as exc:
            on_stream_broken(str(exc))  # polling takes over, for this request only
    polls = 0
    while True:
        left = deadline_at - clock()
        if left <= 0:
            raise DeadlineExceeded
        await sleep(min(left, poll_delay(polls, expected, clock() - submitted_at)))
        polls += 1
        st = await client.status(handle)
        note(st, False)
        if isinstance(st, Completed):
            return st


async def cancel(client: QueueClient, handle: Handle) -> str:
    """Ask fal to cancel (past the deadline); what it answered, for the audit trail. Best
    effort: the job is sent again either way."""
    try:
        return await client.cancel(handle)
    except Exception as exc:
        return f"failed: {classify(exc, op='cancel').message}"


def _closable(stream: AsyncIterator[Status]) -> AsyncGenerator[Status, None]:
    # stream_status is an async generator; closing it at once ends its HTTP stream.
    return cast(AsyncGenerator[Status, None], stream)
