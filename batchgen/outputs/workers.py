"""Worker processes for the CPU-bound checks of a run's downloads.

A ``batchgen run`` is one Python process, and its event loop (HTTP, the journal, events) keeps
one core busy. Hashing, Pillow's checks and the gallery thumbnails run in other processes,
which have cores and GILs of their own: :class:`CheckPool` is the standard library's
``concurrent.futures.ProcessPoolExecutor`` driven by ``loop.run_in_executor``, so each check
has a future of its own and its answer can only ever reach that check.

Design, and why:

* **Started with ``spawn``, chosen explicitly.** Not ``fork``: the run's process has threads
  (sqlite, asyncio's pool, the executor's own), and a fork copies their locks mid-use
  (Python 3.12 warns of it); a forked child would also inherit asyncio's signal wake-up fd,
  so a Ctrl-C that reached a worker would be written into the run's loop a second time, and
  count as the second Ctrl-C that abandons the paid downloads. Not ``forkserver``: it is
  POSIX only, and its server is one process-wide helper, shared with any other library, whose
  children see it as their parent rather than the run. ``spawn`` starts each worker as a fresh
  interpreter, the same on every platform. It imports the main module of the run again in
  each worker (as ``__mp_main__``): the ``batchgen`` console script guards its call with
  ``if __name__ == "__main__"`` and only imports ``batchgen.cli`` (~15 ms); ``python -m
  batchgen`` and ``python -m pytest`` are not imported again (multiprocessing skips a
  package's ``__main__``); a script with no main file (``python -c``, Jupyter) has nothing
  to import. A user's script that calls ``batchgen.run_sync`` at its top level, with no such
  guard, would start its run again in every worker: docs/api.md says to guard it.
* **Started on demand, once per run.** ``ProcessPoolExecutor`` starts a ``spawn`` worker only
  when a check finds none idle, up to ``size`` (the machine's cores, at most the download
  concurrency): a run that downloads a few images a second keeps one worker (~90 ms of CPU to
  start: an interpreter and Pillow), and a run with nothing to download starts none.
* **A crash fails one check.** When a worker dies, the executor breaks: every check in it
  fails with ``BrokenProcessPool``, and it takes no more. The first check to see the break
  replaces the executor (once per break); which of the checks caught in it killed the worker
  is unknown, so each is retried once, alone: on a one-worker executor that runs one check
  at a time. A check that breaks that one too is the one that kills its worker, and fails
  with ``reason='check_crashed'`` (recorded like any download failure; the paid result is
  kept and fetched again by the next run); the others get their answers. A check that never
  reached the broken executor is submitted again, which costs it nothing.
* **They die with the run.** The executor's ``initializer`` starts a thread in each worker
  that polls ``os.getppid()`` against the run's pid and ends the worker the moment it
  changes: after ``kill -9`` of the run, a worker (busy or idle) is gone within
  ``WATCH_PARENT_S``, and multiprocessing's resource tracker follows once no process holds
  its pipe. Every exit of ``async with CheckPool()`` (normal end, exception, cancellation)
  shuts the executors down with ``shutdown(wait=True, cancel_futures=True)`` in a thread, so
  the event loop keeps running meanwhile; a worker still busy after ``CLOSE_GRACE_S`` is
  killed.
* **Ctrl-C leaves them running.** A terminal's Ctrl-C goes to the whole foreground process
  group, workers included (so does GNU ``timeout``'s SIGTERM, and a service manager's), and
  the run's first stop means "finish the downloads already paid for", which needs the
  workers: the initializer ignores SIGINT and SIGTERM (the workers still end with the run,
  above). A worker is started with both blocked (the submitting thread blocks them while a
  worker may start, and a spawned process keeps its parent's signal mask), so a signal during
  its start-up waits and is then discarded; where signal masks do not exist (Windows) a
  worker killed then costs a retried check.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchgen.errors import DISK_FULL_REASON, DownloadError, is_disk_full
from batchgen.outputs.checks import Checked, check_file

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess  # what active_children() lists

START_METHOD = "spawn"  # why: the module's docstring
CLOSE_GRACE_S = 5.0  # a running check may finish within this at close; then it is killed
WATCH_PARENT_S = 0.5  # how often a worker looks whether the run is still its parent
CRASHED = "the process checking this image died"
# What a terminal's Ctrl-C, GNU timeout or a service manager send to the whole process group:
# for the run they mean "stop submitting, finish what is paid for", which needs the workers.
_STOPS = (signal.SIGINT, signal.SIGTERM)


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity), not every core of the host."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------- in the worker


def _start_worker(parent: int) -> None:
    """Each worker's ``initializer``: ignore the stop signals, and end with the run."""
    for sig in _STOPS:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # blocked since the start (see _stops_blocked)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(_STOPS))
    if os.getppid() != parent:  # the run died while this worker was starting
        os._exit(0)
    threading.Thread(target=_watch_parent, args=(parent,), name="watch-parent", daemon=True).start()


def _watch_parent(parent: int) -> None:
    # The executor's worker blocks reading a queue whose write end it holds itself, so it
    # never sees the run go; a change of parent (reparented to init or a subreaper) is the
    # portable sign. os._exit: a worker owns nothing that needs cleaning up.
    while os.getppid() == parent:
        time.sleep(WATCH_PARENT_S)
    os._exit(0)


@dataclass(frozen=True, slots=True)
class _Failed:
    """A check's refusal, as it crosses back from the worker."""

    reason: str
    message: str
    retryable: bool


def _call(function: Callable[..., Checked], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run in the worker: the check's answer, or its failure as a :class:`_Failed`. Any other
    exception (a bug, an OS error) is that check's failure, not the worker's."""
    try:
        return function(*args, **kwargs)
    except DownloadError as exc:
        return _Failed(exc.reason, str(exc), exc.retryable)
    except Exception as exc:
        # A full disk (writing a thumbnail) is the run's to handle, not this check's failure.
        reason = DISK_FULL_REASON if is_disk_full(exc) else "check_error"
        return _Failed(reason, f"{type(exc).__name__}: {exc}"[:300], False)


# ----------------------------------------------------------------------------- in the run


class CheckPool:
    """Up to ``size`` worker processes; :meth:`check` runs ``checks.check_file`` in one.

    Use as ``async with CheckPool(n) as pool:``, or call :meth:`close`. ``function`` replaces
    ``check_file`` (tests: a module-level function the workers can import, or a
    ``functools.partial`` of one, taking ``check_file``'s arguments).
    """

    def __init__(
        self, size: int | None = None, *, function: Callable[..., Checked] = check_file
    ) -> None:
        self.size = max(1, size if size is not None else machine_cores())
        self._function = function
        self._main = _Lane(self, self.size)
        self._alone = _Lane(self, 1)  # the retries of checks caught in a break, one at a time
        self._one_at_a_time = asyncio.Lock()
        self._stopping: set[asyncio.Future[None]] = set()  # executors being shut down
        self.closed = False
        self.started = 0  # worker processes started over the pool's life
        self.crashes = 0  # executors broken by a worker's death

    async def __aenter__(self) -> CheckPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def pids(self) -> list[int]:
        """The worker processes of the current executors."""
        return [p.pid for lane in (self._main, self._alone) for p in lane.procs if p.pid]

    async def check(
        self,
        path: Path,
        expected_format: str | None,
        *,
        durable: bool,
        thumbs: Path | None = None,
        expected_sha256: str | None = None,
    ) -> Checked:
        """``checks.check_file`` on ``path`` in a worker process; its DownloadError here."""
        if self.closed:
            raise RuntimeError("the check pool is closed")
        kwargs = {
            "durable": durable,
            "thumbs": None if thumbs is None else str(thumbs),
            "expected_sha256": expected_sha256,
        }
        call = (self._function, (str(path), expected_format), kwargs)
        try:
            answer = await self._main.run(call)
        except BrokenProcessPool:
            answer = await self._retry_alone(call)
        if isinstance(answer, _Failed):
            raise DownloadError(answer.message, reason=answer.reason, retryable=answer.retryable)
        result: Checked = answer
        return result

    async def _retry_alone(self, call: _Call) -> Any:
        """A check caught in a break, run again with no other check beside it: if the
        executor breaks now, this check is what kills its worker."""
        async with self._one_at_a_time:
            try:
                return await self._alone.run(call)
            except BrokenProcessPool:
                raise DownloadError(CRASHED, reason="check_crashed") from None

    async def close(self) -> None:
        """Shut every executor down and wait for it (bounded): checks not yet started are
        cancelled (``check_cancelled``), running ones get ``CLOSE_GRACE_S`` to finish."""
        self.closed = True
        self._main.retire()
        self._alone.retire()
        stopping = list(self._stopping)
        if stopping:
            # Shielded: a second cancellation of the caller still leaves the bounded shutdown
            # to finish (and kill what does not end).
            await asyncio.shield(asyncio.gather(*stopping))

    def _stop(self, executor: ProcessPoolExecutor, procs: list[BaseProcess]) -> None:
        """Shut ``executor`` down in a thread, and kill what is left past the grace time."""
        loop = asyncio.get_running_loop()
        # Submitted now, not when a task first runs: the shutdown happens even if the task
        # that closes the pool is cancelled right after.
        shutdown = functools.partial(executor.shutdown, wait=True, cancel_futures=True)
        done = loop.run_in_executor(None, shutdown)
        task = asyncio.ensure_future(_bounded(done, procs))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)


_Call = tuple[Callable[..., Checked], tuple[Any, ...], dict[str, Any]]


async def _bounded(done: asyncio.Future[None], procs: list[BaseProcess]) -> None:
    finished, _ = await asyncio.wait({done}, timeout=CLOSE_GRACE_S)
    if not finished:
        for p in procs:  # a check that does not end: its worker goes, so the shutdown returns
            with contextlib.suppress(OSError, ValueError):
                p.kill()
        await asyncio.wait({done}, timeout=CLOSE_GRACE_S)


class _Lane:
    """One ``ProcessPoolExecutor`` at a time, started on first use, replaced once it broke."""

    def __init__(self, pool: CheckPool, size: int) -> None:
        self.pool = pool
        self.size = size
        self.executor: ProcessPoolExecutor | None = None
        self.procs: list[BaseProcess] = []  # its worker processes, as they start

    async def run(self, call: _Call) -> Any:
        """``call`` in a worker; BrokenProcessPool if the executor broke while it was in it."""
        loop = asyncio.get_running_loop()
        while True:
            if self.pool.closed:
                raise DownloadError("the check pool was closed", reason="check_cancelled")
            executor = self.executor or self._start()
            try:
                future = self._submit(loop, executor, call)
            except BrokenProcessPool:  # broken before this check reached it: costs it nothing
                self.retire(executor)
                continue
            try:
                return await future
            except BrokenProcessPool:
                self.retire(executor)
                raise
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self.pool.closed and task is not None and not task.cancelling():
                    # cancelled by the pool's shutdown, not by this check's caller
                    raise DownloadError(
                        "the check pool was closed", reason="check_cancelled"
                    ) from None
                raise

    def _start(self) -> ProcessPoolExecutor:
        self.executor = ProcessPoolExecutor(
            self.size,
            mp_context=multiprocessing.get_context(START_METHOD),
            initializer=_start_worker,
            initargs=(os.getpid(),),
        )
        self.procs = []
        return self.executor

    def _submit(
        self, loop: asyncio.AbstractEventLoop, executor: ProcessPoolExecutor, call: _Call
    ) -> asyncio.Future[Any]:
        if len(self.procs) >= self.size:  # every worker started: submit starts none
            return loop.run_in_executor(executor, _call, *call)
        # The executor starts a worker, if it needs one, inside submit, in this thread: the
        # new child processes are this lane's (the executor does not say which they are).
        before = set(multiprocessing.active_children())
        with _stops_blocked():
            future = loop.run_in_executor(executor, _call, *call)
        new = [p for p in multiprocessing.active_children() if p not in before]
        self.procs += new
        self.pool.started += len(new)
        return future

    def retire(self, executor: ProcessPoolExecutor | None = None) -> None:
        """Stop using ``executor`` (the current one by default) and shut it down; a broken
        executor is replaced by the next check, once however many checks it failed."""
        current = self.executor
        if current is None or (executor is not None and executor is not current):
            return
        if executor is not None:
            self.pool.crashes += 1
        self.executor = None
        procs, self.procs = self.procs, []
        self.pool._stop(current, procs)


@contextlib.contextmanager
def _stops_blocked() -> Iterator[None]:
    """SIGINT and SIGTERM blocked in this thread meanwhile: a worker started now inherits the
    mask and unblocks them only once it ignores them (``_start_worker``). A signal that
    arrives meanwhile is not lost: the run's other threads take it, or it waits until the
    end."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, set(_STOPS))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
