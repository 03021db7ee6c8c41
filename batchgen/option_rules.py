"""The rules of single option values, and the messages that say which flag broke one.

Each ``as_*`` or ``check_*`` function is a pydantic validator of one ``options.RunOptions``
field: it returns the value (converted, when the flag's text needs it) or raises
``ValueError`` with the rule in words ("must be HOST:PORT"); ``problems`` turns a pydantic
``ValidationError`` into one line per problem, naming the flag and, unless it is a secret, the
value given. The emulator's fault vocabulary is here too, for the help of ``--faults``.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import shutil
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from batchgen.errors import UsageError
from batchgen.fal.headers import MIN_START_TIMEOUT
from batchgen.running.notify import NotifyURL

MAX_CONCURRENCY = 1000  # more than the open files and connections a process gets: a typo
# Why a fixed floor and not the deadline plus a margin: fal's CDN clock starts when the image
# is made, and the download starts the moment the result is fetched, so the time a download
# needs does not grow with how long the request queued or ran. What it does need: a burst of
# completions waiting behind --download-concurrency, a failed download tried again and then
# from a fresh read of the result, a run killed mid-download that resumes minutes later. Ten
# minutes covers those; an image that expires first is paid for again.
MIN_MEDIA_EXPIRY_S = 600
HHMM = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")

# The emulator's fault names, written out rather than read from batchgen.emulator.faults:
# importing the emulator package pulls in Starlette and uvicorn, and every batchgen command
# (--help included) builds every subcommand's parser. tests/test_cli_help.py fails when this
# list and the emulator's disagree, or when the help leaves out a profile.
FAULT_NAMES = (
    "submit429",
    "submit503",
    "submitdrop",
    "status500",
    "status503",
    "runner_error",
    "content_policy",
    "policy_retryable",
    "truncate",
    "slow_media",
    "upload500",
    "evil_name",
    "file_url",
    "webhook_lost",
    "webhook_dup",
    "webhook_delay",
    "webhook_forged",
    "fallback",
    "blank",
)

FAULTS_HELP = (
    "a profile, NAME=PROBABILITY pairs, or a profile followed by pairs, comma-separated"
    " (e.g. flaky,content_policy=0.2). Profiles: none; flaky (a bad night: some 429s, dropped"
    " submits, status 500s, runner errors, refusals, truncated and slow media); hostile"
    f" (everything, often). Names: {', '.join(FAULT_NAMES)}"
)


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


# -- value rules (each raises ValueError; ``parse`` turns them into one UsageError) ----------


def as_concurrency(value: object) -> object:
    """``auto`` (any case) is None; anything else must be a whole number in range."""
    if value is None or str(value).strip().lower() == "auto":
        return None
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ValueError("must be a number or auto") from None
    if not 1 <= n <= MAX_CONCURRENCY:
        raise ValueError(f"must be between 1 and {MAX_CONCURRENCY}")
    return n


def as_url(value: object) -> object:
    """An http(s) URL without credentials (they would end up in the journal and the log)."""
    if value is None:
        return None
    text = str(value).strip()
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s) URL")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials (a key goes in FAL_KEY)")
    return text.rstrip("/")


def as_webhook_url(value: object) -> object:
    """``--webhook-url``: checked as ``as_url``, but kept as typed, a trailing slash included:
    fal is given it verbatim (a proxy may route ``/hook/`` and ``/hook`` apart), and the
    receiver serves its path (running/receiver.py)."""
    if value is None:
        return None
    as_url(value)
    return str(value).strip()


def check_url(value: str, flag: str) -> str:
    """``value`` as an http(s) URL without credentials, or a ``UsageError`` naming ``flag``
    (for ``BATCHGEN_ENDPOINT``, which comes from the environment, not from a field)."""
    try:
        return str(as_url(value))
    except ValueError as exc:
        raise UsageError(f"{flag} {exc}, got {value!r}") from None


def as_listen(value: object) -> object:
    if value is None:
        return None
    host, _, port = str(value).strip().rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ValueError("must be HOST:PORT (port 0 for any free one)")
    return f"{host}:{int(port)}"


def as_faults(value: object) -> object:
    if value is None:
        return None
    # The emulator (Starlette, uvicorn) is imported only by a run that names faults.
    from batchgen.emulator.faults import parse_faults

    try:
        parse_faults(str(value))
    except UsageError as exc:
        raise ValueError(str(exc).removeprefix("--faults: ")) from None
    return str(value).strip()


def as_stop_at(value: object) -> object:
    if value is None:
        return None
    text = str(value).strip()
    if HHMM.fullmatch(text) is None:
        raise ValueError("must be a local time HH:MM (24-hour)")
    return text


def as_notify(value: object) -> NotifyURL | None:
    if value is None or isinstance(value, NotifyURL):
        return value
    try:
        return NotifyURL(str(value))  # checks the URL without ever echoing it
    except UsageError as exc:
        raise ValueError(str(exc).removeprefix("--notify ")) from None


def as_on_exit(value: object) -> object:
    """A command line, split as a shell would split it, but run without one."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        argv = tuple(str(a) for a in value)
    else:
        try:
            argv = tuple(shlex.split(str(value)))
        except ValueError as exc:
            raise ValueError(f"cannot split the command line: {exc}") from None
    if not argv:
        raise ValueError("the command is empty")
    if shutil.which(argv[0]) is None and not Path(argv[0]).is_file():
        raise ValueError(
            f"{argv[0]!r} is not a command found on PATH (it runs without a shell; for pipes"
            " or redirects use: sh -c '...')"
        )
    return argv


def check_start_timeout(value: float | None) -> float | None:
    if value is not None and value <= MIN_START_TIMEOUT:
        raise ValueError(f"must be more than {MIN_START_TIMEOUT:g} s (fal's minimum)")
    return value


def check_media_expiry(value: int | None) -> int | None:
    if value is not None and value < MIN_MEDIA_EXPIRY_S:
        raise ValueError(
            "is too short to download within: fal's CDN would delete the images before a"
            " busy or resumed run fetches them, and each lost image is paid for again; use at"
            f" least {MIN_MEDIA_EXPIRY_S} s (10 minutes)"
        )
    return value


def as_path(value: object) -> object:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


# pydantic's error types, said as a flag's rule ("--deadline must be more than 0").
_SAID = {
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "int_type": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be text",
    "greater_than_equal": "must be at least {ge}",
    "greater_than": "must be more than {gt}",
    "less_than_equal": "must be at most {le}",
    "less_than": "must be less than {lt}",
    "enum": "must be one of {expected}",
    "literal_error": "must be one of {expected}",
}


def problems(exc: ValidationError, secret: Mapping[str, bool]) -> list[str]:
    """One line per problem in ``exc``; ``secret`` maps every option's name to whether its
    value must never be shown."""
    known = list(secret)
    out = []
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        name = str(loc[0]) if loc else ""
        ctx = err.get("ctx") or {}
        if err["type"] == "extra_forbidden":
            near = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            out.append(f"unknown option {name!r}{hint}")
            continue
        if err["type"] == "value_error":
            text = str(ctx.get("error", err["msg"]))
        else:
            said = {k: f"{v:g}" if isinstance(v, (int, float)) else v for k, v in ctx.items()}
            text = _SAID.get(err["type"], err["msg"]).format(**said)
        if name not in known:  # a rule between options: its message names them
            out.append(text)
            continue
        # Our own rules end with the value when they start "must" ("must be HOST:PORT, got
        # 'x'"); a longer explanation stands on its own.
        if not secret[name] and text.startswith("must"):
            text += f", got {_shown(err.get('input'))}"
        out.append(f"{flag_name(name)} {text}")
    return out


def _shown(value: object) -> str:
    """A value as the user typed it: a number plainly (``0``, also when it came as the text
    of a flag), anything else quoted, so an empty or odd value is visible."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return value.strip()
    return repr(value) if isinstance(value, str) else str(value)


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
