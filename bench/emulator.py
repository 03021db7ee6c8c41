"""How many requests per second the emulator serves on loopback.

    .venv/bin/python bench/emulator.py [--seconds 5] [--clients 1,8,32] [--same-prompt]

The emulator runs in its own process (``batchgen emulator --port 0``), as it does for a real
``batchgen run --endpoint``, so client and server do not share an event loop. Each client loops
submit → status → result at time scale 0 (every request is done at once). Besides wall-clock
requests/s, which on a 2-core machine also pays for the load generator, it reports the
emulator process's own CPU time per request: 1 / that is what the emulator could serve with a
core to itself. Prints a table; asserts nothing. Run it by hand, never from CI.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import httpx

AUTH = {"Authorization": "Key bench"}
BODY = {"prompt": "bench", "quality": "low", "image_size": "square_hd"}


def start_emulator(*flags: str, stderr: int | None = None) -> tuple[subprocess.Popen[str], str]:
    """``batchgen emulator`` in its own process on a free port, with an account limit far
    above any window and ``flags``; the process and its URL (bench/soak.py uses it too)."""
    cmd = [sys.executable, "-m", "batchgen", "emulator", "--port", "0"]
    cmd += ["--concurrency-limit", "100000", *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on " not in line:
        proc.kill()
        raise SystemExit(f"emulator did not start: {line!r}")
    return proc, line.split("listening on ")[1].split()[0]


def server_cpu(pid: int) -> float:
    """User + system CPU seconds the process has used (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


async def one_level(
    url: str, pid: int, clients: int, seconds: float, unique: bool
) -> dict[str, Any]:
    latencies: list[float] = []
    # One client (one connection) per worker: one httpx pool shared by dozens of concurrent
    # requests costs the *load generator* more CPU than the emulator spends serving them.
    https = [httpx.AsyncClient(base_url=url, headers=AUTH) for _ in range(clients)]

    async def timed(http: httpx.AsyncClient, method: str, path: str, **kw: Any) -> httpx.Response:
        t = time.perf_counter()
        r = await http.request(method, path, **kw)
        latencies.append(time.perf_counter() - t)
        return r

    async def worker(n: int) -> None:
        http, i = https[n], 0
        while time.perf_counter() < stop_at:
            i += 1
            body = {**BODY, "prompt": f"{n}-{i}" if unique else "bench"}
            h = (await timed(http, "POST", "/openai/gpt-image-2", json=body)).json()
            await timed(http, "GET", h["status_url"])
            await timed(http, "GET", h["response_url"])

    cpu0, t0 = server_cpu(pid), time.perf_counter()
    stop_at = t0 + seconds  # after the clients exist: making 32 of them takes a while
    await asyncio.gather(*(worker(n) for n in range(clients)))
    elapsed, cpu = time.perf_counter() - t0, server_cpu(pid) - cpu0
    for http in https:
        await http.aclose()
    latencies.sort()
    n = len(latencies)
    return {
        "clients": clients,
        "requests": n,
        "rps": n / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[max(0, int(n * 0.99) - 1)] * 1000,
        "cpu_ms": cpu / n * 1000,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description="requests/s the emulator serves on loopback")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--time-scale", type=float, default=0.0)
    ap.add_argument(
        "--same-prompt",
        action="store_true",
        help="one prompt for every job, so results hit the image cache (queue cost only)",
    )
    args = ap.parse_args()
    proc, url = start_emulator("--time-scale", str(args.time_scale))
    try:
        rows = [
            asyncio.run(one_level(url, proc.pid, int(c), args.seconds, not args.same_prompt))
            for c in args.clients.split(",")
        ]
        stats = httpx.get(f"{url}/_emulator/stats").json()
    finally:
        proc.terminate()
        proc.wait(10)
    prompts = "one prompt (cached image)" if args.same_prompt else "a new prompt per job"
    print(f"emulator: submit+status+result, {prompts}, time scale {args.time_scale:g}")
    print(f"{'clients':>8} {'requests':>9} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7}", end="")
    print(f" {'srv cpu ms/req':>15} {'req/s per srv core':>19}")
    for r in rows:
        print(
            f"{r['clients']:>8} {r['requests']:>9} {r['rps']:>8.0f} {r['p50_ms']:>7.2f} "
            f"{r['p99_ms']:>7.2f} {r['cpu_ms']:>15.3f} {1000 / r['cpu_ms']:>19.0f}"
        )
    print(
        f"server saw {stats['submits_accepted']} submits, {stats['status_polls']} status polls, "
        f"{stats['result_requests']} result requests"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
