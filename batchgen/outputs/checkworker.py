"""The body of one worker process of :class:`batchgen.outputs.workers.CheckPool`.

Started by the pool as ``python -c BOOT <parent pid> <package dir>``; reads tasks from its
stdin and writes answers to its stdout, one frame each (a 4-byte big-endian length, then a
pickle), strictly in the order the tasks came. It runs only the functions named in
:data:`TASKS`, and it never renames or removes an image: it reads a ``.part`` file, writes a
thumbnail beside the gallery's, and answers. A worker killed at any moment therefore leaves
no file in an image's place; the parent removes the ``.part``.

It dies with its parent, whatever kills the parent:

* End of input: the parent holds the only write end of the worker's stdin, so when the parent
  exits — normally, by an exception, or by ``kill -9`` — the kernel closes it and the next
  read returns nothing. The worker exits.
* On Linux, ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` ends it at once, even in the middle of a
  long decode. (The signal comes when the *thread* that started the worker ends: the pool
  starts workers from the event loop's thread, which outlives the pool.)
* Elsewhere, a thread checks every second whether the parent's pid changed.

A terminal's Ctrl-C goes to its foreground process group. The pool starts each worker in a
group of its own, and the worker ignores SIGINT too, because the parent's first Ctrl-C means
"finish the downloads already paid for", which needs the workers.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from batchgen.errors import DownloadError
from batchgen.outputs.checks import check_file

HEADER = struct.Struct("!I")
PR_SET_PDEATHSIG = 1
# What a worker may be asked to run, by name: nothing else is ever called.
TASKS: dict[str, Callable[..., Any]] = {"check": check_file}


def main() -> None:
    parent = int(sys.argv[1]) if len(sys.argv) > 1 else os.getppid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with(parent)
    # The protocol gets private copies of fds 0 and 1; a stray print from any library goes to
    # stderr instead of corrupting an answer.
    rfd, wfd = os.dup(0), os.dup(1)
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    with os.fdopen(rfd, "rb") as inp, os.fdopen(wfd, "wb") as out:
        serve(inp, out)


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    """Answer tasks until the input ends."""
    while True:
        head = inp.read(HEADER.size)
        if len(head) < HEADER.size:
            return  # the parent closed the pipe, or died
        body = inp.read(HEADER.unpack(head)[0])
        task_id, name, args, kwargs = pickle.loads(body)
        answer: tuple[Any, ...]
        try:
            answer = (task_id, "ok", TASKS[name](*args, **kwargs))
        except DownloadError as exc:
            answer = (task_id, "error", exc.reason, str(exc), exc.retryable)
        except Exception as exc:  # a bug or an OS error: that task's failure, not the worker's
            message = f"{type(exc).__name__}: {exc}"[:300]
            answer = (task_id, "error", "check_error", message, False)
        data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        out.write(HEADER.pack(len(data)) + data)
        out.flush()


def _die_with(parent: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no libc to speak of: the watchdog still runs
            pass
    if os.getppid() != parent:  # the parent died before the signal was asked for
        os._exit(0)

    def watchdog() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watchdog, name="parent-watchdog", daemon=True).start()
