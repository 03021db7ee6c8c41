"""Room kept on the output folder's disk for the moment it fills.

When the disk fills, requests already sent are still running on fal, paid for: their results
must reach the journal (a few KB each) or the next run would pay for them again. By then there
may be no byte left. So a run sets a little space aside when it starts (``Reserve.keep``: a
file of real blocks) and gives it back the moment the disk is full (``release``): the
journal's last transactions then have room. The next run keeps it again, once there is room.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

RESERVE_NAME = ".batchgen-reserve"  # hidden, and not an image: ImageFolder skips it
RESERVE_BYTES = 8 * 1024 * 1024  # the results of a full window of requests, many times over
MIN_RESERVE_BYTES = 64 * 1024  # less is not worth a file
CHUNK = 1024 * 1024


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem holding ``path`` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


class Reserve:
    def __init__(self, out_dir: Path, size: int = RESERVE_BYTES) -> None:
        self.path = Path(out_dir) / RESERVE_NAME
        self._size = size

    def keep(self) -> int:
        """Set the space aside (up to a quarter of what is free); the bytes kept. Best
        effort: a disk with no room for it runs without one."""
        if self.path.is_file():
            return self.path.stat().st_size
        size = min(self._size, free_bytes(self.path.parent) // 4)
        if size < MIN_RESERVE_BYTES:
            return 0
        tmp = self.path.with_name(self.path.name + ".part")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _allocate(fd, size)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)
            return 0
        return size

    def release(self) -> int:
        """Give the space back to the filesystem; the bytes freed (0 if none was kept)."""
        try:
            size = self.path.stat().st_size
            self.path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def discard(self) -> None:
        """Remove the reserve at the end of a run (best effort)."""
        with contextlib.suppress(OSError):
            self.release()


def _allocate(fd: int, size: int) -> None:
    """Real blocks, not a sparse file: a sparse reserve would free nothing."""
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
            return
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without it
                raise
    zeros = bytes(CHUNK)
    written = 0
    while written < size:
        written += os.write(fd, zeros[: min(CHUNK, size - written)])
