"""The client side of ``bench/run.py``: each client runs in its own process, started as
``python bench/clients.py CONFIG`` and printing one line of JSON.

Kept apart from run.py so that a client process imports only what its client needs, as it
would outside a benchmark: batchgen what ``batchgen run --endpoint`` imports, fal-client
httpx and ``fal_client`` with the job list as JSON (planned by run.py). Started as run.py,
both also paid for the harness's own imports, the emulator (Starlette, uvicorn, Pillow) among
them, and fal-client for batchgen's manifest parser (pydantic, PyYAML): about 0.35 s of CPU in
batchgen's process and 0.7 s in fal-client's that neither needs.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BENCH_KEY = "bench-key"  # not a secret: the emulator accepts any key


def batchgen_main(cfg: dict[str, Any]) -> dict[str, Any]:
    """``run_manifest`` exactly as ``batchgen run --endpoint`` calls it, timed in-process."""
    from batchgen.commands.run import run_manifest
    from batchgen.config import build_settings
    from batchgen.journal.writer import JOURNAL_NAME, Journal
    from batchgen.manifest import load_manifest
    from batchgen.options import DOWNLOAD_CONCURRENCY
    from batchgen.outputs import gallery
    from batchgen.planning.jobs import JobState

    manifest = load_manifest(Path(cfg["manifest"]))
    flags = {
        "endpoint": cfg["url"],
        "out": cfg["out"],
        "concurrency": cfg["concurrency"],
        "watch": cfg["watch"],
        "download_concurrency": cfg.get("download_concurrency", DOWNLOAD_CONCURRENCY),
    }
    settings = build_settings(flags, {}, manifest)
    err = io.StringIO()
    timers = instrument(gallery, Journal)
    start = time.monotonic()
    cpu0, t0 = time.process_time(), time.perf_counter()
    code = asyncio.run(run_manifest(manifest, settings, stderr=err, signals=False, quiet=True))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    with Journal.open_readonly(Path(cfg["out"]) / JOURNAL_NAME) as j:
        counts = j.counts()
    return {
        "exit": code,
        "wall": wall,
        "cpu": cpu,
        "done": counts[JobState.DOWNLOADED],
        "failed": counts[JobState.FAILED],
        "log": err.getvalue().splitlines()[-3:],
        "start": start,
        "timers": timers,
    }


# The journal's writes: synchronous calls on the event loop's thread (see journal/writer.py).
JOURNAL_WRITES = (
    "add_jobs",
    "claim",
    "set_submitted",
    "transition",
    "set_result",
    "mark_downloaded",
    "requeue",
    "fail",
    "event",
)


def instrument(gallery: Any, journal_cls: Any) -> dict[str, list[float]]:
    """Time, without changing them, the journal's writes and the gallery build: [wall s,
    CPU s]. The writes are synchronous on the loop's thread, so their thread CPU time is
    exactly theirs; the gallery's thumbnails run in a pool, so it gets the process's."""
    timers: dict[str, list[float]] = {"journal": [0.0, 0.0], "gallery": [0.0, 0.0]}
    # "journal_last": when the last write ended (mark_downloaded of the last image)

    def timed(fn: Any, key: str, cpu_clock: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            w, c = time.perf_counter(), cpu_clock()
            try:
                return fn(*args, **kwargs)
            finally:
                timers[key][0] += time.perf_counter() - w
                timers[key][1] += cpu_clock() - c
                timers[key + "_last"] = [time.monotonic(), 0.0]

        return wrapper

    for name in JOURNAL_WRITES:
        setattr(journal_cls, name, timed(getattr(journal_cls, name), "journal", time.thread_time))
    # run_manifest looks build_gallery up when it gets there, so the wrapper is what it calls;
    # the end of a run refreshes it through running.setup, which imported refresh_gallery.
    from batchgen.running import setup

    gallery.build_gallery = timed(gallery.build_gallery, "gallery", time.process_time)
    setup.refresh_gallery = timed(setup.refresh_gallery, "gallery", time.process_time)
    return timers


async def falclient_run(cfg: dict[str, Any], jobs: list[tuple[str, Any]]) -> dict[str, Any]:
    """The official client used the obvious way: semaphore, submit, handle.get(), download."""
    import fal_client
    import fal_client.client as fc
    import httpx

    # The hosts are module globals read at call time (docs/fal.md, Hosts and request handles).
    fc.QUEUE_URL_FORMAT = f"{cfg['url']}/"
    fc.REST_URL = fc.CDN_URL = cfg["url"]
    out = Path(cfg["out"])  # made by client_main
    client = fal_client.AsyncClient(key=BENCH_KEY)
    sem = asyncio.Semaphore(cfg["concurrency"])

    async def one(i: int, endpoint: str, arguments: Any) -> None:
        async with sem:
            handle = await client.submit(endpoint, arguments=arguments)
            result = await handle.get()
            for n, image in enumerate(result["images"]):
                r = await http.get(image["url"])
                r.raise_for_status()
                (out / f"{i}_{n}.jpg").write_bytes(r.content)

    async with httpx.AsyncClient(timeout=120) as http:
        start = time.monotonic()
        cpu0, t0 = time.process_time(), time.perf_counter()
        results = await asyncio.gather(
            *(one(i, e, a) for i, (e, a) in enumerate(jobs)), return_exceptions=True
        )
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await (await client._client).aclose()  # an async cached property in fal-client
    failed = [r for r in results if isinstance(r, BaseException)]
    return {
        "exit": 0 if not failed else 1,
        "wall": wall,
        "cpu": cpu,
        "done": len(jobs) - len(failed),
        "failed": len(failed),
        "start": start,
        "log": sorted({f"{type(e).__name__}: {e}"[:120] for e in failed})[:3],
    }


def falclient_main(cfg: dict[str, Any]) -> dict[str, Any]:
    jobs = [(e, a) for e, a in json.loads(Path(cfg["jobs"]).read_text())]  # from run.py
    return asyncio.run(falclient_run(cfg, jobs))


def client_main(cfg: dict[str, Any]) -> None:
    Path(cfg["out"]).mkdir(parents=True, exist_ok=True)
    run = batchgen_main if cfg["client"] == "batchgen" else falclient_main
    res = run(cfg)
    res["peak_rss_mb"] = peak_rss_mb()
    # The whole process: from just before it was started (the parent's CLOCK_MONOTONIC,
    # which is system-wide) to now, and its CPU since it started, imports included, plus the
    # CPU of every child it has reaped (worker processes), so work moved out is still counted.
    import resource

    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    res["proc_cpu"] = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    res["proc_child_cpu"] = kids.ru_utime + kids.ru_stime
    res["proc_end"] = time.monotonic()
    print(json.dumps(res))


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    client_main(json.loads(sys.argv[1]))
