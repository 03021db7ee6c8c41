"""Shared builders for the journal and status tests (no tests here; named to match them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchgen.journal.writer import Journal
from batchgen.planning.jobs import JobSpec, job_id

ENDPOINT = "openai/gpt-image-2"


def spec(i: int, **extra: Any) -> JobSpec:
    inp: dict[str, Any] = {"prompt": f"a lighthouse, take {i}", "quality": "low", **extra}
    return JobSpec(
        job_id=job_id(ENDPOINT, inp, 0),
        endpoint=ENDPOINT,
        input=inp,
        prompt_id=f"p{i}",
        prompt=inp["prompt"],
    )


class FakeClock:
    """Wall-clock stand-in: advances only when told, so timestamps are exact in asserts."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def open_journal(path: Path, sha: str = "a" * 64, **kw: Any) -> Journal:
    kw.setdefault("version", "0.1.0")
    kw.setdefault("settings", {"concurrency": "auto"})
    return Journal.open(path, manifest_sha256=sha, **kw)


def handle(request_id: str) -> dict[str, str]:
    base = f"http://emulator/openai/gpt-image-2/requests/{request_id}"
    return {
        "request_id": request_id,
        "status_url": base + "/status",
        "response_url": base,
        "cancel_url": base + "/cancel",
    }
