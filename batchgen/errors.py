"""One exception tree for batchgen.

    BatchgenError                  base; ``exit_code`` is what the CLI returns for it
    ├── UsageError                 bad flags or arguments (exit 2)
    ├── ManifestError              a bad manifest: every ``Problem`` at once (exit 2)
    ├── JournalError               a journal from another version / manifest (exit 2)
    ├── AuthError                  401/403: the key is refused, the whole run stops (exit 2)
    │   ├── AccountLocked          the account can pay for nothing more (exit 6)
    │   └── AdminKeyRequired       403 from an admin route of fal's platform API (billing)
    ├── DiskFull                   the output folder's disk has no room left (exit 5)
    ├── QueueError                 talking to the fal queue went wrong
    │   ├── QueueHTTPError         an HTTP error answer: status, error_type, detail, request id
    │   ├── QueueTransportError    no HTTP answer; ``sent`` says whether the request left us
    │   ├── UnknownOutcome         a submit was sent but no answer came: a job may exist
    │   ├── StatusStreamError      the SSE status stream broke or went quiet: poll instead
    │   └── ProtocolError          the server answered with something we cannot parse
    └── DownloadError              an image could not be fetched or verified

A user mistake is always one of these, and the CLI prints its message without a traceback.
Messages never contain secrets: callers pass redacted values only.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class BatchgenError(Exception):
    exit_code = 1


class UsageError(BatchgenError):
    exit_code = 2


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a manifest, located as precisely as we can."""

    file: str
    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        field = f" {self.field}:" if self.field else ""
        return f"{where}:{field} {self.message}"


class ManifestError(BatchgenError):
    exit_code = 2
    # A file with 100,000 bad rows must not print 100,000 lines; `problems` keeps them all.
    SHOWN = 50

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        n = len(self.problems)
        head = f"{n:,} problem{'s' if n != 1 else ''} in the manifest:"
        lines = [f"  {p}" for p in self.problems[: self.SHOWN]]
        if n > self.SHOWN:
            lines.append(f"  ... and {n - self.SHOWN:,} more")
        super().__init__("\n".join([head, *lines]))


class JournalError(BatchgenError):
    exit_code = 2


class AuthError(BatchgenError):
    exit_code = 2


class AccountLocked(AuthError):
    """fal locks an account whose credit ran out: new requests are refused, the ones it
    already accepted still run (and are billed). Not a wrong key: the run collects what it
    paid for and the same command goes on after a top-up."""

    exit_code = 6


class DiskFull(BatchgenError):
    """The output folder's filesystem has no room (or the user's quota is spent). Nothing is
    lost: what fal made waits in the journal, and the same command resumes once there is
    space."""

    exit_code = 5


# A full disk, or a spent quota: the same remedy (make room), the same stop.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# The reason a check in a worker process gives for a full disk (the OSError stays there).
DISK_FULL_REASON = "disk_full"


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk is full: an ``OSError`` (ENOSPC, EDQUOT), SQLite's
    SQLITE_FULL, or a check refused for it in a worker process."""
    if isinstance(exc, DiskFull):
        return True
    if isinstance(exc, OSError):
        return exc.errno in _FULL_ERRNOS
    if isinstance(exc, sqlite3.OperationalError):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    if isinstance(exc, DownloadError):
        return exc.reason == DISK_FULL_REASON
    return False


class AdminKeyRequired(AuthError):
    """The key is valid but not an admin key, which the route needs (fal's billing events)."""


class QueueError(BatchgenError):
    pass


class QueueHTTPError(QueueError):
    """An HTTP error from the queue, storage or media host; ``str()`` is one readable line."""

    def __init__(
        self,
        status: int,
        *,
        detail: Any = None,
        error_type: str | None = None,
        request_id: str | None = None,
        url: str | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
        ingress: bool = False,
        timeout_type: str | None = None,
    ) -> None:
        self.status = status
        self.detail = detail
        self.error_type = error_type
        self.request_id = request_id
        self.url = url
        self.retry_after = retry_after
        self.retryable = retryable
        self.ingress = ingress
        # X-Fal-Request-Timeout-Type: "user" on a 504 is the request's own start timeout.
        self.timeout_type = timeout_type
        super().__init__(self._line())

    def _line(self) -> str:
        parts = [f"HTTP {self.status}"]
        if self.error_type:
            parts.append(self.error_type)
        text = _detail_text(self.detail)
        if text:
            parts.append(text)
        if self.request_id:
            parts.append(f"(request {self.request_id})")
        return ": ".join(parts[:2]) + (" " + " ".join(parts[2:]) if len(parts) > 2 else "")

    @property
    def locked(self) -> bool:
        """Whether the refusal says the account is locked (its credit ran out), not that the
        key is wrong. fal answers 403 "User is locked. Reason: Exhausted balance..."
        (docs/fal.md, Errors); a 402 (Payment Required) can only mean the same."""
        if self.status == 402:
            return True
        text = _detail_text(self.detail).lower()
        return self.status == 403 and any(w in text for w in _LOCKED_WORDS)


_LOCKED_WORDS = ("locked", "balance")


def _detail_text(detail: Any) -> str:
    """Flatten fal's ``detail`` (a string, or a FastAPI list of {loc, msg}) to one line."""
    if detail is None:
        return ""
    if isinstance(detail, str):
        return detail.replace("\n", " ")[:500]
    if isinstance(detail, list):
        items = []
        for d in detail:
            if isinstance(d, dict):
                loc = ".".join(str(x) for x in d.get("loc", []) if x != "body")
                msg = str(d.get("msg", ""))
                items.append(f"{loc}: {msg}" if loc else msg)
            else:
                items.append(str(d))
        return "; ".join(items)[:500]
    return str(detail)[:500]


class QueueTransportError(QueueError):
    """No HTTP answer came. ``sent=False``: nothing reached the server (connect error, pool
    timeout), so repeating even a submit is safe. ``sent=True``: the request may have arrived."""

    def __init__(self, message: str, *, sent: bool) -> None:
        self.sent = sent
        super().__init__(message)


class UnknownOutcome(QueueError):
    """The submit body was sent and the connection died before an answer: a job may exist."""


class StatusStreamError(QueueError):
    """The SSE status stream broke, closed early or went quiet; the caller falls back to polling."""


class ProtocolError(QueueError):
    pass


class DownloadError(BatchgenError):
    """An image could not be fetched or verified.

    ``reason`` is a short class for grouping failures (``truncated``, ``too_large``,
    ``not_image``, ``bad_redirect``, ...); ``retryable`` says whether trying again later could
    help (a transport error or truncation may pass, a ``file://`` URL never will).
    """

    def __init__(self, message: str, *, retryable: bool = False, reason: str = "download") -> None:
        self.retryable = retryable
        self.reason = reason
        super().__init__(message)
