"""What a run needs around it: the server it talks to (the emulator started in-process for
``--emulate``), the HTTP clients sized for the window, and the signal handlers."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from batchgen.config import Settings, Target
from batchgen.errors import DiskFull
from batchgen.fal import QueueClient
from batchgen.journal.writer import Journal
from batchgen.outputs.download import MAX_REDIRECTS
from batchgen.outputs.gallery import refresh_gallery
from batchgen.running.events import Event, WebhooksSilent
from batchgen.running.scheduler import Scheduler
from batchgen.running.window import DEFAULT_MAX_WINDOW, WatchMode

if TYPE_CHECKING:
    from batchgen.running.webhooks import Webhook


@contextlib.asynccontextmanager
async def target(settings: Settings) -> AsyncIterator[str | None]:
    """The base URL of the server to talk to (None: real fal), starting the emulator if asked."""
    if settings.target is not Target.EMULATE:
        yield settings.endpoint
        return
    from batchgen.emulator import EmulatorConfig, serve

    config = EmulatorConfig(
        time_scale=settings.time_scale if settings.time_scale is not None else 1.0,
        faults=settings.faults or "none",
        seed=settings.options.seed,
        result_ttl_s=settings.options.result_ttl,
    )
    async with serve(config, host="127.0.0.1", port=0) as url:
        yield url


# Idle connections each client keeps for the next request. A few carry a finished stream's
# connection on to its result GET and the next submit (no new TLS handshake with fal); more
# cost CPU on every request, as httpx's pool looks at each idle connection's socket each time
# it places one. bench/run.py --only throughput (docs/benchmarks.md): 8 kept, 104 jobs/s and
# 10.1 ms of CPU a job; every connection of the window kept, 91 and 12.0 ms.
KEEP_IDLE = 8


@contextlib.asynccontextmanager
async def clients(
    settings: Settings,
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """The run's two HTTP clients, stock httpx: the queue client (submits, streams, polls,
    results, uploads) and the media client (image downloads), each sized to the run."""
    # One open stream per request in flight, plus polls and results: the pool must hold the
    # whole window or watchers would queue behind each other for a connection.
    n = max(settings.options.concurrency or DEFAULT_MAX_WINDOW, 1) * 2 + 16
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=KEEP_IDLE)
    # One connection per download worker: each fetches one image at a time.
    d = settings.options.download_concurrency
    media_limits = httpx.Limits(max_connections=d, max_keepalive_connections=min(d, KEEP_IDLE))
    timeout = httpx.Timeout(60.0, connect=15.0)
    # httpx reads HTTPS_PROXY, NO_PROXY and SSL_CERT_FILE / SSL_CERT_DIR itself (trust_env).
    # Not for the in-process emulator: it listens on loopback, where a proxy from the
    # environment could only fail to reach it (a first run behind a corporate proxy would
    # wait on SERVER UNREACHABLE); and plain HTTP on loopback needs no CA bundle.
    trust_env = settings.target is not Target.EMULATE
    # httpx's own default context (certifi's CAs, or SSL_CERT_FILE / SSL_CERT_DIR), loaded
    # once for both clients rather than once per transport (each proxy has one): ~20 ms each.
    verify = httpx.create_ssl_context(trust_env=trust_env)
    async with (
        httpx.AsyncClient(
            limits=limits, timeout=timeout, verify=verify, trust_env=trust_env
        ) as http,
        # No hop past download_image's limit is fetched (it refuses more from any client,
        # but only once that client has followed them).
        httpx.AsyncClient(
            limits=media_limits,
            timeout=timeout,
            verify=verify,
            trust_env=trust_env,
            max_redirects=MAX_REDIRECTS,
        ) as media,
    ):
        yield http, media


@contextlib.contextmanager
def signals(sched: Scheduler, *, enabled: bool) -> Iterator[None]:
    """First SIGINT/SIGTERM: stop submitting, finish what is paid for. Second: stop now.

    The scheduler reports each stop as a ``Stopping`` event, which is how the CLI tells the
    user what is happening; this handler itself prints nothing.
    """
    if not enabled:
        yield
        return
    loop = asyncio.get_running_loop()
    hits = 0

    def handler() -> None:
        nonlocal hits
        hits += 1
        sched.stop(now=hits > 1)

    # remove_signal_handler resets a signal to Python's default, but asyncio.run (and so
    # run_sync, or a test runner) had put its own SIGINT handler there: put that one back.
    installed: list[tuple[signal.Signals, Any]] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        try:
            loop.add_signal_handler(sig, handler)
            installed.append((sig, previous))
        except (NotImplementedError, RuntimeError):  # not the main thread, or no unix signals
            pass
    try:
        yield
    finally:
        for sig, previous in installed:
            loop.remove_signal_handler(sig)
            if previous is not None:  # None: set from outside Python, cannot be restored
                signal.signal(sig, previous)


@contextlib.asynccontextmanager
async def receiver(
    settings: Settings, client: QueueClient, journal: Journal, emit: Callable[[Event], None]
) -> AsyncIterator[Webhook | None]:
    """``--watch webhook``: fal's deliveries received on ``--webhook-listen`` (their signature
    checked against the JWKS of the server the run talks to), and the URL to give fal; a
    ``WebhooksSilent`` to ``emit`` if they stop coming. Nothing for the other ways of
    watching."""
    if settings.options.watch is not WatchMode.WEBHOOK or settings.webhook_listen is None:
        yield None
        return
    # Imported here: starlette, uvicorn and cryptography are for webhook runs only (~30 ms of
    # every other run's start-up).
    from batchgen.fal.webhook import Verifier
    from batchgen.running.receiver import receive, shown_url
    from batchgen.running.webhooks import Inbox, Webhook

    def silent(seconds: float, completed: int) -> None:  # called once ``url`` is given fal
        counts = inbox.counts()
        refused = tuple((k, n) for k, n in counts.items() if k.startswith("refused_") and n)
        emit(WebhooksSilent(seconds, completed, shown_url(url), refused, inbox.last_path))

    inbox = Inbox(silent)
    verifier = Verifier(client.jwks)

    def refused(why: str) -> None:
        journal.event(None, "webhook", f"refused a delivery: {why}")

    async with receive(
        settings.webhook_listen, settings.webhook_url, inbox, verifier, refused
    ) as url:
        yield Webhook(inbox, url)


GALLERY_EVERY_S = 300.0


def refresh_view(out: Path, log: Callable[[str], object], workers: int | None = None) -> None:
    """Bring the gallery up to date (appending what is new; a full build when it must); a
    failure is only logged: the images and the index are the product, the page a view."""
    problem = _refreshed(out, workers)
    if problem is not None:
        log(problem)


def _refreshed(out: Path, workers: int | None) -> str | None:
    try:
        refresh_gallery(out, workers=workers)
    except Exception as exc:
        return f"gallery: not refreshed ({type(exc).__name__}: {exc})"
    return None


@contextlib.asynccontextmanager
async def gallery_every(
    out: Path, *, log: Callable[[str | None, str, str], object], every: float | None = None
) -> AsyncIterator[None]:
    """While the run lasts, refresh the gallery every ``every`` seconds, in a worker thread
    with one thumbnail worker, so the run's own work barely notices (a refresh reads only the
    rows appended since the last one). ``log`` (the journal's audit trail) is called back on
    the event loop's thread, where the journal lives."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(every or GALLERY_EVERY_S)
            problem = await asyncio.to_thread(_refreshed, out, 1)
            if problem is not None:
                with contextlib.suppress(DiskFull):  # the run itself stops for that
                    log(None, "gallery", problem)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
