"""The run's options, declared once: ``RunOptions``.

Every option of ``batchgen run`` is one field of ``RunOptions``: its type, default, rules and
help text, and (in a ``Flag``) how it looks on the command line. Everything else is derived:

- the flags of ``batchgen run``, with their help and defaults (``commands/flags.py``);
- the keywords of ``batchgen.run`` and ``run_sync``, their signature and the list in their
  docstring (``api.py``);
- ``config.Settings``, which holds the checked options beside what is decided from the
  environment and the manifest (where requests go, the keys, the output folder);
- what the journal records of a run (``recorded``) and the flags that resume it
  (``resume_flags``).

So a new option is one field here. The rules are checked here only (single values by the
validators in ``option_rules``), all at once: a value from
the command line arrives as text and is converted by the field's type, a value from Python
arrives typed, and every problem comes back in one ``UsageError`` that names the flag
(``--max-attempts must be at least 1, got 0``). A secret's value is never echoed.

What is checked here needs nothing but the values themselves. What needs the environment or
the manifest (a key, ``BATCHGEN_ENDPOINT``, whether real fal needs ``--webhook-url``) is
decided in ``config.build_settings``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo

from batchgen.errors import UsageError
from batchgen.option_rules import (
    FAULTS_HELP,
    MAX_CONCURRENCY,
    MIN_MEDIA_EXPIRY_S,
    as_concurrency,
    as_faults,
    as_listen,
    as_notify,
    as_on_exit,
    as_path,
    as_stop_at,
    as_url,
    as_webhook_url,
    check_media_expiry,
    check_start_timeout,
    flag_name,
    problems,
)
from batchgen.running.notify import NotifyURL
from batchgen.running.window import WatchMode

# Images fetched at once. Enough that a run whose jobs complete quickly keeps its downloads
# in step with its submits (each fetch waits a round trip for the CDN: at 8, a 1,000-job run
# at zero model time ended 4 s after its last submit); an idle slot costs nothing.
DOWNLOAD_CONCURRENCY = 32
DEADLINE_S = 1200.0  # submit to result; gpt-image-2 at high quality takes about a minute
MAX_IMAGE_BYTES = 50_000_000  # a 4K PNG is ~20 MB: more than this is not an image we asked for
# The emulator's latency model is real time (a high-quality image takes ~30 s); a rehearsal
# should finish in seconds, so --emulate runs 50× faster unless told otherwise.
EMULATE_TIME_SCALE = 0.02
WEBHOOK_LISTEN = "127.0.0.1:0"  # the receiver's default: any free port on loopback


@dataclass(frozen=True, slots=True)
class Flag:
    """How a ``RunOptions`` field appears on the command line, and what a run keeps of it."""

    section: str  # the help's heading the flag is listed under
    metavar: str | None = None
    exclusive: str | None = None  # flags that name the same group cannot be given together
    secret: bool = False  # recorded only as whether it was set; never echoed in a message
    resume: bool = False  # repeated by the resume command when it is not the default
    implied: Any = None  # what a default of None stands for (--time-scale: 0.02): not repeated


# -- the options ---------------------------------------------------------------------------

_WHERE = "where the requests go"
_PACE = "pace, budget and patience"
_WATCH = "watching requests"
_FOLDER = "the output folder and downloads"
_REHEARSAL = "rehearsals (with --emulate)"
_CONTROLS = "fal's controls for overnight runs (docs/controls.md)"
_END = "the end of a run"


class RunOptions(BaseModel):
    """What a user may choose about a run: ``batchgen run``'s flags, ``batchgen.run``'s
    keywords. Build it with :meth:`parse` to get every problem as one ``UsageError``."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    emulate: Annotated[bool, Flag(_WHERE, exclusive="where", resume=True)] = Field(
        False, description="run against the built-in emulator: no key, no network"
    )
    endpoint: Annotated[
        str | None, BeforeValidator(as_url), Flag(_WHERE, "URL", exclusive="where", resume=True)
    ] = Field(
        None,
        description="base URL of a fal-compatible server, e.g. one started by 'batchgen"
        " emulator' (default: $BATCHGEN_ENDPOINT, else fal itself)",
    )
    concurrency: Annotated[
        int | None, BeforeValidator(as_concurrency), Flag(_PACE, "N|auto", resume=True)
    ] = Field(
        None,
        description="requests in flight at once: N, or auto to find the account's limit"
        " (default: auto)",
    )
    max_cost: Annotated[float | None, Flag(_PACE, "USD", resume=True)] = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="stop submitting before the folder's estimated spend passes USD; raise it"
        " and run again to continue (default: no limit)",
    )
    max_attempts: Annotated[int, Flag(_PACE, "N")] = Field(3, ge=1, description="attempts per job")
    deadline: Annotated[float, Flag(_PACE, "SECONDS")] = Field(
        DEADLINE_S,
        gt=0,
        allow_inf_nan=False,
        description="seconds from submit to result before fal is asked about a request: one it"
        " finished is fetched, one still queued or running is cancelled and sent again",
    )
    watch: Annotated[WatchMode, Flag(_WATCH, resume=True)] = Field(
        WatchMode.STREAM,
        description="how to follow a request: fal's status stream (polling when it breaks),"
        " polling, or webhook: fal POSTs each result to --webhook-url (docs/webhooks.md)",
    )
    webhook_listen: Annotated[
        str | None,
        BeforeValidator(as_listen),
        Flag(_WATCH, "HOST:PORT", resume=True, implied=WEBHOOK_LISTEN),
    ] = Field(
        None,
        description=f"with --watch webhook: where the receiver listens (default: {WEBHOOK_LISTEN},"
        " any free port on loopback)",
    )
    webhook_url: Annotated[
        str | None, BeforeValidator(as_webhook_url), Flag(_WATCH, "URL", resume=True)
    ] = Field(
        None,
        description="with --watch webhook: the public URL fal POSTs to, given to fal as typed"
        " and served at its own path, a tunnel or reverse proxy to --webhook-listen (required"
        " against fal; default elsewhere: the listen address, at /batchgen/webhook)",
    )
    out: Annotated[Path | None, BeforeValidator(as_path), Flag(_FOLDER, "DIR")] = Field(
        None, description="output folder (default: outputs/<manifest name>)"
    )
    download_concurrency: Annotated[int, Flag(_FOLDER, "N")] = Field(
        DOWNLOAD_CONCURRENCY, ge=1, le=MAX_CONCURRENCY, description="images downloaded at once"
    )
    max_image_bytes: Annotated[int, Flag(_FOLDER, "N")] = Field(
        MAX_IMAGE_BYTES,
        ge=1,
        description="refuse an image larger than N bytes; its job fails as too_large",
    )
    retry_failed: Annotated[bool, Flag(_FOLDER)] = Field(
        False, description="put failed jobs back in the queue"
    )
    replace_rejected: Annotated[bool, Flag(_FOLDER)] = Field(
        False,
        description="one new take (the same request, a new variant) of each image marked"
        " rejected in the folder (marks.sqlite) whose job is in the manifest, once each",
    )
    verify: Annotated[bool, Flag(_FOLDER)] = Field(
        False,
        description="re-hash every saved image against its recorded sha256 before submitting"
        " (every run checks each one's size); a missing or broken one is fetched again",
    )
    reuse_folder: Annotated[bool, Flag(_FOLDER)] = Field(
        False,
        description="build on an output folder another manifest file ran in: the jobs both"
        " manifests share are kept, new ones added",
    )
    inline_uploads: Annotated[bool, Flag(_FOLDER)] = Field(
        False,
        description="send local reference files inside each request as data URIs instead of"
        " uploading them to fal storage once",
    )
    faults: Annotated[
        str | None, BeforeValidator(as_faults), Flag(_REHEARSAL, "SPEC", resume=True)
    ] = Field(None, description=f"the emulator's faults: {FAULTS_HELP}")
    time_scale: Annotated[
        float | None, Flag(_REHEARSAL, "X", resume=True, implied=EMULATE_TIME_SCALE)
    ] = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="the emulator's pace, 1 as fal's, 0 with no model time (default:"
        f" {EMULATE_TIME_SCALE:g})",
    )
    seed: Annotated[int, Flag(_REHEARSAL, "N", resume=True)] = Field(
        0,
        description="the emulator's dice: the same seed, with requests sent in the same order"
        " (--concurrency 1), fails the same ones the same way; another seed rehearses another"
        " bad night",
    )
    result_ttl: Annotated[float | None, Flag(_REHEARSAL, "SECONDS", resume=True)] = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="how long the emulator's queue keeps a result after it completes (default:"
        " fal's 1 hour, or 6 minutes for a large one, at the emulator's pace); a result fetched"
        " later is lost",
    )
    priority: Annotated[Literal["low", "normal"] | None, Flag(_CONTROLS, resume=True)] = Field(
        None,
        description="fal's queue priority: low waits behind every normal request to the"
        " endpoint, so a bulk run yields to interactive traffic (default: the manifest's"
        " priority, else fal's, normal)",
    )
    start_timeout: Annotated[
        float | None, AfterValidator(check_start_timeout), Flag(_CONTROLS, "SECONDS", resume=True)
    ] = Field(
        None,
        allow_inf_nan=False,
        description="fal fails a request no runner has started SECONDS after its submit (not"
        " billed); it is sent again, up to --max-attempts (default: none)",
    )
    media_expiry: Annotated[
        int | None, AfterValidator(check_media_expiry), Flag(_CONTROLS, "SECONDS", resume=True)
    ] = Field(
        None,
        description="fal's CDN deletes the generated images SECONDS after they are made, at"
        f" least {MIN_MEDIA_EXPIRY_S} (default: fal's retention, 7 days or more)",
    )
    allow_fallbacks: Annotated[bool, Flag(_CONTROLS, resume=True)] = Field(
        False,
        description="let fal answer from an 'equivalent' endpoint after repeated failures (by"
        " default each request says x-fal-disable-fallbacks; also the manifest key"
        " allow_fallbacks)",
    )
    no_store_io: Annotated[bool, Flag(_CONTROLS, resume=True)] = Field(
        False,
        description="ask fal not to keep the requests' input and output payloads"
        " (X-Fal-Store-IO: 0). Costs the safety net of fal's history: a submit whose answer"
        " is lost is sent again, counted as a possible duplicate charge, and a result that"
        " expired before it was fetched is paid for again",
    )
    stop_at: Annotated[str | None, BeforeValidator(as_stop_at), Flag(_END, "HH:MM")] = Field(
        None,
        description="stop submitting at this local time (the next one) and finish what is"
        " paid for; exit 4 when jobs are left",
    )
    notify: Annotated[
        NotifyURL | None, BeforeValidator(as_notify), Flag(_END, "URL", secret=True)
    ] = Field(
        None,
        description="POST a JSON summary when the run ends (its 'text' suits Slack-style"
        " incoming webhooks); kept secret, never logged (default: $BATCHGEN_NOTIFY_URL)",
    )
    on_exit: Annotated[
        tuple[str, ...] | None, BeforeValidator(as_on_exit), Flag(_END, "CMD", secret=True)
    ] = Field(
        None,
        description="run CMD when the run ends, the JSON summary on its stdin; split like a"
        " shell line but run without a shell (for pipes: sh -c '...')",
    )

    @model_validator(mode="after")
    def _together(self) -> RunOptions:
        """The rules between options; each problem is reported with the others."""
        wrong = []
        if self.emulate and self.endpoint is not None:
            wrong.append("--emulate and --endpoint name two servers: give one")
        if not self.emulate:  # a rehearsal's options are the emulator's
            given = [n for n, i, f in self.flags() if f.section == _REHEARSAL and self._set(n, i)]
            if given:
                names = " and ".join(flag_name(n) for n in given)
                wrong.append(f"{names} only appl{'ies' if len(given) == 1 else 'y'} with --emulate")
        if self.watch is not WatchMode.WEBHOOK and (self.webhook_listen or self.webhook_url):
            wrong.append("--webhook-listen and --webhook-url apply with --watch webhook")
        if self.start_timeout is not None and self.start_timeout >= self.deadline:
            # The deadline would cancel the request before fal's start timeout could answer.
            wrong.append(
                f"--start-timeout {self.start_timeout:g} s is not shorter than --deadline"
                f" {self.deadline:g} s, which would cancel the request first; lower it or"
                " raise --deadline"
            )
        if wrong:
            raise ValueError("; ".join(wrong))
        return self

    # -- building and reading -------------------------------------------------------------

    def _set(self, name: str, info: FieldInfo) -> bool:
        return bool(getattr(self, name) != info.default)

    @classmethod
    def parse(cls, values: Mapping[str, Any]) -> RunOptions:
        """Check ``values`` (flag texts or Python values, by field name): the options, or
        one ``UsageError`` listing every problem, each naming its flag."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as exc:
            said = problems(exc, {name: flag.secret for name, _, flag in cls.flags()})
            if len(said) == 1:
                raise UsageError(said[0]) from None
            listed = "".join(f"\n  {p}" for p in said)
            raise UsageError(f"{len(said)} problems with the options:{listed}") from None

    @classmethod
    def flags(cls) -> Iterator[tuple[str, FieldInfo, Flag]]:
        """(field name, pydantic field, its ``Flag``) for every option, in declared order."""
        for name, info in cls.model_fields.items():
            yield name, info, flag_of(info)

    def recorded(self) -> dict[str, Any]:
        """The options as the journal keeps them: a secret only as whether it was set."""
        secret = {name for name, _, flag in self.flags() if flag.secret}
        doc = self.model_dump(mode="json", exclude=secret)
        doc.update({name: getattr(self, name) is not None for name in secret})
        doc["concurrency"] = "auto" if self.concurrency is None else self.concurrency
        return doc

    def resume_flags(self) -> list[str]:
        """The flags that make the same command continue this run: those marked ``resume``
        that differ from their default (a rehearsal resumed without --emulate would run for
        real; without --max-cost, past its cap). A value given that is the default anyway
        (``--time-scale 0.02``, ``--seed 0``) is left out: the command shows only choices."""
        args: list[str] = []
        for name, info, flag in self.flags():
            value = getattr(self, name)
            if not flag.resume or value is None or value in (info.default, flag.implied):
                continue
            if value is True:
                args.append(flag_name(name))
            else:
                text = f"{value:g}" if isinstance(value, float) else str(value)
                args += [flag_name(name), text]
        return args


def flag_of(info: FieldInfo) -> Flag:
    for meta in info.metadata:
        if isinstance(meta, Flag):
            return meta
    raise TypeError("every RunOptions field carries a Flag")
