"""Fault injection for the emulator: what can go wrong on the way to fal and back.

A ``FaultSpec`` is a set of probabilities, one per kind of failure, parsed from a string such as
``submit429=0.05,submitdrop=0.02`` or named by a profile (``none``, ``flaky``, ``hostile``).
Decisions come from one seeded RNG per kind, so a run with the same seed and the same order of
requests fails the same way, and turning one fault on does not reshuffle the others.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields, replace

from batchgen.errors import UsageError


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """Probability of each fault, each in [0, 1]."""

    submit429: float = 0.0  # submit refused with 429 (no job created; the real client retries)
    submit503: float = 0.0  # submit refused by ingress: nginx HTML 503, no x-fal-request-id
    submitdrop: float = 0.0  # the job IS created, then the connection closes with no answer
    status500: float = 0.0  # a status poll answers 500 JSON (not retried by fal-client)
    status503: float = 0.0  # a status poll hits an ingress 503 (nginx HTML)
    runner_error: float = 0.0  # the request completes with a runner error; result is 5xx
    content_policy: float = 0.0  # the request completes; result is 422 content_policy_violation
    policy_retryable: float = 0.0  # ...and that refusal says X-Fal-Retryable: true (a lie)
    truncate: float = 0.0  # a media GET sends fewer bytes than its Content-Length
    slow_media: float = 0.0  # a media GET trickles its bytes slowly
    upload500: float = 0.0  # a storage upload (CDN POST or signed PUT) answers 500, stores nothing
    # A result that names its files in a way a client must never obey: a climbing or absolute
    # file_name (a client that writes where the server says writes outside its folder)...
    evil_name: float = 0.0
    # ...or an image URL that points at the client's own disk (file:///etc/passwd).
    file_url: float = 0.0
    # Webhook deliveries as they go wrong on the way: never sent, sent twice, sent late (after
    # webhook_delay_s), or preceded by a forged copy (a stranger's POST, badly signed).
    webhook_lost: float = 0.0
    webhook_dup: float = 0.0
    webhook_delay: float = 0.0
    webhook_forged: float = 0.0
    # fal reroutes the request to an "equivalent" endpoint (model fallback), which says so in
    # its result answer; a request sending x-fal-disable-fallbacks is never rerouted.
    fallback: float = 0.0
    # A successful result whose images are one flat colour: valid files of the size and format
    # asked for, as a refused or failed generation often returns (outputs/quality.py: blank).
    blank: float = 0.0

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) > 0 for f in fields(self))

    def describe(self) -> str:
        parts = [f"{f.name}={getattr(self, f.name):g}" for f in fields(self)]
        return ",".join(p for p in parts if not p.endswith("=0")) or "none"


# What the evil_name fault puts in a result's file_name, in turn: one climbs out of any folder
# a client might join it to, one is absolute (pathlib's `folder / "/etc/x"` is "/etc/x").
EVIL_NAMES: tuple[str, ...] = ("../../../evil.png", "/etc/x")
# What the file_url fault puts in a result's image url.
FILE_URL = "file:///etc/passwd"

FAULT_NAMES: tuple[str, ...] = tuple(f.name for f in fields(FaultSpec))

PROFILES: dict[str, FaultSpec] = {
    "none": FaultSpec(),
    # A bad night on a healthy service: a few of each transient fault, rare final ones.
    "flaky": FaultSpec(
        submit429=0.05,
        submitdrop=0.02,
        status500=0.02,
        runner_error=0.02,
        content_policy=0.01,
        truncate=0.02,
        slow_media=0.01,
    ),
    # Everything at once, often: for proving that nothing is lost or paid for twice.
    "hostile": FaultSpec(
        submit429=0.15,
        submit503=0.05,
        submitdrop=0.08,
        status500=0.05,
        status503=0.05,
        runner_error=0.08,
        content_policy=0.03,
        truncate=0.08,
        slow_media=0.03,
        policy_retryable=0.5,
        evil_name=0.1,
        file_url=0.03,
    ),
}


def parse_faults(text: str) -> FaultSpec:
    """A profile name, or ``name=prob`` pairs separated by commas; a profile may lead the list
    (``flaky,truncate=0.5``). Raises UsageError naming the bad part."""
    spec = FaultSpec()
    text = text.strip()
    if not text:
        return spec
    for i, raw in enumerate(text.split(",")):
        part = raw.strip()
        if not part:
            continue
        if "=" not in part:
            if i == 0 and part in PROFILES:
                spec = PROFILES[part]
                continue
            raise UsageError(
                f"--faults: {part!r} is neither a profile ({', '.join(PROFILES)}) "
                "nor name=probability"
            )
        name, _, value = (s.strip() for s in part.partition("="))
        if name not in FAULT_NAMES:
            raise UsageError(f"--faults: unknown fault {name!r}; known: {', '.join(FAULT_NAMES)}")
        try:
            p = float(value)
        except ValueError:
            raise UsageError(f"--faults: {name}={value!r} is not a number") from None
        if not 0.0 <= p <= 1.0:
            raise UsageError(f"--faults: {name}={value} must be between 0 and 1")
        spec = replace(spec, **{name: p})
    return spec


class FaultDice:
    """Seeded yes/no decisions, one independent stream per fault kind."""

    def __init__(self, spec: FaultSpec, seed: int) -> None:
        self.spec = spec
        self._rngs = {name: random.Random(f"{seed}:{name}") for name in FAULT_NAMES}

    def roll(self, name: str) -> bool:
        p: float = getattr(self.spec, name)
        if p <= 0.0:
            return False  # no draw: a fault that is off never shifts its stream
        return self._rngs[name].random() < p
