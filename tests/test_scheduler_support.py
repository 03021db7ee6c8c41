"""Shared rig for the scheduler tests: a manifest, the emulator in-process, one call per run.

Not a test module (it holds no tests); named so that it sits with the files it serves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from batchgen.config import Settings, build_settings
from batchgen.emulator import EmulatorConfig, create_app
from batchgen.emulator.model import canonical_input_key
from batchgen.fal import Endpoints, QueueClient
from batchgen.journal.writer import JOURNAL_NAME, Journal
from batchgen.manifest import Manifest, load_manifest, plan
from batchgen.outputs.index import read_failures, read_index
from batchgen.outputs.workers import CheckPool
from batchgen.planning.jobs import JobState
from batchgen.planning.pricing import estimate_cost
from batchgen.retry import RetryPolicy
from batchgen.running.events import Event, SubmitLost, Submitted
from batchgen.running.scheduler import Scheduler
from batchgen.running.setup import receiver
from batchgen.running.webhooks import Webhook
from batchgen.running.window import Window, make_window

BASE = "http://emulator"
S = JobState


def write_manifest(folder: Path, n: int, *, quality: str = "low", name: str = "t") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    items = ", ".join(str(i) for i in range(n))
    path.write_text(
        f"name: {name}\n"
        "defaults:\n"
        f"  quality: {quality}\n"
        "  output_format: jpeg\n"
        "  image_size: landscape_4_3\n"
        "vars:\n"
        f"  i: [{items}]\n"
        "prompts:\n"
        "  - id: p\n"
        '    prompt: "test picture number {i}"\n'
    )
    return path


async def short_sleep(seconds: float) -> None:
    """Backoff and polls still yield and still pace, but never for long: tests stay fast."""
    await asyncio.sleep(min(seconds, 0.02))


class ManualClock:
    """The emulator's clock, moved only by the test (it sets ``t``): nothing finishes on the
    server while the scheduler is busy, however slow the machine, so what the server sees at
    once is decided by the test, not by the CPU."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class FastClock:
    """Emulator time running ``factor`` times faster than the wall clock: a request takes fal's
    seconds (so the scheduler treats it as a long one) yet finishes in milliseconds."""

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self._zero = time.monotonic()

    def __call__(self) -> float:
        return (time.monotonic() - self._zero) * self.factor

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / self.factor)


@dataclass
class RunResult:
    sched: Scheduler
    events: list[Event]
    error: BaseException | None = None

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


@dataclass
class Rig:
    """One manifest, one output folder, one emulator that outlives the runs (as fal does)."""

    tmp: Path
    n: int
    emulator: dict[str, Any] = field(default_factory=dict)
    quality: str = "low"

    def __post_init__(self) -> None:
        self.manifest: Manifest = load_manifest(
            write_manifest(self.tmp, self.n, quality=self.quality)
        )
        self.out = self.tmp / "out"
        self.emulator.setdefault("time_scale", 0.005)
        self.emulator.setdefault("slow_media_s", 0.2)  # slow, not a 5 s wait per fault
        self.app = create_app(EmulatorConfig(**self.emulator))

    def new_emulator(self, **kw: Any) -> None:
        """A fal that has forgotten every request (as after their results expired)."""
        kw.setdefault("time_scale", 0.005)
        self.app = create_app(EmulatorConfig(**kw))

    def settings(self, **flags: Any) -> Settings:
        return build_settings({"out": self.out, "endpoint": BASE, **flags}, {}, self.manifest)

    async def run(
        self,
        *,
        window: Window | None = None,
        control: Callable[[Scheduler, Event], None] | None = None,
        sleep: Callable[[float], Any] = short_sleep,
        key: str | None = "test-key",
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] | None = None,
        wall: Callable[[], float] | None = None,
        stop_at: float | None = None,
        checks: CheckPool | None = None,
        webhook: Webhook | None = None,
        **flags: Any,
    ) -> RunResult:
        settings = self.settings(**flags)
        if stop_at is not None:  # an absolute time on ``wall`` (--stop-at resolves to one)
            settings = dataclasses.replace(settings, stop_at=stop_at)
        journal = Journal.open(
            self.out / JOURNAL_NAME,
            manifest_sha256=self.manifest.sha256,
            version="test",
            settings=settings.public(),
        )
        if journal.needs_plan:
            m = self.manifest
            journal.add_jobs(plan(m), cost_of=lambda s: estimate_cost(s, m.pricing))
        events: list[Event] = []
        transport = transport or httpx.ASGITransport(app=self.app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
                holder: list[Scheduler] = []

                def on_event(e: Event) -> None:
                    events.append(e)
                    if control is not None:
                        control(holder[0], e)

                client = QueueClient(
                    http,
                    endpoints=Endpoints.single(BASE),
                    key=key,
                    sleep=sleep,
                    retry=RetryPolicy(rng=lambda: 0.0),
                )
                # --watch webhook: the receiver on loopback, as the runner starts it
                # (or the one a test gives: a receiver nobody delivers to)
                async with receiver(settings, client, journal, on_event) as started:
                    sched = Scheduler(
                        journal,
                        client,
                        http,
                        settings=settings,
                        window=window or make_window(settings.options.concurrency),
                        manifest_sha256=self.manifest.sha256,
                        on_event=on_event,
                        sleep=sleep,
                        rng=lambda: 0.0,
                        checks=checks,
                        webhook=webhook or started,
                        **({"clock": clock} if clock is not None else {}),
                        **({"wall": wall} if wall is not None else {}),
                    )
                    holder.append(sched)
                    result = RunResult(sched, events)
                    try:
                        await sched.run()
                    except Exception as exc:
                        result.error = exc
                    else:
                        result.error = sched.fatal  # a stop at once for an answer, if any
                    return result
        finally:
            journal.close()

    # -- what the server saw, what the journal and the folder hold ---------------------------

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.app.state.emulator.stats()
        return stats

    def journal(self) -> Any:
        return Journal.open_readonly(self.out / JOURNAL_NAME)

    def states(self) -> Counter[JobState]:
        with self.journal() as j:
            return Counter({s: n for s, n in j.counts().items() if n})

    def input_key(self, job_id: str) -> str:
        with self.journal() as j:
            row = j.get(job_id)
            assert row is not None
            return canonical_input_key(row.spec.endpoint, dict(row.spec.input))

    def check_folder(self) -> None:
        """Every index row names a real, complete file; no partial file anywhere."""
        assert not list(self.out.rglob("*.part"))
        rows = read_index(self.out)
        for row in rows:
            data = (self.out / row["file_name"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == row["sha256"]
        with self.journal() as j:
            done = j.counts()[S.DOWNLOADED]
            failed = {r.job_id for r in j.iter_jobs(S.FAILED)}
        assert len(rows) == done  # one image per job in these manifests
        assert {r["job_id"] for r in read_failures(self.out)} == failed


def submits_explained(rig: Rig, runs: list[RunResult]) -> None:
    """No input reached the server more often than our own events explain: one accepted
    submit per ``Submitted``, plus one per submit whose answer was lost (``SubmitLost``)."""
    expected: Counter[str] = Counter()
    for r in runs:
        for e in r.events:
            if isinstance(e, Submitted | SubmitLost):
                expected[rig.input_key(e.job_id)] += 1
    seen = Counter(rig.stats()["submits_per_input"])
    assert seen == expected
