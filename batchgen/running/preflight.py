"""What is checked before a run touches its output folder.

``config.build_settings`` checks what the options and the environment say on their own. Three
things need a look outside: the output folder's place on disk, ``--webhook-listen``'s address
(a port another process holds, a host that does not resolve), and, for an ``--endpoint`` run
without a key, the server itself. They are checked here, before ``runner.execute`` makes the
folder, so a mistake exits 2 with one line and leaves nothing behind (no folder, no journal,
no run.log).
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from batchgen.config import Settings, Target
from batchgen.errors import UsageError
from batchgen.fal import Endpoints, QueueClient

NO_KEY = "no fal key: set FAL_KEY (or FAL_KEY_ID and FAL_KEY_SECRET)"
PROBE_TIMEOUT_S = 10.0


async def check_before_folder(settings: Settings) -> None:
    """Raise ``UsageError`` for what would stop the run once its folder exists."""
    check_folder(settings.out_dir)
    check_listen(settings.webhook_listen)
    await check_key(settings)


def check_folder(out: Path) -> None:
    """The output folder can be made (or is one): not a file, not under a file, writable."""
    said = f"output folder {out}"
    if out.is_symlink() and not out.exists():
        raise UsageError(f"{said} is a link to nothing; remove it or pick another --out")
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"{said} is a file, not a folder; pick another --out")
        if not os.access(out, os.W_OK | os.X_OK):
            raise UsageError(f"{said} is not writable by this user")
        return
    above = out.absolute().parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise UsageError(f"{said} cannot be made: {above} is a file, not a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise UsageError(f"{said} cannot be made: {above} is not writable by this user")


def check_listen(listen: str | None) -> None:
    """``--webhook-listen`` can be bound now, as the receiver will bind it (the same socket
    options, emulator/server.py's ``bind_socket``), and is let go at once. A port taken in
    between is still said by the receiver, once the folder exists."""
    if listen is None:
        return
    # Imported here: uvicorn is for webhook runs only (as in running/receiver.py's receive).
    from batchgen.emulator.server import bind_socket

    host, _, port = listen.rpartition(":")  # checked as an option (option_rules.as_listen)
    try:
        bind_socket(host, int(port)).close()
    except OSError as exc:
        raise UsageError(
            f"--webhook-listen cannot listen on {listen}: {exc.strerror or exc}"
        ) from None


async def check_key(settings: Settings) -> None:
    """An ``--endpoint`` run without a key goes on only against a rehearsal server (a
    ``batchgen emulator`` says it is one, as the scheduler asks again in ``prepare``):
    anything else, or a server that does not answer, may bill, so the key is named now."""
    if settings.has_key or settings.target is not Target.ENDPOINT or not settings.endpoint:
        return
    timeout = httpx.Timeout(PROBE_TIMEOUT_S)
    async with httpx.AsyncClient(timeout=timeout) as http:
        client = QueueClient(
            http, endpoints=Endpoints.single(settings.endpoint), key=settings.key, timeout=timeout
        )
        if await client.is_emulator():
            return
    raise UsageError(
        f"{NO_KEY}: {settings.endpoint} does not answer as a batchgen emulator, so a run there"
        " may be billed"
    )
