"""Watching one request until it completes: the SSE stream, a quick status check, or polling.

The choice is per request (``window.plan_watch``): the stream by default, because one
connection replaces a dozen polls; a single status GET first when recent run times say the
request is done almost at once (a GET is cheaper than a stream handshake); polling with
growing intervals (``window.poll_delay``, never a fixed 100 ms) when asked for with
``--watch poll``, or for this request only when its stream fails. The deadline bounds all of
it: past it, ``DeadlineExceeded`` tells the scheduler to cancel and retry.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import cast

from batchgen.errors import StatusStreamError
from batchgen.fal import Completed, Handle, QueueClient, Status
from batchgen.fal.retry import Sleep, classify
from batchgen.running.window import WatchMode, plan_watch, poll_delay

# Called with each status and whether it was asked for right after the submit.
Note = Callable[[Status, bool], None]


class DeadlineExceeded(Exception):
    pass


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
    """The request's final status. ``prompt``: ask for the first status at once (an auto
    window learns from it); otherwise a quick check waits for the expected run time."""
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
