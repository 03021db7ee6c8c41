"""Progress on stderr: a tqdm bar on a terminal, else one plain line every few seconds.

The only module that knows tqdm. It listens to the run's events (done, failed, images) and, on
each refresh, reads the latest ``Snapshot`` (pending, in flight, spend, window) from a callback;
``batchgen run`` refreshes it on each snapshot event, so it never touches the journal or the
scheduler itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import IO, Any

from tqdm import tqdm  # type: ignore[import-untyped]  # no stubs shipped

from batchgen.running.events import Event, Failed, Saved
from batchgen.running.runner import Snapshot as Snapshot  # re-exported: callers build them

LOG_EVERY_S = 5.0


def eta_seconds(remaining: int, done_now: int, elapsed: float) -> float | None:
    """Time left at this run's pace; None before anything finished."""
    if done_now <= 0 or elapsed <= 0:
        return None
    return remaining * elapsed / done_now


def spend_label(snap: Snapshot) -> str:
    """This run's spend; a rehearsal's is what it would cost on fal, billed nowhere."""
    if snap.rehearsal:
        return f"~${snap.spent:.2f} on fal (rehearsal)"
    return f"spent ~${snap.spent:.2f}"


def status_line(snap: Snapshot, *, total: int, images: int, done_now: int, elapsed: float) -> str:
    per_min = images * 60.0 / elapsed if elapsed > 0 else 0.0
    eta = eta_seconds(snap.pending + snap.in_flight, done_now, elapsed)
    eta_text = "?" if eta is None else f"{int(eta) // 60}m{int(eta) % 60:02d}s"
    return (
        f"progress: done {snap.done}/{total}, failed {snap.failed}, queued {snap.queued},"
        f" running {snap.running}, in flight {snap.in_flight} (window {snap.window}),"
        f" pending {snap.pending}, {per_min:.1f} images/min,"
        f" {spend_label(snap)}, ETA {eta_text}"
        + (f", SERVER UNREACHABLE {snap.unreachable:.0f}s" if snap.unreachable else "")
    )


class Progress:
    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        *,
        total: int,
        stream: IO[str],
        bar: bool,
        clock: Callable[[], float] = time.monotonic,
        every: float = LOG_EVERY_S,
    ) -> None:
        self._snapshot = snapshot
        self._total = total
        self._stream = stream
        self._clock = clock
        self._every = every
        self._start = clock()
        self._images = 0
        self._done_now = 0  # jobs finished (either way) in this run, for the pace
        first = snapshot()
        self._bar: Any = None
        if bar:
            self._bar = tqdm(
                total=total,
                initial=first.done + first.failed,
                file=stream,
                unit="job",
                dynamic_ncols=True,
                smoothing=0.1,
            )

    def on_event(self, event: Event) -> None:
        if isinstance(event, Saved | Failed):
            self._done_now += 1
            if isinstance(event, Saved):
                self._images += event.images
            if self._bar is not None:
                self._bar.update(1)

    def refresh(self) -> None:
        snap = self._snapshot()
        if self._bar is not None:
            self._bar.set_postfix(
                failed=snap.failed,
                queued=snap.queued,
                running=snap.running,
                window=snap.window,
                **({"on fal": f"${snap.spent:.2f}"} if snap.rehearsal
                   else {"spent": f"${snap.spent:.2f}"}),
                **({"UNREACHABLE": f"{snap.unreachable:.0f}s"} if snap.unreachable else {}),
                refresh=True,
            )
        else:
            elapsed = self._clock() - self._start
            line = status_line(
                snap,
                total=self._total,
                images=self._images,
                done_now=self._done_now,
                elapsed=elapsed,
            )
            print(line, file=self._stream, flush=True)

    def note(self, text: str) -> None:
        """A line for the user that must not be torn by the bar."""
        if self._bar is not None:
            self._bar.write(text, file=self._stream)
        else:
            print(text, file=self._stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
