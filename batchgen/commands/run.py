from __future__ import annotations

import argparse

from batchgen.errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", help="a YAML, CSV or JSONL manifest")
    p.add_argument("--out", help="output folder (default: outputs/<manifest name>)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--emulate", action="store_true", help="run against the built-in emulator")
    where.add_argument("--endpoint", help="base URL of a fal-compatible server (BATCHGEN_ENDPOINT)")
    p.add_argument("--concurrency", default="auto", help="N, or auto (default) to find the limit")
    p.add_argument("--max-cost", type=float, help="stop submitting before this estimate in USD")
    p.add_argument("--max-attempts", type=int, default=3, help="attempts per job (default 3)")
    p.add_argument(
        "--deadline", type=float, default=1200.0, help="seconds per request (default 1200)"
    )
    p.add_argument("--watch", choices=["stream", "poll"], default="stream")
    p.add_argument("--download-concurrency", type=int, default=8)
    p.add_argument("--max-image-bytes", type=int, default=50_000_000)
    p.add_argument("--retry-failed", action="store_true", help="put failed jobs back in the queue")
    p.add_argument("--inline-uploads", action="store_true", help="send local files as data URIs")
    p.add_argument("--faults", help="emulator fault spec or profile (with --emulate)")
    p.add_argument("--time-scale", type=float, help="emulator time scale (with --emulate)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    raise UsageError("run is not built yet")
