"""``Settings``: everything a run needs to know, decided once, in one function.

The user's choices are ``options.RunOptions`` (flags or ``batchgen.run`` keywords, already
checked). ``build_settings`` adds what they leave to the environment and the manifest: flags
win over the environment, which wins over the manifest, which wins over the defaults. It is
the only place that reads the environment, and it is handed the ``environ`` mapping, so tests
never touch ``os.environ``. The fal key is held as a ``FalKey`` (redacted ``repr``) and
``public()`` (what the journal records) leaves it out. So is the OpenAI key of a BYOK manifest
(``OPENAI_API_KEY``, an ``OpenAIKey``): it is required before anything is submitted or written
when the manifest is BYOK, and ``redact`` masks both keys.

Where the run talks to:
    --emulate               the built-in emulator, started in-process on a free loopback port
    --endpoint URL          one fal-compatible server for queue, storage and media
    BATCHGEN_ENDPOINT       the same, from the environment
    (neither)               real fal, which needs FAL_KEY (or FAL_KEY_ID + FAL_KEY_SECRET)
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from batchgen.errors import UsageError
from batchgen.fal.auth import FalKey, OpenAIKey, key_from_env, openai_key_from_env, redact_all
from batchgen.fal.byok import MISSING_KEY, manifest_wants_key
from batchgen.fal.headers import RequestControls
from batchgen.journal.origin import of_target
from batchgen.manifest import Manifest
from batchgen.option_rules import as_notify, check_url
from batchgen.options import EMULATE_TIME_SCALE, WEBHOOK_LISTEN, RunOptions
from batchgen.running.clock import local_text, next_time
from batchgen.running.notify import ENV_NOTIFY, NotifyURL
from batchgen.running.window import WatchMode

# Sent to the emulator or a --endpoint server when no key is set: not a secret.
DUMMY_KEY = "batchgen-emulator"
ENV_ENDPOINT = "BATCHGEN_ENDPOINT"


class Target(StrEnum):
    FAL = "fal"
    ENDPOINT = "endpoint"
    EMULATE = "emulate"


@dataclass(frozen=True, slots=True)
class Settings:
    """The checked options, and what was decided from them, the environment and the manifest."""

    options: RunOptions
    manifest_path: Path
    manifest_name: str
    out_dir: Path
    target: Target
    endpoint: str | None  # base URL for ENDPOINT; None for FAL and EMULATE (known at start)
    key: FalKey  # redacted repr; DUMMY_KEY for the emulator
    openai_key: OpenAIKey | None  # BYOK only; redacted repr, never in public()
    faults: str | None  # --emulate: the emulator's faults ("none" unless given)
    time_scale: float | None  # --emulate: the emulator's pace
    webhook_listen: str | None  # --watch webhook: HOST:PORT the receiver binds
    webhook_url: str | None  # the public URL fal is given (None: the listen address)
    controls: RequestControls  # the headers sent with each submit (fal/headers.py)
    stop_at: float | None  # seconds since the epoch (--stop-at HH:MM, resolved once)
    notify: NotifyURL | None  # --notify or BATCHGEN_NOTIFY_URL: a credential, redacted
    # False: no key in the environment, DUMMY_KEY stands in. Only a rehearsal may go on so:
    # an --endpoint server must answer as a batchgen emulator first (running/preflight.py).
    has_key: bool = True

    @property
    def origin(self) -> str:
        """Where this run's requests are made (``journal.origin``)."""
        return of_target(str(self.target), self.endpoint)

    def redact(self, text: str) -> str:
        """``text`` with the fal key, the OpenAI key and the --notify URL masked."""
        return redact_all(text, self.key, self.openai_key, self.notify)

    def public(self) -> dict[str, Any]:
        """The settings as the journal records them: no key, nothing secret; ``resume`` is
        the flags that continue the run (``outputs.status.run_command`` reads them)."""
        return {
            **self.options.recorded(),
            "manifest": str(self.manifest_path),
            "out": str(self.out_dir),
            "target": str(self.target),
            "endpoint": self.endpoint,
            "faults": self.faults,
            "time_scale": self.time_scale,
            "webhook_listen": self.webhook_listen,
            **self.controls.public(),
            "stop_at": local_text(self.stop_at) if self.stop_at is not None else None,
            "notify": self.notify is not None,
            "resume": self._resume_flags(),
        }

    def _resume_flags(self) -> list[str]:
        flags = self.options.resume_flags()
        if self.target is Target.ENDPOINT and self.options.endpoint is None and self.endpoint:
            flags += ["--endpoint", self.endpoint]  # from BATCHGEN_ENDPOINT: said explicitly
        return flags


def build_settings(
    options: RunOptions | Mapping[str, Any],
    environ: Mapping[str, str],
    manifest: Manifest,
    *,
    now: float | None = None,
) -> Settings:
    """Settings from the options (checked here when given as a mapping), the environment and
    the manifest.

    Raises UsageError (exit 2) before anything is written or sent: for a bad option, when
    real fal is the target and no key is set (an ``--endpoint`` server without one is asked
    whether it is an emulator before the folder is made: ``running/preflight.py``), when the
    manifest is BYOK (see ``byok.manifest_wants_key``) and ``OPENAI_API_KEY`` is not set,
    and for a webhook run against fal without a public URL. The OpenAI key is read only for
    a BYOK manifest, and is sent to the emulator too: a rehearsal must need what the real
    run needs, and the emulator keeps it in memory only.
    """
    o = options if isinstance(options, RunOptions) else RunOptions.parse(options)
    endpoint = o.endpoint
    if endpoint is None and not o.emulate and environ.get(ENV_ENDPOINT, "").strip():
        endpoint = check_url(environ[ENV_ENDPOINT], ENV_ENDPOINT)
    target = Target.EMULATE if o.emulate else Target.ENDPOINT if endpoint else Target.FAL

    key = key_from_env(environ)
    has_key = key is not None
    if key is None:
        if target is Target.FAL:
            raise UsageError(
                "no fal key: set FAL_KEY (or FAL_KEY_ID and FAL_KEY_SECRET), "
                "or rehearse offline with --emulate"
            )
        key = FalKey(DUMMY_KEY)
    elif target is Target.EMULATE:
        key = FalKey(DUMMY_KEY)  # a real key has no business travelling to the emulator

    byok = manifest_wants_key(manifest)
    openai_key = openai_key_from_env(environ) if byok else None
    if byok and openai_key is None:
        raise UsageError(MISSING_KEY)

    webhook = o.watch is WatchMode.WEBHOOK
    if webhook and o.webhook_url is None and target is Target.FAL:
        raise UsageError(
            "--watch webhook needs --webhook-url: the public address fal can POST to (a "
            "tunnel or reverse proxy to --webhook-listen); see docs/webhooks.md"
        )
    emulate = target is Target.EMULATE
    notify = o.notify
    if notify is None and environ.get(ENV_NOTIFY, "").strip():
        try:  # the rule of --notify, said of the variable (without its value)
            notify = as_notify(environ[ENV_NOTIFY])
        except ValueError as exc:
            raise UsageError(f"{ENV_NOTIFY} {exc}") from None
    return Settings(
        options=o,
        manifest_path=manifest.path,
        manifest_name=manifest.name,
        out_dir=o.out if o.out is not None else Path("outputs") / manifest.name,
        target=target,
        endpoint=endpoint,
        key=key,
        openai_key=openai_key,
        faults=(o.faults or "none") if emulate else None,
        time_scale=(EMULATE_TIME_SCALE if o.time_scale is None else o.time_scale)
        if emulate
        else None,
        webhook_listen=(o.webhook_listen or WEBHOOK_LISTEN) if webhook else None,
        webhook_url=o.webhook_url if webhook else None,
        controls=RequestControls(
            priority=o.priority or manifest.priority,
            start_timeout=o.start_timeout,
            media_expiry=o.media_expiry,
            allow_fallbacks=o.allow_fallbacks or manifest.allow_fallbacks,
            store_io=not o.no_store_io,
        ),
        stop_at=next_time(o.stop_at, now=time.time() if now is None else now)
        if o.stop_at
        else None,
        notify=notify,
        has_key=has_key,
    )
