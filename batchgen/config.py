"""``Settings``: everything a run needs to know, decided once, in one function.

Flags win over the environment, which wins over the manifest, which wins over the defaults.
``build_settings`` is the only place that reads the environment, and it is handed the
``environ`` mapping, so tests never touch ``os.environ``. The fal key is held as a
``FalKey`` (redacted ``repr``) and ``public()`` — what the journal records — leaves it out.
So is the OpenAI key of a BYOK manifest (``OPENAI_API_KEY``, an ``OpenAIKey``): it is required
before anything is submitted or written when ``byok=True``, and ``redact`` masks both keys.

Where the run talks to:
    --emulate               the built-in emulator, started in-process on a free loopback port
    --endpoint URL          one fal-compatible server for queue, storage and media
    BATCHGEN_ENDPOINT       the same, from the environment
    (neither)               real fal, which needs FAL_KEY (or FAL_KEY_ID + FAL_KEY_SECRET)
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from batchgen.errors import UsageError
from batchgen.fal.auth import FalKey, OpenAIKey, key_from_env, openai_key_from_env, redact_all
from batchgen.fal.byok import MISSING_KEY
from batchgen.fal.headers import RequestControls
from batchgen.journal.origin import of_target
from batchgen.manifest import Manifest
from batchgen.running.controls import control_settings, public_controls
from batchgen.running.notify import NotifyURL
from batchgen.running.window import DEFAULT_MAX_WINDOW, WatchMode

# The emulator's latency model is real time (a high-quality image takes ~30 s); a rehearsal
# should finish in seconds, so --emulate runs 50× faster unless told otherwise.
EMULATE_TIME_SCALE = 0.02
# Sent to the emulator or a --endpoint server when no key is set: not a secret.
DUMMY_KEY = "batchgen-emulator"
MAX_CONCURRENCY = 1000
# Images fetched at once. Enough that a run whose jobs complete quickly keeps its downloads
# in step with its submits (each fetch waits a round trip for the CDN: at 8, a 1,000-job run
# at zero model time ended 4 s after its last submit); an idle slot costs nothing.
DOWNLOAD_CONCURRENCY = 32


class Target(StrEnum):
    FAL = "fal"
    ENDPOINT = "endpoint"
    EMULATE = "emulate"


@dataclass(frozen=True, slots=True)
class Settings:
    manifest_path: Path
    manifest_name: str
    out_dir: Path
    target: Target
    endpoint: str | None  # base URL for ENDPOINT; None for FAL and EMULATE (known at start)
    key: FalKey  # redacted repr; DUMMY_KEY for the emulator
    concurrency: int | None  # None: auto
    max_window: int
    max_cost: float | None
    max_attempts: int
    deadline: float
    watch: WatchMode
    download_concurrency: int
    max_image_bytes: int
    retry_failed: bool
    inline_uploads: bool
    faults: str | None
    time_scale: float | None
    seed: int
    quiet: bool
    openai_key: OpenAIKey | None = None  # BYOK only; redacted repr, never in public()
    reuse_folder: bool = False  # a folder another manifest file ran in may be built on
    webhook_listen: str | None = None  # --watch webhook: HOST:PORT the receiver binds
    webhook_url: str | None = None  # the public URL fal is given (None: the listen address)
    # Issue 13 (running/controls.py): headers sent with each submit, when to stop submitting,
    # who hears about the end. The URL is a credential: redacted, never in public().
    controls: RequestControls = field(default_factory=RequestControls)
    stop_at: float | None = None  # seconds since the epoch (--stop-at HH:MM, resolved once)
    notify: NotifyURL | None = None
    on_exit: tuple[str, ...] | None = None

    @property
    def origin(self) -> str:
        """Where this run's requests are made (``journal.origin``)."""
        return of_target(str(self.target), self.endpoint)

    def redact(self, text: str) -> str:
        """``text`` with the fal key and the OpenAI key masked (for logs and messages)."""
        return redact_all(text, self.key, self.openai_key, self.notify)

    def public(self) -> dict[str, Any]:
        """The settings as the journal records them: no key, nothing secret."""
        return {
            "manifest": str(self.manifest_path),
            "out": str(self.out_dir),
            "target": str(self.target),
            "endpoint": self.endpoint,
            "concurrency": "auto" if self.concurrency is None else self.concurrency,
            "max_cost": self.max_cost,
            "max_attempts": self.max_attempts,
            "deadline": self.deadline,
            "watch": str(self.watch),
            "download_concurrency": self.download_concurrency,
            "max_image_bytes": self.max_image_bytes,
            "faults": self.faults,
            "time_scale": self.time_scale,
            "reuse_folder": self.reuse_folder,
            "webhook_url": self.webhook_url,
            "webhook_listen": self.webhook_listen,
            **public_controls(self.controls, self.stop_at, self.notify, self.on_exit),
        }


def build_settings(
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    *,
    manifest_name: str,
    byok: bool = False,
    manifest: Manifest | None = None,
    now: float | None = None,
) -> Settings:
    """Settings from the parsed flags (``vars(args)``), the environment and the manifest's name.

    Raises UsageError (exit 2) for a bad combination, and before anything is submitted when
    real fal is the target and no key is set, or when the manifest is BYOK (``byok``, see
    ``byok.manifest_wants_key``) and ``OPENAI_API_KEY`` is not set. The OpenAI key is read
    only for a BYOK manifest, and is sent to the emulator too: a rehearsal must need what the
    real run needs, and the emulator keeps it in memory only.
    """
    emulate = bool(flags.get("emulate"))
    endpoint = flags.get("endpoint") or None
    if endpoint is None and not emulate:
        endpoint = environ.get("BATCHGEN_ENDPOINT", "").strip() or None
    if endpoint is not None:
        endpoint = _check_url(endpoint)
    target = Target.EMULATE if emulate else Target.ENDPOINT if endpoint else Target.FAL

    faults = flags.get("faults")
    time_scale = flags.get("time_scale")
    if target is not Target.EMULATE and (faults or time_scale is not None):
        raise UsageError("--faults and --time-scale only apply with --emulate")
    if time_scale is not None and not time_scale >= 0:
        raise UsageError(f"--time-scale must be 0 or more, got {time_scale}")
    if target is Target.EMULATE:
        faults = faults or "none"
        time_scale = EMULATE_TIME_SCALE if time_scale is None else float(time_scale)

    key = key_from_env(environ)
    if key is None:
        if target is Target.FAL:
            raise UsageError(
                "no fal key: set FAL_KEY (or FAL_KEY_ID and FAL_KEY_SECRET), "
                "or rehearse offline with --emulate"
            )
        key = FalKey(DUMMY_KEY)
    elif target is Target.EMULATE:
        key = FalKey(DUMMY_KEY)  # a real key has no business travelling to the emulator

    openai_key = openai_key_from_env(environ) if byok else None
    if byok and openai_key is None:
        raise UsageError(MISSING_KEY)

    out = flags.get("out")
    out_dir = Path(out) if out else Path("outputs") / manifest_name
    controls = control_settings(
        flags,
        environ,
        deadline=_positive_float("--deadline", flags.get("deadline", 1200.0)),
        now=time.time() if now is None else now,
        manifest_priority=manifest.priority if manifest else None,
        manifest_allows_fallbacks=manifest.allow_fallbacks if manifest else False,
    )
    return Settings(
        manifest_path=Path(flags["manifest"]),
        manifest_name=manifest_name,
        out_dir=out_dir,
        target=target,
        endpoint=endpoint,
        key=key,
        concurrency=_concurrency(flags.get("concurrency", "auto")),
        max_window=_positive_int("--max-window", flags.get("max_window", DEFAULT_MAX_WINDOW)),
        max_cost=_max_cost(flags.get("max_cost")),
        max_attempts=_positive_int("--max-attempts", flags.get("max_attempts", 3)),
        deadline=_positive_float("--deadline", flags.get("deadline", 1200.0)),
        watch=WatchMode(flags.get("watch") or "stream"),
        download_concurrency=_positive_int(
            "--download-concurrency",
            flags.get("download_concurrency", DOWNLOAD_CONCURRENCY),
            most=MAX_CONCURRENCY,
        ),
        max_image_bytes=_positive_int(
            "--max-image-bytes", flags.get("max_image_bytes", 50_000_000)
        ),
        retry_failed=bool(flags.get("retry_failed")),
        inline_uploads=bool(flags.get("inline_uploads")),
        faults=faults,
        time_scale=time_scale,
        seed=int(flags.get("seed") or 0),
        quiet=bool(flags.get("quiet")),
        openai_key=openai_key,
        reuse_folder=bool(flags.get("reuse_folder")),
        **_webhook(flags, target),
        **controls,
    )


def _webhook(flags: Mapping[str, Any], target: Target) -> dict[str, Any]:
    """``--watch webhook``'s receiver: where it listens, and the URL fal is told to call."""
    listen, url = flags.get("webhook_listen"), flags.get("webhook_url")
    if flags.get("watch") != "webhook":
        if listen or url:
            raise UsageError("--webhook-listen and --webhook-url apply with --watch webhook")
        return {}
    if url is not None:
        url = _check_url(url, "--webhook-url")
    elif target is Target.FAL:
        raise UsageError(
            "--watch webhook needs --webhook-url: the public address fal can POST to (a "
            "tunnel or reverse proxy to --webhook-listen); see docs/webhooks.md"
        )
    return {"webhook_listen": listen or "127.0.0.1:0", "webhook_url": url}


def _check_url(url: str, flag: str = "--endpoint") -> str:
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"{flag} must be an http(s) URL, got {url!r}")
    if parts.username or parts.password:
        # A URL with credentials would end up in the journal and the log.
        hint = "; use FAL_KEY" if flag == "--endpoint" else ""
        raise UsageError(f"{flag} must not carry credentials{hint}")
    return url.strip().rstrip("/")


def _concurrency(value: object) -> int | None:
    if value is None or str(value).strip().lower() == "auto":
        return None
    try:
        n = int(str(value))
    except ValueError:
        raise UsageError(f"--concurrency must be a number or auto, got {value!r}") from None
    if not 1 <= n <= MAX_CONCURRENCY:
        raise UsageError(f"--concurrency must be between 1 and {MAX_CONCURRENCY}, got {n}")
    return n


def _max_cost(value: object) -> float | None:
    if value is None:
        return None
    cost = _float("--max-cost", value)
    if cost < 0:
        raise UsageError(f"--max-cost must not be negative, got {value}")
    return cost


def _float(flag: str, value: object) -> float:
    try:
        x = float(str(value))
    except ValueError:
        raise UsageError(f"{flag} must be a number, got {value!r}") from None
    if x != x or x in (float("inf"), float("-inf")):
        raise UsageError(f"{flag} must be a finite number, got {value!r}")
    return x


def _positive_float(flag: str, value: object) -> float:
    x = _float(flag, value)
    if x <= 0:
        raise UsageError(f"{flag} must be more than 0, got {value}")
    return x


def _positive_int(flag: str, value: object, *, most: int | None = None) -> int:
    try:
        n = int(str(value))
    except ValueError:
        raise UsageError(f"{flag} must be a whole number, got {value!r}") from None
    if n < 1:
        raise UsageError(f"{flag} must be at least 1, got {n}")
    # More than the open files and connections a machine gives one process is a typo.
    if most is not None and n > most:
        raise UsageError(f"{flag} must be at most {most}, got {n}")
    return n
