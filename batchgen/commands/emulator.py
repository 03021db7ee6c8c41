from __future__ import annotations

import argparse

from batchgen.errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--concurrency-limit", type=int, default=40)
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument("--faults", default="none", help="fault spec or profile: none, flaky, hostile")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    raise UsageError("emulator is not built yet")
