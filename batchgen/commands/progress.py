"""Progress on stderr: a tqdm bar on a terminal, else one plain line every few seconds.

The only module that knows tqdm. It listens to the run's events (done, failed, images) and, on
each refresh, reads the latest ``Snapshot`` (pending, in flight, spend, window) from a callback;
``batchgen run`` refreshes it on each snapshot event, so it never touches the journal or the
scheduler itself.

Both forms give the same figures in the same units: jobs finished of the total, failed, the
spend, the ETA (from this run's pace in jobs) and images/min; a run with nothing to do shows
neither pace nor ETA. The bar is drawn by us, not by
tqdm's default layout, so at 80 columns the figures that matter (done/total, failed, spend,
ETA) are kept and the rest dropped, rather than tqdm cutting the line's end (the spend) off.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import IO, Any

from batchgen.running.events import Event, Failed, Saved
from batchgen.running.snapshot import Snapshot as Snapshot  # re-exported: callers build them

LOG_EVERY_S = 5.0
# The bar leaves two columns free: a full-width line puts the terminal's echo of Ctrl-C ("^C")
# on a new line, and the bar above it could no longer be wiped.
SPARE_COLUMNS = 2
MIN_BAR = 6  # the narrowest bar worth drawing, in characters
BAR_FORMAT = "{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{postfix}"


def eta_seconds(remaining: int, done_now: int, elapsed: float) -> float | None:
    """Time left at this run's pace; None before anything finished."""
    if done_now <= 0 or elapsed <= 0:
        return None
    return remaining * elapsed / done_now


def eta_text(eta: float | None) -> str:
    if eta is None:
        return "?"
    s = int(eta)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def spend_label(snap: Snapshot, *, short: bool = False) -> str:
    """This run's spend; a rehearsal's is what it would cost on fal, billed nowhere."""
    if snap.rehearsal:
        return f"~${snap.spent:.2f} on fal" + ("" if short else " (rehearsal)")
    return f"~${snap.spent:.2f}" if short else f"spent ~${snap.spent:.2f}"


def images_per_min(images: int, elapsed: float) -> float:
    return images * 60.0 / elapsed if elapsed > 0 else 0.0


def remaining(snap: Snapshot) -> int:
    """Jobs still to finish: waiting to be sent, in flight, or (when the total is known)
    anything neither done nor failed, such as a result waiting for its download."""
    unfinished = snap.total - snap.done - snap.failed if snap.total else 0
    return max(snap.pending + snap.in_flight, unfinished)


def status_line(snap: Snapshot, *, total: int, images: int, done_now: int, elapsed: float) -> str:
    """One ``progress:`` line. The pace (images/min) only once there is work, done or to do,
    and the ETA only while jobs remain: a run with nothing to do shows neither."""
    left = remaining(snap)
    eta = eta_seconds(left, done_now, elapsed)
    pace = f" {images_per_min(images, elapsed):.1f} images/min," if done_now or left else ""
    return (
        f"progress: done {snap.done}/{total}, failed {snap.failed}, queued {snap.queued},"
        f" running {snap.running}, in flight {snap.in_flight} (window {snap.window}),"
        f" pending {snap.pending},{pace} {spend_label(snap)}"
        + (f", ETA {eta_text(eta)}" if left else "")
        + (f", SERVER UNREACHABLE {snap.unreachable:.0f}s" if snap.unreachable else "")
    )


def bar_postfix(snap: Snapshot, *, per_min: float | None, eta: float | None, room: int) -> str:
    """The figures after the bar, most important first, as many as fit in ``room`` columns.

    failed, the spend and the ETA (while jobs remain) are always kept (the spend shortened
    first); what follows them is dropped from the end when the terminal is narrow. No pace
    when ``per_min`` is None (nothing was or is to be done).
    """
    must = [f"failed {snap.failed}", spend_label(snap)]
    if remaining(snap):
        must.append(f"ETA {eta_text(eta)}")
    extra = [
        *([f"UNREACHABLE {snap.unreachable:.0f}s"] if snap.unreachable else []),
        *([f"{per_min:.1f} images/min"] if per_min is not None else []),
        f"running {snap.running}, queued {snap.queued}",
        f"window {snap.window}",
    ]
    for n in range(len(extra), -1, -1):
        text = ", ".join(must + extra[:n])
        if len(text) <= room:
            return text
    must[1] = spend_label(snap, short=True)
    return ", ".join(must)


def terminal_width(stream: IO[str]) -> int:
    """Columns of the terminal ``stream`` writes to: $COLUMNS first (as tqdm and shutil do),
    then the terminal itself, else 80."""
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):  # not a real file, or not a terminal
        return 80


class Progress:
    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        *,
        total: int,
        stream: IO[str],
        bar: bool,
        clock: Callable[[], float] = time.monotonic,
        columns: Callable[[], int] | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._total = total
        self._stream = stream
        self._clock = clock
        self._columns = columns or (lambda: terminal_width(stream))
        self._start = clock()
        self._images = 0
        self._done_now = 0  # jobs finished (either way) in this run, for the pace
        first = snapshot()
        self._bar: Any = None
        if bar:
            # Imported here: a run without a terminal (a log file, a CI job) never loads it.
            from tqdm import tqdm  # type: ignore[import-untyped]  # no stubs shipped

            ncols = self._width()
            self._bar = tqdm(
                total=total,
                initial=first.done + first.failed,
                file=stream,
                bar_format=BAR_FORMAT,
                ncols=ncols,
                postfix=self._postfix(first, ncols),  # the figures from the first frame on
                leave=False,  # the summary that follows says where the run ended
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
            self._bar.ncols = self._width()  # the terminal may have been resized
            self._bar.set_postfix_str(self._postfix(snap, self._bar.ncols), refresh=True)
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

    def _width(self) -> int:
        return max(self._columns() - SPARE_COLUMNS, 20)

    def _postfix(self, snap: Snapshot, ncols: int) -> str:
        elapsed = self._clock() - self._start
        digits = len(str(self._total))
        # What BAR_FORMAT draws besides the postfix: "100%|", the bar, "| n/total", ", ".
        room = ncols - 5 - MIN_BAR - 2 - (2 * digits + 1) - 2
        left = remaining(snap)
        return bar_postfix(
            snap,
            per_min=images_per_min(self._images, elapsed) if self._done_now or left else None,
            eta=eta_seconds(left, self._done_now, elapsed),
            room=room,
        )

    def _wipe(self) -> None:
        """Blank the bar's line, the spare columns (where a "^C" echo lands) included."""
        self._stream.write("\r" + " " * (self._bar.ncols + SPARE_COLUMNS) + "\r")
        self._stream.flush()

    def note(self, text: str) -> None:
        """A line for the user that must not be torn by the bar: the bar is wiped, the line
        written, the bar drawn again below it."""
        if self._bar is not None:
            self._wipe()
            self._bar.write(text, file=self._stream)
        else:
            print(text, file=self._stream, flush=True)

    def close(self) -> None:
        """Take the bar off the screen, so the summary (or a stop notice) stands alone."""
        if self._bar is not None:
            self._bar.close()
            self._wipe()
            self._bar = None
