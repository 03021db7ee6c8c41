"""``--stop-at HH:MM``: the wall-clock time a run stops submitting, and the timer that says so.

The time is local (what a person setting an overnight run reads on their clock) and always
the next such time: 07:00 given at 23:00 is tomorrow morning, given at 06:00 is in an hour.
It is resolved once, when the settings are decided, to an absolute time (seconds since the
epoch), so a run that goes on past midnight does not move its own stop.

The scheduler checks ``due`` before each claim (so no job is sent after the time, however
busy the loop is) and runs ``stop_timer`` beside it (so the stop is announced, and a submit
waiting out a backoff is abandoned, even while nothing else wakes the loop). Both read the
scheduler's injected wall clock: a test moves that clock, not the real one.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from batchgen.errors import UsageError
from batchgen.running.events import StopReason

_HHMM = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")
# How long the timer sleeps at most between looks: a suspended laptop or a changed system
# clock is noticed within this, not hours later.
TIMER_STEP_S = 30.0


def next_time(text: str, *, now: float) -> float:
    """The next local ``HH:MM`` strictly after ``now``, as seconds since the epoch."""
    m = _HHMM.fullmatch(text.strip())
    if m is None:
        raise UsageError(f"--stop-at must be a local time HH:MM (24-hour), got {text!r}")
    here = datetime.fromtimestamp(now)  # naive local time: .timestamp() reads it back as local
    at = here.replace(hour=int(m.group(1)), minute=int(m.group(2)), second=0, microsecond=0)
    if at.timestamp() <= now:
        at += timedelta(days=1)
    return at.timestamp()


def local_text(at: float) -> str:
    """``at`` as people read it in the summary and the journal: 2026-05-02 07:00 +02:00."""
    return datetime.fromtimestamp(at).astimezone().strftime("%Y-%m-%d %H:%M %z")


def due(stop_at: float | None, wall: Callable[[], float]) -> bool:
    return stop_at is not None and wall() >= stop_at


async def stop_timer(
    stop_at: float,
    *,
    wall: Callable[[], float],
    sleep: Callable[[float], Awaitable[object]],
    stop: Callable[[], None],
) -> None:
    """Sleep until ``stop_at`` by ``wall``, then call ``stop`` once."""
    while not due(stop_at, wall):
        await sleep(min(max(stop_at - wall(), 0.0), TIMER_STEP_S))
    stop()


def start_timer(
    stop_at: float | None,
    wall: Callable[[], float],
    sleep: Callable[[float], Awaitable[object]],
    stop: Callable[..., None],
) -> asyncio.Task[None] | None:
    """The scheduler's timer task (None without --stop-at); ``stop`` is ``Scheduler.stop``."""
    if stop_at is None:
        return None
    stop_now = lambda: stop(reason=StopReason.STOP_AT)  # noqa: E731
    return asyncio.create_task(stop_timer(stop_at, wall=wall, sleep=sleep, stop=stop_now))


def cancel(timer: asyncio.Task[None] | None) -> None:
    if timer is not None:
        timer.cancel()
