"""Worker processes for the CPU-bound checks of a run's downloads (issue 12).

A ``batchgen run`` is one Python process, and its event loop — HTTP, the journal, events —
keeps one core busy. Hashing, Pillow's checks and the gallery thumbnails used to run on that
core too (threads share the GIL: an earlier attempt with threads lost to the hand-offs).
:class:`CheckPool` runs them in worker processes instead, which have GILs of their own.

Design, and why:

* **Plain child processes on pipes, driven by the event loop.** Each worker is
  ``python -c …`` (:mod:`checkworker`) with a pipe on its stdin and one on its stdout, both
  registered with the running loop (``connect_read_pipe``/``connect_write_pipe``). A task is
  a small pickle written to the pipe; its answer wakes the loop like a socket does. No thread
  in this process: ``concurrent.futures.ProcessPoolExecutor`` would add a manager thread and
  a queue-feeder thread, and their GIL hand-offs on every task are the cost this is meant to
  remove. Not ``fork``: the run's process has threads (sqlite, asyncio's pool), and a fork
  copies their locks mid-use. Not ``multiprocessing``'s spawn: it re-imports the parent's
  ``__main__`` and starts a resource-tracker process too.
* **Started on demand, once per run.** The first task starts a worker; another is started
  only when a task finds every worker with ``GROW_AT`` checks already waiting, up to ``size``
  (the machine's cores, at most the download concurrency). A check takes milliseconds and a
  worker's start-up about 70 ms of CPU (an interpreter and Pillow), so a run that downloads
  a few images a second never pays for a second worker it would leave idle, while a fast run
  grows the pool within a handful of checks. A run with nothing to download starts none.
  They live until :meth:`CheckPool.close`.
* **They die with the run.** See :mod:`checkworker`: end of input when the parent goes away
  (``kill -9`` included), ``PR_SET_PDEATHSIG`` on Linux, a pid watchdog elsewhere. They run
  in a process group of their own and ignore SIGINT, so that a terminal's first Ctrl-C still
  lets paid downloads be checked and saved. ``close`` ends them and reaps them (a worker that
  does not end in ``CLOSE_GRACE_S`` is killed).
* **A crash fails one check.** A worker answers in order, so the task at the head of its
  queue is the one it died on: that one fails with ``reason='check_crashed'`` (recorded like
  any download failure), the tasks queued behind it go to another worker, and a new worker is
  started when needed.
* **An answer names its task.** Each task carries an id that its answer echoes; an answer
  for any other task than the one at the head of the queue is never taken (that worker is
  ended, as for a crash). Order alone had once been wrong: frames queued while a worker
  started could be overtaken on the pipe, and a check took another image's checksum.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pickle
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchgen.errors import DownloadError
from batchgen.outputs.checks import Checked
from batchgen.outputs.checkworker import HEADER

CLOSE_GRACE_S = 5.0
# Checks waiting in every worker before another worker is started (see above). Waiting behind
# a few checks costs a download milliseconds; a worker nobody needed costs ~70 ms of CPU.
GROW_AT = 4
# The worker's command line: the folder holding the batchgen package goes first on its path,
# so it runs the same code as this process even when that was found through sys.path edits.
BOOT = "import sys; sys.path.insert(0, sys.argv[2]); from batchgen.outputs.checkworker import main; main()"  # noqa: E501
PACKAGE_DIR = str(Path(__file__).resolve().parents[2])  # the folder holding batchgen/


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity), not every core of the host."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


_task_ids = itertools.count(1)


@dataclass
class _Task:
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    future: asyncio.Future[Any]
    frame: bytes = field(init=False)
    # Echoed in the answer: an answer is only ever taken for the task it names, whatever
    # happened to the order of the frames (see _Worker.data_received).
    id: int = field(init=False, default_factory=lambda: next(_task_ids))

    def __post_init__(self) -> None:
        body = pickle.dumps((self.id, self.name, self.args, self.kwargs), pickle.HIGHEST_PROTOCOL)
        self.frame = HEADER.pack(len(body)) + body


class CheckPool:
    """Up to ``size`` worker processes; :meth:`check` runs ``checks.check_file`` in one.

    Use as ``async with CheckPool(n) as pool:`` or call :meth:`close`. ``command`` replaces
    the worker's command line (tests: a worker that crashes on purpose); the parent's pid is
    appended to it, then the package folder.
    """

    def __init__(self, size: int | None = None, *, command: Sequence[str] | None = None) -> None:
        self.size = max(1, size if size is not None else machine_cores())
        self._command = list(command) if command else [sys.executable, "-c", BOOT]
        self._workers: list[_Worker] = []
        self._closed = False
        self.started = 0  # workers started over the pool's life (crashes replaced count too)
        self.crashes = 0

    async def __aenter__(self) -> CheckPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

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
        kwargs = {
            "durable": durable,
            "thumbs": None if thumbs is None else str(thumbs),
            "expected_sha256": expected_sha256,
        }
        result: Checked = await self._run("check", (str(path), expected_format), kwargs)
        return result

    async def _run(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._closed:
            raise RuntimeError("the check pool is closed")
        task = _Task(name, args, kwargs, asyncio.get_running_loop().create_future())
        self._dispatch(task)
        return await task.future

    def _dispatch(self, task: _Task) -> None:
        least = min(self._workers, key=lambda w: len(w.pending), default=None)
        if least is None or (len(least.pending) >= GROW_AT and len(self._workers) < self.size):
            least = self._start()
        least.send(task)

    def _start(self) -> _Worker:
        # A process group of its own: a terminal's Ctrl-C goes to the foreground group, and a
        # worker still starting up (before it can ignore SIGINT) would die of it; the run's
        # first Ctrl-C must leave the workers to check the paid downloads.
        proc = subprocess.Popen(
            [*self._command, str(os.getpid()), PACKAGE_DIR],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
            process_group=0,
        )
        worker = _Worker(proc, self)
        self._workers.append(worker)
        self.started += 1
        # The pipes join the loop in a moment; tasks sent before then wait in the worker.
        worker.connecting = asyncio.get_running_loop().create_task(worker.connect())
        return worker

    def _crashed(self, worker: _Worker, tasks: deque[_Task]) -> None:
        """``worker`` is gone: the task it was running fails, the others go elsewhere."""
        if worker in self._workers:
            self._workers.remove(worker)
        worker.close_input()
        code = worker.reap(wait=0.5)
        if self._closed:
            for t in tasks:
                _fail(t, DownloadError("the check pool was closed", reason="check_cancelled"))
            return
        self.crashes += 1
        if tasks:
            how = f"signal {signal.Signals(-code).name}" if code and code < 0 else f"exit {code}"
            _fail(
                tasks.popleft(),
                DownloadError(
                    f"the process checking this image died ({how})", reason="check_crashed"
                ),
            )
        for t in tasks:
            if not t.future.done():
                self._dispatch(t)

    async def close(self) -> None:
        """End every worker (end of input, then a kill past the grace time) and reap it."""
        self._closed = True
        workers, self._workers = self._workers, []
        for w in workers:
            w.close_input()
        for w in workers:
            if w.connecting is not None:
                with contextlib.suppress(Exception):
                    await w.connecting  # closes the input once connected
            if w.writer is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(w.ended), CLOSE_GRACE_S)
            w.reap(wait=1.0)


class _Worker(asyncio.Protocol):
    """One worker process: what was sent to it, in order, and the bytes it answered."""

    def __init__(self, proc: subprocess.Popen[bytes], pool: CheckPool) -> None:
        self.proc = proc
        self.pool = pool
        self.pending: deque[_Task] = deque()
        self.writer: asyncio.WriteTransport | None = None
        self.connecting: asyncio.Task[None] | None = None
        self._unsent: list[bytes] = []
        self._closing = False
        self._broken = False  # an answer named another task: nothing more is read from it
        self._buf = bytearray()
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        writer, _ = await loop.connect_write_pipe(asyncio.Protocol, self.proc.stdin)
        # Answers are matched to tasks by the order of their frames on the pipe: the frames
        # queued while connecting go first, and only then may send() write directly (no await
        # in between). Sharing the writer before the read pipe was connected let a task sent
        # meanwhile overtake them, and take another image's answer.
        for frame in self._unsent:
            writer.write(frame)
        self._unsent = []
        self.writer = writer
        await loop.connect_read_pipe(lambda: self, self.proc.stdout)
        if self._closing:
            writer.close()

    def send(self, task: _Task) -> None:
        self.pending.append(task)
        if self.writer is None:
            self._unsent.append(task.frame)
        else:
            self.writer.write(task.frame)

    def data_received(self, data: bytes) -> None:
        if self._broken:
            return
        self._buf += data
        while len(self._buf) >= HEADER.size:
            (n,) = HEADER.unpack_from(self._buf)
            if len(self._buf) < HEADER.size + n:
                return
            task_id, *answer = pickle.loads(self._buf[HEADER.size : HEADER.size + n])
            del self._buf[: HEADER.size + n]
            if task_id != self.pending[0].id:
                # Never give an image another image's checksum: end this worker, which fails
                # the task at the head of its queue and sends the rest elsewhere (_crashed).
                self._broken = True
                self.proc.kill()
                return
            task = self.pending.popleft()
            if task.future.done():  # its download was cancelled meanwhile
                continue
            if answer[0] == "ok":
                task.future.set_result(answer[1])
            else:
                _, reason, message, retryable = answer
                task.future.set_exception(
                    DownloadError(message, reason=reason, retryable=retryable)
                )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended.done():
            self.ended.set_result(None)
        tasks, self.pending = self.pending, deque()
        if tasks or not self.pool._closed:
            self.pool._crashed(self, tasks)

    def close_input(self) -> None:
        """End of input: the worker finishes what it was sent, then exits."""
        self._closing = True
        if self.writer is not None and not self.writer.is_closing():
            self.writer.close()

    def reap(self, wait: float) -> int:
        """The exit code (negative: the signal), killing the process first unless it ends
        within ``wait`` seconds."""
        try:
            return self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def _fail(task: _Task, exc: BaseException) -> None:
    if not task.future.done():
        task.future.set_exception(exc)
