"""The emulator's settings, one frozen-ish value object shared by the app, model and server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from batchgen.emulator.faults import FaultSpec, parse_faults

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass
class EmulatorConfig:
    concurrency_limit: int = 40  # at most this many IN_PROGRESS (fal's account limit)
    time_scale: float = 1.0  # multiplies every run time; 0 completes requests instantly
    faults: FaultSpec | str = field(default_factory=FaultSpec)  # a spec, or "flaky,..." text
    seed: int = 0
    clock: Clock = time.monotonic
    sleep: Sleep = asyncio.sleep
    public_url: str | None = None  # base of the URLs handed out; default: the request's own
    retention_scale: float | None = None  # result retention multiplier; None: follow time_scale
    # The queue's result lifetime in clock seconds, for every result (None: fal's 1 h, or 6 min
    # for a large one, × the retention scale). fal's request history outlives it.
    result_ttl_s: float | None = None
    keepalive_s: float = 15.0  # SSE comment interval, as fal sends
    slow_media_s: float = 5.0  # how long a slow_media download trickles for
    webhook_client: httpx.AsyncClient | None = None  # None: one client of its own, pooled
    webhook_attempts: int = 3
    webhook_retry_s: float = 1.0
    webhook_delay_s: float = 2.0  # how late a webhook_delay delivery comes
    credit: int | None = None  # submits the account pays for, then it is locked (credit.py)
    # Say "X-Batchgen-Emulator" on each submit answer, so a client never counts its placeholder
    # images as real work. Off only in tests where it stands in for fal itself.
    announce: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.faults, str):
            self.faults = parse_faults(self.faults)
        if self.public_url is not None:
            self.public_url = self.public_url.rstrip("/")

    @property
    def fault_spec(self) -> FaultSpec:
        return self.faults if isinstance(self.faults, FaultSpec) else parse_faults(self.faults)
