"""Asking before spending: `batchgen run` shows what it will submit and, above
``--confirm-over`` (estimated USD), asks on the terminal before the first submit.

It never asks for a rehearsal (nothing is billed) or with ``--yes``. Without a terminal (a
script, cron, CI) nobody could answer, and going on would spend unattended what a person at
a terminal would have been asked about: so there the run is refused (a ``UsageError``, exit
2, nothing submitted), naming the flag that says the spend is meant, ``--yes``, or the one
that caps it, ``--max-cost``. With ``--max-cost`` it goes on, capped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import IO

from batchgen.errors import UsageError
from batchgen.running.events import Ready

DEFAULT_CONFIRM_OVER = 20.0  # USD: a few thousand low-quality images, or ~130 at high


def unattended(cost: float, over: float) -> str:
    """The refusal of a run over ``--confirm-over`` that nobody can be asked about."""
    return (
        f"~${cost:.2f} is over --confirm-over ${over:g} and there is no terminal to ask on:"
        " add --yes to spend it, or --max-cost USD to cap it"
    )


def approval(
    *, over: float, yes: bool, stdin: IO[str], stderr: IO[str], max_cost: float | None = None
) -> Callable[[Ready], Awaitable[bool]]:
    async def approve(ready: Ready) -> bool:
        if yes or ready.rehearsal or ready.cost <= over:
            return True
        if not stdin.isatty():
            if max_cost is None:
                raise UsageError(unattended(ready.cost, over))
            print(
                f"batchgen: not asking (no terminal): ~${ready.cost:.2f} is over --confirm-over"
                f" ${over:g}; going on, capped by --max-cost ${max_cost:g}",
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
