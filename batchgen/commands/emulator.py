"""``batchgen emulator``: serve the fal-compatible emulator until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import sys

from batchgen.commands.serving import until_stopped
from batchgen.errors import UsageError
from batchgen.option_rules import FAULTS_HELP

EXAMPLES = """\
examples:
  batchgen emulator                              fal's pace, no faults, on 127.0.0.1:8765
  batchgen emulator --port 0 --time-scale 0.05 --faults flaky
                                                 any free port, 20x faster, a bad night
  batchgen run manifests/demo.yaml --endpoint http://127.0.0.1:8765
                                                 (in another shell) a run against it
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; the emulator takes any key, so keep it on loopback",
    )
    p.add_argument(
        "--port", type=int, default=8765, metavar="N", help="port to listen on; 0 picks a free one"
    )
    p.add_argument(
        "--concurrency-limit",
        type=int,
        default=40,
        metavar="N",
        help="the account's limit: at most N requests IN_PROGRESS, the rest IN_QUEUE",
    )
    p.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        metavar="X",
        help="the latency model's pace: 1 as fal's (tens of seconds for a high-quality image),"
        " 0.1 ten times faster, 0 no model time",
    )
    p.add_argument("--faults", default="none", metavar="SPEC", help=FAULTS_HELP)
    p.add_argument(
        "--result-ttl",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long the queue keeps each result after it completes, then answers 404"
        " (default: fal's, 1 hour, or 6 minutes for a result of 10 KB or more, times the time"
        " scale); the request history (/v1/models/requests/by-endpoint) keeps it regardless",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="seed of the fault dice and the latency jitter: the same seed and order of"
        " requests fail the same way",
    )
    p.add_argument(
        "--credit",
        type=int,
        default=None,
        metavar="N",
        help="the account pays for N requests, then is locked as fal locks one whose balance"
        " ran out (new submits refused, accepted ones still run); top up with"
        " POST /_emulator/credit?requests=N",
    )


def run(args: argparse.Namespace) -> int:
    # Imported here so `batchgen --help` does not pay for uvicorn and Pillow.
    from batchgen.emulator import EmulatorConfig, parse_faults

    if args.concurrency_limit < 1:
        raise UsageError("--concurrency-limit must be at least 1")
    if args.time_scale < 0:
        raise UsageError("--time-scale must not be negative")
    if args.result_ttl is not None and not args.result_ttl > 0:
        raise UsageError("--result-ttl must be a positive number of seconds")
    if not 0 <= args.port <= 65535:
        raise UsageError("--port must be between 0 and 65535")
    if args.credit is not None and args.credit < 0:
        raise UsageError("--credit must not be negative")
    config = EmulatorConfig(
        concurrency_limit=args.concurrency_limit,
        time_scale=args.time_scale,
        faults=parse_faults(args.faults),
        seed=args.seed,
        credit=args.credit,
        result_ttl_s=args.result_ttl,
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
        await until_stopped()
    print("fal emulator stopped", file=sys.stderr)
