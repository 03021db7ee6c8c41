"""Shared helpers for the check worker tests: check functions that misbehave on purpose (run
in the workers instead of ``check_file``, so they live at a module's top level, where a
worker process can import them), and finding a process's workers in /proc.

Not a test module (it holds no tests).
"""

from __future__ import annotations

import io
import os
import signal
import time
from pathlib import Path
from typing import Any

from PIL import Image

from batchgen.outputs.checks import Checked, check_file


def crash_on(marker: str, path: str, *args: Any, **kwargs: Any) -> Checked:
    """``check_file``, except that the worker dies by SIGKILL on a path holding ``marker``."""
    if marker in path:
        os.kill(os.getpid(), signal.SIGKILL)
    return check_file(path, *args, **kwargs)


def slow_on(marker: str, seconds: float, path: str, *args: Any, **kwargs: Any) -> Checked:
    """``check_file``, after ``seconds`` of sleep on a path holding ``marker``."""
    if marker in path:
        time.sleep(seconds)
    return check_file(path, *args, **kwargs)


def jpeg(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (seed * 40 % 256, 90, 200)).save(buf, "JPEG")
    return buf.getvalue()


def _stat(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command name: state, ppid, pgrp, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """Running (a zombie that no one reaped yet is dead)."""
    try:
        return _stat(pid)[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False


def children_of(pid: int, *, marker: bytes = b"") -> list[int]:
    """Live child processes of ``pid`` whose command line holds ``marker``."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int(_stat(d.name)[1])
                cmd = (d / "cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid and marker in cmd and alive(int(d.name)):
                found.append(int(d.name))
    return found


def workers_of(pid: int) -> list[int]:
    """Live check workers started by process ``pid`` (multiprocessing's spawned children; its
    resource tracker is another child of ``pid``, not a worker)."""
    return children_of(pid, marker=b"multiprocessing.spawn")


def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = _stat(d.name)
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                found.append(int(d.name))
    return found


def wait_until(cond: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
