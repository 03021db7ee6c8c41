"""Asking before spending: `batchgen run` shows what it will submit and, above
``--confirm-over`` (estimated USD), asks on the terminal before the first submit.

It never asks for a rehearsal (nothing is billed), with ``--yes``, or without a terminal: a
script, cron or CI job must not hang on a question nobody sees, so there it says that it did
not ask and goes on (``--max-cost`` is how a script caps its spend).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import IO

from batchgen.running.events import Ready

DEFAULT_CONFIRM_OVER = 20.0  # USD: a few thousand low-quality images, or ~130 at high


def approval(
    *, over: float, yes: bool, stdin: IO[str], stderr: IO[str]
) -> Callable[[Ready], Awaitable[bool]]:
    async def approve(ready: Ready) -> bool:
        if yes or ready.rehearsal or ready.cost <= over:
            return True
        if not stdin.isatty():
            print(
                f"batchgen: not asking (no terminal): ~${ready.cost:.2f} is over --confirm-over"
                f" ${over:g}; going on (--max-cost caps a script's spend, --yes skips this)",
                file=stderr,
            )
            return True
        question = (
            f"batchgen: submit {ready.to_submit:,} jobs ({ready.images:,} images) for about "
            f"${ready.cost:.2f}? [y/N] "
        )
        return (await ask(question, stdin, stderr)).strip().lower() in ("y", "yes")

    return approve


async def ask(question: str, stdin: IO[str], stderr: IO[str]) -> str:
    """One line from the terminal, read on the event loop: unlike input() in a thread, a
    Ctrl-C while waiting cancels it cleanly (a blocked thread would hold the process)."""
    loop = asyncio.get_running_loop()
    line: asyncio.Future[str] = loop.create_future()
    fd = stdin.fileno()

    def readable() -> None:
        if not line.done():
            line.set_result(stdin.readline())

    print(question, end="", file=stderr, flush=True)
    loop.add_reader(fd, readable)
    try:
        return await line
    finally:
        loop.remove_reader(fd)
