"""A word when the run ends: ``--notify URL`` and ``--on-exit CMD``.

When a run ends (all done, failures, stopped at the budget or at ``--stop-at``, interrupted,
refused key) it builds one JSON summary (``end_message``) and

- POSTs it to the ``--notify`` URL (or ``BATCHGEN_NOTIFY_URL``). Its ``text`` field reads on
  its own, so a Slack-style incoming webhook shows it as it is;
- feeds it on stdin to the ``--on-exit`` command, split with ``shlex`` and run without a shell
  (``shell=False``): nothing in the summary or the folder name can be read as shell syntax.
  A user who wants a pipe writes ``sh -c '...'`` and sees that they asked for a shell.

Either failing is written to run.log and said on stderr (``warn``, one line), and changes
nothing else: the exit code is the run's.

The URL is a secret. An incoming-webhook URL is its own credential (Slack's carries the token
in its path), so it is held as a ``NotifyURL``: never printed, left out of the journal's
settings, masked in run.log and in every message (``Settings.redact``), and named in messages
by its host only.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from batchgen.errors import UsageError
from batchgen.fal.auth import Secret
from batchgen.planning.pricing import usd
from batchgen.retry import NOTIFY, call_with_retries
from batchgen.running.events import StopReason
from batchgen.running.summary import Summary, duration_text

POST_TIMEOUT_S = 10.0
ON_EXIT_TIMEOUT_S = 60.0
OUTPUT_SHOWN = 300  # characters of a failed --on-exit command's output kept in run.log
ENV_NOTIFY = "BATCHGEN_NOTIFY_URL"


class NotifyURL(Secret):
    """The ``--notify`` URL: shown as ``***``; ``host`` is what messages may name."""

    __slots__ = ()
    _what, _env = "the --notify URL", f"--notify or {ENV_NOTIFY}"

    def __init__(self, value: str) -> None:
        super().__init__(value)
        parts = urllib.parse.urlsplit(self._value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # Not echoed: a mistyped URL still holds its token.
            raise UsageError(
                "--notify must be an http(s) URL (the value is not shown: it may hold a token)"
            )

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self._value).hostname or "?"

    def fragments(self) -> list[str]:
        """The URL, and each part of it that may be the token on its own: the path, the
        query, the last path segment and any token-like one (8+ characters with a digit:
        Slack's T…/B…/secret, Discord's id/token), query values, a password. Plain words
        ("services") are left alone, or every log line using them would be masked."""
        p = urllib.parse.urlsplit(self._value)
        segments = [x for x in p.path.split("/") if x]
        parts = [self._value, self._value.split("//", 1)[-1], p.path, p.query, p.fragment]
        parts += [x for x in segments if any(c.isdigit() for c in x)] + segments[-1:]
        parts += [v for _, v in urllib.parse.parse_qsl(p.query)] + [p.password or ""]
        return [x for x in dict.fromkeys(parts) if len(x) >= 8 or x == self._value]


# ------------------------------------------------------------------------- the message

_OUTCOME = {
    StopReason.BUDGET: "stopped at the budget",
    StopReason.STOP_AT: "stopped at --stop-at",
    StopReason.INTERRUPTED: "interrupted",
    StopReason.DECLINED: "not started (cost not confirmed)",
    StopReason.FATAL: "stopped: fal refused the key or the account",
}


def end_message(summary: Summary, *, name: str, images: int, exit_code: int) -> dict[str, Any]:
    """The JSON sent at the end of a run; ``text`` is the one line a person reads."""
    failed = sum(summary.failed.values())
    if summary.stop is not None:
        outcome = _OUTCOME[summary.stop]
    elif failed:
        outcome = "finished with failures"
    elif summary.unfinished:
        outcome = "ended with jobs unfinished"
    else:
        outcome = "finished"
    rehearsal = bool(summary.rehearsal) and not summary.spent
    money = (
        f"rehearsal, nothing billed (~${summary.rehearsal_run:.2f} on fal)"
        if rehearsal
        else f"~${summary.spent_run:.2f} spent this run, ~${summary.spent:.2f} for the folder"
    )
    text = (
        f"batchgen {name}: {outcome}. done {summary.done}, failed {failed}, unfinished"
        f" {summary.unfinished}; {money}; {duration_text(summary.wall_seconds)}; exit"
        f" {exit_code}; {summary.out_dir}"
    )
    return {
        "event": "batchgen.run.end",
        "manifest": name,
        "folder": summary.out_dir,
        "exit_code": exit_code,
        "stop": str(summary.stop) if summary.stop is not None else None,
        "done": summary.done,
        "failed": failed,
        "failed_by_class": dict(summary.failed),
        "unfinished": summary.unfinished,
        "images": images,
        "spent_usd": usd(summary.spent),
        "spent_run_usd": usd(summary.spent_run),
        "rehearsal": rehearsal,
        "rehearsal_usd": usd(summary.rehearsal),
        "duration_s": round(summary.wall_seconds, 1),
        "text": text,
    }


# ------------------------------------------------------------------------- delivering it


async def post_message(
    url: NotifyURL,
    message: dict[str, Any],
    *,
    http: httpx.AsyncClient | None = None,
    sleep: Callable[[float], Any] = asyncio.sleep,
) -> str | None:
    """POST ``message``; None when it was taken (2xx), else why not, with no part of the URL."""
    own = http is None
    client = http or httpx.AsyncClient(timeout=POST_TIMEOUT_S, follow_redirects=False)

    async def post() -> None:
        resp = await client.post(url.reveal(), json=message, timeout=POST_TIMEOUT_S)
        resp.raise_for_status()  # a refusal: retry.classify says whether a second try helps

    try:
        await call_with_retries(post, op="notify", policy=NOTIFY, sleep=sleep)
    except httpx.HTTPStatusError as exc:
        return url.redact(f"HTTP {exc.response.status_code}")
    except httpx.HTTPError as exc:
        why = f"{type(exc).__name__}: {' '.join(str(exc).split())}".rstrip(": ")
        return url.redact(why or "no answer")
    finally:
        if own:
            await client.aclose()
    return None


async def run_on_exit(
    argv: Sequence[str], message: dict[str, Any], *, limit_s: float = ON_EXIT_TIMEOUT_S
) -> str | None:
    """Run ``argv`` (no shell) with ``message`` as JSON on stdin; None when it exited 0."""
    data = (json.dumps(message, ensure_ascii=False) + "\n").encode()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        return f"could not start {argv[0]!r}: {exc.strerror or exc}"
    try:
        async with asyncio.timeout(limit_s):
            out, _ = await proc.communicate(data)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return f"{argv[0]!r} did not finish within {limit_s:g} s; it was stopped"
    if proc.returncode == 0:
        return None
    tail = " ".join(out.decode(errors="replace").split())[-OUTPUT_SHOWN:]
    return f"{argv[0]!r} exited {proc.returncode}" + (f": {tail}" if tail else "")


async def tell_the_end(
    message: dict[str, Any],
    *,
    notify: NotifyURL | None,
    on_exit: Sequence[str] | None,
    log: Callable[[str], None],
    warn: Callable[[str], None] = lambda line: None,
) -> None:
    """Both deliveries, each failure logged (through run.log's redaction) and given to
    ``warn`` (the same line, for the user's terminal), never raised."""
    if notify is not None:
        try:
            failed = await post_message(notify, message)
        except Exception as exc:  # a notification must never turn a run into a crash
            failed = notify.redact(f"{type(exc).__name__}: {exc}")
        where = f"--notify ({notify.host})"
        log(f"notify: {where} failed: {failed}" if failed else f"notify: sent to {where}")
        if failed:
            warn(f"notify: {where} failed: {failed} (the run's exit code stands)")
    if on_exit:
        try:
            failed = await run_on_exit(on_exit, message)
        except Exception as exc:
            failed = f"{type(exc).__name__}: {exc}"
        log(f"on-exit: {failed}" if failed else f"on-exit: {on_exit[0]!r} exited 0")
        if failed:
            warn(f"on-exit: {failed} (the run's exit code stands)")
