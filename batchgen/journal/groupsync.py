"""Group commit for the request ids: many jobs wait on one fsync, and the event loop on none.

The rule (docs/interfaces.md, the journal): a request id is committed, durably, before
anything else happens to its job. ``Journal.set_submitted(sync=False)`` commits it at once
without the fsync
(``synchronous=NORMAL``: a ``kill -9`` already cannot lose it), and the job then waits in
:meth:`GroupSync.wait` until an fsync of the WAL that *began after* its commit has finished
(``journal/walsync.py``). That fsync runs in a worker thread, one at a time: while one runs,
every job committed meanwhile waits for the next, which then covers all of them. At 64 jobs in
flight a handful share each fsync, and the loop keeps serving the others' streams and
downloads instead of waiting for the disk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class GroupSync:
    """``await wait()``: once it returns, ``sync`` has run entirely after the call began."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self._sync = sync
        self._running: asyncio.Future[None] | None = None  # the fsync under way
        self._next: asyncio.Future[None] | None = None  # the one after it: later commits
        self.syncs = 0  # fsyncs run (a test and the run's curiosity: commits / syncs)

    async def wait(self) -> None:
        if self._running is None:
            fut = self._start()
        else:  # it began before our commit: it may not cover it
            if self._next is None:
                self._next = asyncio.get_running_loop().create_future()
            fut = self._next
        # Shielded: a waiter's cancellation (Ctrl-C twice) must not fail the others' fsync.
        await asyncio.shield(fut)

    def _start(self) -> asyncio.Future[None]:
        self.syncs += 1
        fut = asyncio.ensure_future(asyncio.to_thread(self._sync))
        self._running = fut
        fut.add_done_callback(self._done)
        return fut

    def _done(self, fut: asyncio.Future[None]) -> None:
        self._running = None
        if not fut.cancelled():
            fut.exception()  # retrieved: its waiters (if any are left) raise it
        waiting, self._next = self._next, None
        if waiting is None:
            return
        started = self._start()

        def relay(f: asyncio.Future[None]) -> None:
            if waiting.done():
                return
            if f.cancelled():
                waiting.cancel()
            elif (exc := f.exception()) is not None:
                waiting.set_exception(exc)
            else:
                waiting.set_result(None)

        started.add_done_callback(relay)
