"""``batchgen emulator``: serve the fal-compatible emulator until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from batchgen.errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--concurrency-limit", type=int, default=40)
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument("--faults", default="none", help="fault spec or profile: none, flaky, hostile")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    # Imported here so `batchgen --help` does not pay for uvicorn and Pillow.
    from batchgen.emulator import EmulatorConfig, parse_faults

    if args.concurrency_limit < 1:
        raise UsageError("--concurrency-limit must be at least 1")
    if args.time_scale < 0:
        raise UsageError("--time-scale must not be negative")
    if not 0 <= args.port <= 65535:
        raise UsageError("--port must be between 0 and 65535")
    config = EmulatorConfig(
        concurrency_limit=args.concurrency_limit,
        time_scale=args.time_scale,
        faults=parse_faults(args.faults),
        seed=args.seed,
    )
    asyncio.run(_serve_forever(config, args.host, args.port))
    return 0


async def _serve_forever(config: object, host: str, port: int) -> None:
    from batchgen.emulator import EmulatorConfig, serve

    assert isinstance(config, EmulatorConfig)
    async with serve(config, host, port, log_level="warning") as url:
        faults = config.fault_spec.describe()
        print(
            f"fal emulator listening on {url} (concurrency limit {config.concurrency_limit}, "
            f"time scale {config.time_scale:g}, faults {faults})",
            flush=True,
        )
        print(f"  batchgen run MANIFEST --endpoint {url}", flush=True)
        print(f"  stats: {url}/_emulator/stats   (Ctrl-C to stop)", flush=True)
        # Ctrl-C and SIGTERM end the wait instead of cancelling every task, so uvicorn shuts
        # down in order (no lifespan traceback) and the command exits 0.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    print("fal emulator stopped", file=sys.stderr)
