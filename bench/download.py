"""Benchmark downloads: batchgen's verified download against plain httpx streaming to disk.

Measures, never asserts. A server process serves PNGs of 1–4 MB over loopback (the emulator's
own images are flat colours that compress to a few KB, far from real model output, so this
script serves noise images of realistic size instead). Both clients fetch the same URLs with
the same concurrency, in alternating passes, in the same run:

- ``plain``: ``client.stream("GET")`` and ``open(path, "wb").write(chunk)`` — no checks at all;
- ``batchgen``: ``download_image`` as a run calls it, over the run's own media client
  (``running/setup.py``: ``clients``, stock httpx sized to the download workers) — scheme and
  redirect checks, status, type, length and cap checks while streaming, then the sha256 of
  the file, Pillow verification and fsync in the run's worker processes (``CheckPool``),
  atomic rename;
- ``thread``: the same checks in a worker thread of this process, over a plain httpx client
  sized to the concurrency (a library caller);
- ``no-fsync``: ``batchgen`` with ``durable=False``. Plain writes only reach the page cache,
  while an fsync waits for the disk: this line shows how much of the gap is the disk.

The pool is started once for the whole benchmark, as a run starts it once (its workers start
on demand in the first pass that needs them). CPU is this process's plus that of the pool's
worker processes (from /proc: Linux), so work moved to other cores is still counted.

    .venv/bin/python bench/download.py                       # 2,000 images, 8 at a time
    .venv/bin/python bench/download.py --count 500 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import multiprocessing
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batchgen.config import build_settings
from batchgen.manifest import load_manifest
from batchgen.outputs.download import download_image
from batchgen.outputs.workers import CheckPool, machine_cores
from batchgen.running.setup import clients

DEMO = Path(__file__).resolve().parents[1] / "manifests" / "demo.yaml"  # any manifest will do


def make_images(folder: Path, distinct: int) -> list[int]:
    """``distinct`` noise PNGs from 1 to 4 MB (noise does not compress: size ≈ pixels × 3)."""
    from PIL import Image

    sizes = []
    for i in range(distinct):
        target = 1_000_000 + 3_000_000 * i // max(1, distinct - 1)
        side = int((target / 3) ** 0.5)
        im = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
        buf = io.BytesIO()
        im.save(buf, "PNG", compress_level=1)
        (folder / f"{i}.png").write_bytes(buf.getvalue())
        sizes.append(len(buf.getvalue()))
    return sizes


def serve(folder: str, sock_fd: int) -> None:
    """The media server (its own process, so it does not share the client's CPU)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    files = sorted(Path(folder).glob("*.png"), key=lambda p: int(p.stem))
    blobs = [p.read_bytes() for p in files]

    async def image(request: Request) -> Response:
        i = int(request.path_params["i"])
        return Response(blobs[i % len(blobs)], media_type="image/png")

    app = Starlette(routes=[Route("/img/{i:int}.png", image)])
    sock = socket.socket(fileno=sock_fd)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])


Fetch = Callable[[httpx.AsyncClient, str, Path], Awaitable[int]]


async def plain(http: httpx.AsyncClient, url: str, dest: Path) -> int:
    n = 0
    async with http.stream("GET", url) as r:
        r.raise_for_status()
        with dest.open("wb") as f:
            async for chunk in r.aiter_bytes():
                f.write(chunk)
                n += len(chunk)
    return n


POOL: list[CheckPool] = []  # the worker processes (one pool for the whole benchmark)
LOOP = asyncio.new_event_loop()


async def verified(http: httpx.AsyncClient, url: str, dest: Path) -> int:
    d = await download_image(
        http, url, dest, max_bytes=50 << 20, expected_format="png", checks=POOL[0]
    )
    return d.bytes


async def verified_thread(http: httpx.AsyncClient, url: str, dest: Path) -> int:
    d = await download_image(http, url, dest, max_bytes=50 << 20, expected_format="png")
    return d.bytes


async def verified_no_fsync(http: httpx.AsyncClient, url: str, dest: Path) -> int:
    d = await download_image(
        http,
        url,
        dest,
        max_bytes=50 << 20,
        expected_format="png",
        durable=False,
        checks=POOL[0],
    )
    return d.bytes


RUN_CLIENT = {"batchgen", "no-fsync"}  # the methods that fetch as a run does


async def one_pass(
    fetch: Fetch, base: str, out: Path, count: int, concurrency: int, *, run_client: bool
) -> tuple[int, float, float]:
    """(bytes, wall seconds, client CPU seconds) for ``count`` downloads into ``out``."""
    todo: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        todo.put_nowait(i)
    total = 0

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal total
        while not todo.empty():
            i = todo.get_nowait()
            n = await fetch(http, f"{base}/img/{i}.png", out / f"{i:05d}.png")
            total += n  # not `total += await ...`: that reads total before the await

    async with media_client(base, concurrency, run_client=run_client) as http:
        cpu0, t0 = cpu_with_workers(), time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - t0, cpu_with_workers() - cpu0
    return total, wall, cpu


@contextlib.asynccontextmanager
async def media_client(
    base: str, concurrency: int, *, run_client: bool
) -> AsyncIterator[httpx.AsyncClient]:
    """The run's media client (as ``batchgen run --endpoint BASE`` builds it), or a plain one."""
    if not run_client:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=60) as http:
            yield http
        return
    flags = {"endpoint": base, "download_concurrency": concurrency}
    async with clients(build_settings(flags, {}, load_manifest(DEMO))) as (_, media):
        yield media


def cpu_with_workers() -> float:
    """CPU seconds of this process and of the pool's live workers (threads included)."""
    own = time.process_time()
    if not POOL:
        return own
    tick = os.sysconf("SC_CLK_TCK")
    for pid in POOL[0].pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        own += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return own


def run_pass(
    fetch: Fetch, base: str, out: Path, count: int, concurrency: int, *, run_client: bool
) -> tuple[int, float, float]:
    out.mkdir(parents=True)
    result = LOOP.run_until_complete(
        one_pass(fetch, base, out, count, concurrency, run_client=run_client)
    )
    assert len(list(out.iterdir())) == count  # every file landed (and no .part left)
    shutil.rmtree(out)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--distinct", type=int, default=16, help="distinct image files served")
    ap.add_argument(
        "--rounds",
        type=int,
        default=8,
        help="the count is split into this many alternating "
        "passes per method, so load from other processes hits both methods alike",
    )
    ap.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a tmp dir)")
    ap.add_argument("--methods", default="plain,batchgen,thread,no-fsync", help="which to run")
    args = ap.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench-download-", dir=args.dir))
    try:
        sizes = make_images(scratch, args.distinct)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        ctx = multiprocessing.get_context("fork")
        server = ctx.Process(target=serve, args=(str(scratch), sock.fileno()), daemon=True)
        server.start()
        httpx.get(f"{base}/img/0.png", timeout=30).raise_for_status()
        print(
            f"{args.count} images, {min(sizes) / 1e6:.1f}–{max(sizes) / 1e6:.1f} MB "
            f"({args.distinct} distinct files), {args.concurrency} at a time, loopback, "
            f"{os.cpu_count()} cores"
        )
        methods: list[tuple[str, Fetch]] = [
            ("plain", plain),
            ("batchgen", verified),
            ("thread", verified_thread),
            ("no-fsync", verified_no_fsync),
        ]
        methods = [m for m in methods if m[0] in args.methods.split(",")]
        results: dict[str, list[tuple[int, float, float]]] = {name: [] for name, _ in methods}
        per_pass = max(1, args.count // args.rounds)
        # One event loop and one pool for the whole benchmark, as a run has (sized as a run
        # sizes it); its workers start in the first pass that needs them.
        POOL.append(CheckPool(min(machine_cores(), args.concurrency)))
        try:
            for r in range(args.rounds):
                for name, fetch in methods if r % 2 == 0 else methods[::-1]:
                    out = scratch / f"out-{name}-{r}"
                    results[name].append(
                        run_pass(
                            fetch,
                            base,
                            out,
                            per_pass,
                            args.concurrency,
                            run_client=name in RUN_CLIENT,
                        )
                    )
        finally:
            LOOP.run_until_complete(POOL[0].close())
            LOOP.close()
        server.terminate()
        server.join(5)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"{'method':<10} {'images':>7} {'MB':>7} {'seconds':>8} {'MB/s':>6} {'CPU ms/img':>11}")
    rate = {}
    for name, runs in results.items():
        b, wall, cpu = (sum(x[i] for x in runs) for i in range(3))
        rate[name] = b / 1e6 / wall
        n = per_pass * len(runs)
        print(
            f"{name:<10} {n:>7} {b / 1e6:>7.0f} {wall:>8.1f} {rate[name]:>6.0f} "
            f"{cpu / n * 1e3:>11.2f}"
        )
    for name in ("batchgen", "thread", "no-fsync"):
        if name in rate and "plain" in rate:
            print(f"{name} / plain = {rate[name] / rate['plain']:.0%}  (target ≥ 80%)")


if __name__ == "__main__":
    main()
