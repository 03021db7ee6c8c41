"""Shared helpers for the `batchgen run` command tests: an emulator on a real loopback socket in
its own thread (it outlives the runs, as fal does), its stats, and a journal reader.

Not a test module (it holds no tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from batchgen.emulator import EmulatorConfig, serve
from batchgen.journal.writer import JOURNAL_NAME, Journal
from batchgen.planning.jobs import JobState


@contextlib.contextmanager
def emulator_thread(**config: Any) -> Iterator[str]:
    """Serve the emulator on 127.0.0.1 from a thread with its own event loop; yield its URL."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    def target() -> None:
        async def main() -> None:
            stop = asyncio.Event()
            box["loop"], box["stop"] = asyncio.get_running_loop(), stop
            async with serve(EmulatorConfig(**config), host="127.0.0.1", port=0) as url:
                box["url"] = url
                ready.set()
                await stop.wait()

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced by the waiting test
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=target, name="emulator", daemon=True)
    thread.start()
    assert ready.wait(15), "the emulator did not start"
    if "error" in box:
        raise box["error"]
    try:
        yield str(box["url"])
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(15)


def stats(url: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{url}/_emulator/stats", timeout=10).json()
    return body


def states(out: Path) -> Counter[JobState]:
    with Journal.open_readonly(out / JOURNAL_NAME) as j:
        return Counter({s: n for s, n in j.counts().items() if n})


def write_manifest(folder: Path, n: int, *, name: str = "t", quality: str = "low") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(
        f"name: {name}\n"
        "defaults:\n"
        f"  quality: {quality}\n"
        "  output_format: jpeg\n"
        "  image_size: landscape_4_3\n"
        "vars:\n"
        f"  i: [{', '.join(str(i) for i in range(n))}]\n"
        "prompts:\n"
        "  - id: p\n"
        '    prompt: "test picture number {i}"\n'
    )
    return path
