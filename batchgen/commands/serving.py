"""What the commands that serve on loopback share (``batchgen emulator``, ``batchgen review``)."""

from __future__ import annotations

import asyncio
import signal


async def until_stopped() -> None:
    """Wait for Ctrl-C or SIGTERM. They end this wait instead of cancelling every task, so a
    uvicorn server around it shuts down in order (no lifespan traceback) and the command
    exits 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
