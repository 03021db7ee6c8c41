"""`batchgen run MANIFEST`: parse the flags, run the manifest through the API, report, exit.

A thin layer over ``batchgen.api.execute``: it decides the settings (``build_settings``, the
same function ``batchgen.run`` uses), asks for the signal handlers (the first Ctrl-C or
SIGTERM stops submitting and lets paid requests finish and download, exit 130; the second
stops at once), draws the progress from the run's events, and prints the summary. Either way
the journal is consistent and the same command resumes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import IO

from batchgen.api import execute
from batchgen.commands.confirm import DEFAULT_CONFIRM_OVER, approval
from batchgen.commands.helptext import FAULTS_HELP
from batchgen.commands.progress import LOG_EVERY_S, Progress
from batchgen.commands.runjson import result_json
from batchgen.config import DOWNLOAD_CONCURRENCY, EMULATE_TIME_SCALE, Settings, build_settings
from batchgen.fal.byok import manifest_wants_key
from batchgen.journal.origin import describe
from batchgen.manifest import Manifest, load_manifest
from batchgen.running.events import (
    Reachable,
    Ready,
    Resumed,
    Stopping,
    StopReason,
    Unreachable,
    announce,
)
from batchgen.running.runner import Approve, RunEvent, Snapshot

EXAMPLES = """\
examples:
  batchgen run manifests/demo.yaml --emulate          rehearse offline: no key, nothing billed
  batchgen run manifests/demo.yaml --emulate --faults flaky
                                                      rehearse a bad night on fal
  FAL_KEY=... batchgen run manifests/demo.yaml --max-cost 5
                                                      for real, stopping before $5
  batchgen run manifests/demo.yaml --emulate --quiet --json > run.json
                                                      for a script: one JSON object on stdout

Run the same command again to resume after a stop, a crash or Ctrl-C: nothing is paid twice.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", help="a YAML, CSV or JSONL manifest")
    p.add_argument("--out", metavar="DIR", help="output folder (default: outputs/<manifest name>)")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--emulate",
        action="store_true",
        help="run against the built-in emulator: no key, no network",
    )
    where.add_argument(
        "--endpoint",
        metavar="URL",
        help="base URL of a fal-compatible server, e.g. one started by 'batchgen emulator'"
        " (default: $BATCHGEN_ENDPOINT, else fal itself)",
    )
    p.add_argument(
        "--concurrency",
        default="auto",
        metavar="N|auto",
        help="requests in flight at once: N, or auto to find the account's limit",
    )
    p.add_argument(
        "--max-cost",
        type=float,
        metavar="USD",
        help="stop submitting before the folder's estimated spend passes USD; raise it and run"
        " again to continue (default: no limit)",
    )
    p.add_argument("--max-attempts", type=int, default=3, metavar="N", help="attempts per job")
    p.add_argument(
        "--deadline",
        type=float,
        default=1200.0,
        metavar="SECONDS",
        help="seconds from submit to result before a request is cancelled and sent again",
    )
    p.add_argument(
        "--watch",
        choices=["stream", "poll", "webhook"],
        default="stream",
        help="how to follow a request: fal's status stream (polling when it breaks), polling,"
        " or webhook: fal POSTs each result to --webhook-url (docs/webhooks.md)",
    )
    p.add_argument(
        "--webhook-listen",
        metavar="HOST:PORT",
        help="with --watch webhook: where the receiver listens (default: 127.0.0.1:0, any free"
        " port on loopback)",
    )
    p.add_argument(
        "--webhook-url",
        metavar="URL",
        help="with --watch webhook: the public URL fal POSTs to, a tunnel or reverse proxy to"
        " --webhook-listen (required against fal; default elsewhere: the listen address)",
    )
    p.add_argument(
        "--download-concurrency",
        type=int,
        default=DOWNLOAD_CONCURRENCY,
        metavar="N",
        help=f"images downloaded at once (default {DOWNLOAD_CONCURRENCY})",
    )
    p.add_argument(
        "--max-image-bytes",
        type=int,
        default=50_000_000,
        metavar="N",
        help="refuse an image larger than N bytes; its job fails as too_large",
    )
    p.add_argument("--retry-failed", action="store_true", help="put failed jobs back in the queue")
    p.add_argument(
        "--reuse-folder",
        action="store_true",
        help="build on an output folder another manifest file ran in: the jobs both manifests"
        " share are kept, new ones added",
    )
    p.add_argument(
        "--inline-uploads",
        action="store_true",
        help="send local reference files as data URIs instead of uploading them to fal storage",
    )
    p.add_argument("--faults", metavar="SPEC", help=f"with --emulate: {FAULTS_HELP}")
    p.add_argument(
        "--time-scale",
        type=float,
        metavar="X",
        help="with --emulate: the emulator's pace, 1 as fal's, 0 with no model time"
        f" (default: {EMULATE_TIME_SCALE:g})",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the run's summary as one JSON object on stdout, instead of the summary"
        " lines on stderr",
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar or progress lines; errors, notices and the summary only",
    )
    p.add_argument(
        "--confirm-over",
        type=float,
        default=DEFAULT_CONFIRM_OVER,
        metavar="USD",
        help="ask on the terminal before submitting more than this estimate (never in a"
        " rehearsal, with --yes, or without a terminal)",
    )
    p.add_argument("--yes", "-y", action="store_true", help="do not ask (see --confirm-over)")
    _control_arguments(p)


def _control_arguments(p: argparse.ArgumentParser) -> None:
    """fal's own controls for overnight runs (issue 13; running/controls.py, fal/headers.py)."""
    p.add_argument(
        "--priority",
        choices=["low", "normal"],
        help="fal's queue priority: low waits behind every normal request to the endpoint, so"
        " a bulk run yields to interactive traffic (default: the manifest's priority, else"
        " fal's, normal)",
    )
    p.add_argument(
        "--start-timeout",
        type=float,
        metavar="SECONDS",
        help="fal fails a request no runner has started SECONDS after its submit (not billed);"
        " it is sent again, up to --max-attempts (default: none)",
    )
    p.add_argument(
        "--media-expiry",
        type=int,
        metavar="SECONDS",
        help="fal's CDN deletes the generated images SECONDS after they are made, at least 600"
        " (default: fal's retention, 7 days or more)",
    )
    p.add_argument(
        "--allow-fallbacks",
        action="store_true",
        help="let fal answer from an 'equivalent' endpoint after repeated failures (by default"
        " each request says x-fal-disable-fallbacks; also the manifest key allow_fallbacks)",
    )
    p.add_argument(
        "--no-store-io",
        action="store_true",
        help="ask fal not to keep the requests' input and output payloads (X-Fal-Store-IO: 0)",
    )
    p.add_argument(
        "--stop-at",
        metavar="HH:MM",
        help="stop submitting at this local time (the next one) and finish what is paid for;"
        " exit 4 when jobs are left",
    )
    p.add_argument(
        "--notify",
        metavar="URL",
        help="POST a JSON summary when the run ends (its 'text' suits Slack-style incoming"
        " webhooks); kept secret, never logged (default: $BATCHGEN_NOTIFY_URL)",
    )
    p.add_argument(
        "--on-exit",
        metavar="CMD",
        help="run CMD when the run ends, the JSON summary on its stdin; split like a shell"
        " line but run without a shell (for pipes: sh -c '...')",
    )


def run(args: argparse.Namespace) -> int:
    manifest = load_manifest(Path(args.manifest))
    # Settings (and the key check) come before anything touches the output folder.
    settings = build_settings(
        vars(args),
        os.environ,
        manifest_name=manifest.name,
        byok=manifest_wants_key(manifest),
        manifest=manifest,
    )
    approve = approval(over=args.confirm_over, yes=args.yes, stdin=sys.stdin, stderr=sys.stderr)
    json_out = sys.stdout if args.json else None
    return asyncio.run(
        run_manifest(manifest, settings, stderr=sys.stderr, json_out=json_out, approve=approve)
    )


async def run_manifest(
    manifest: Manifest,
    settings: Settings,
    *,
    stderr: IO[str],
    signals: bool = True,
    approve: Approve | None = None,
    json_out: IO[str] | None = None,
) -> int:
    """Run and report: the summary lines on ``stderr``, or, given ``json_out``, one JSON
    object there instead (stdout stays clean for the script reading it)."""
    bar = not settings.quiet and stderr.isatty()
    view = _View(
        stderr, bar=bar, quiet=settings.quiet, where=describe(settings.origin), out=settings.out_dir
    )
    try:
        result = await execute(
            manifest,
            settings,
            on_event=view.on_event,
            # --quiet draws nothing from the timed snapshots, so it asks for none.
            progress_every=None if settings.quiet else 0.5 if bar else LOG_EVERY_S,
            handle_signals=signals,
            approve=approve,
        )
    finally:
        view.close()
    if result.fatal is not None:
        print(f"batchgen: {result.fatal}", file=stderr)
    if json_out is not None:
        json.dump(result_json(result), json_out, indent=2, ensure_ascii=False)
        json_out.write("\n")
        json_out.flush()
    else:
        for line in result.lines():
            print(f"batchgen: {line}", file=stderr)
    return result.exit_code


# Retried like any outage (a captive portal on a laptop's Wi-Fi passes), but said once: behind
# a proxy that inspects TLS it never passes on its own. httpx reads both variables.
UNTRUSTED = (
    "the server's certificate is not trusted here; behind a proxy that inspects TLS, point"
    " SSL_CERT_FILE (or SSL_CERT_DIR) at the CA bundle that trusts it"
)


class _View:
    """The terminal side of a run: the progress bar (or lines) and the stop notice.

    With ``quiet`` there is no progress at all, neither bar nor lines; the notices (a stop, an
    unreachable server, what a resume found) are still said, since they ask something of the
    user or explain a wait.
    """

    def __init__(self, stderr: IO[str], *, bar: bool, quiet: bool, where: str, out: Path) -> None:
        self._stderr = stderr
        self._bar = bar
        self._quiet = quiet
        self._where = where
        self._out = out
        self._progress: Progress | None = None
        self._latest: Snapshot | None = None

    def on_event(self, event: RunEvent) -> None:
        if isinstance(event, Snapshot):
            self._latest = event
            if self._quiet:
                return
            if self._progress is None:  # the first snapshot carries the total
                self._progress = Progress(
                    self._snapshot, total=event.total, stream=self._stderr, bar=self._bar
                )
            else:
                self._progress.refresh()
            return
        if isinstance(event, Stopping) and not event.now and event.reason == StopReason.INTERRUPTED:
            self._say(
                "batchgen: stopping: no new submits; waiting for paid requests to finish"
                " and download (press Ctrl-C again to stop at once)"
            )
        if isinstance(event, Ready) and not self._quiet:
            for line in announce(event):
                self._say(f"batchgen: {line}")
        for line in self._notice(event):
            self._say(f"batchgen: {line}")
        if self._progress is not None:
            self._progress.on_event(event)

    def _notice(self, event: RunEvent) -> list[str]:
        """What the user must hear at once, even with --quiet: where the run's work stands."""
        match event:
            case Resumed(replaced=replaced, dropped=dropped, redownload=redownload):
                return [
                    text
                    for n, text in (
                        (
                            replaced,
                            f"{self._out} held a rehearsal: its {replaced} jobs are made"
                            " for real now (its placeholder images are removed)",
                        ),
                        (
                            dropped,
                            f"{dropped} requests of a stopped emulator are submitted again"
                            " (they cost nothing)",
                        ),
                        (
                            redownload,
                            f"{redownload} paid images that failed to download are"
                            " fetched again from their results (no new submit)",
                        ),
                    )
                    if n
                ]
            case Unreachable(seconds=s, message=msg):
                return [
                    f"{self._where} unreachable for {s:.0f} s: {msg}; retrying (nothing is"
                    " lost; Ctrl-C stops safely and the same command resumes)"
                ] + ([UNTRUSTED] if "CERTIFICATE_VERIFY_FAILED" in msg else [])
            case Reachable(seconds=s):
                return [f"{self._where} answers again, after {s:.0f} s"]
            case Stopping(now=False, reason=StopReason.STOP_AT):
                return [
                    "--stop-at reached: no new submits; waiting for paid requests to finish and"
                    " download (Ctrl-C stops at once; the same command continues later)"
                ]
        return []

    def _say(self, text: str) -> None:
        if self._progress is not None:
            self._progress.note(text)
        else:
            print(text, file=self._stderr, flush=True)

    def _snapshot(self) -> Snapshot:
        assert self._latest is not None  # set before the Progress that reads it is built
        return self._latest

    def close(self) -> None:
        if self._progress is not None:
            self._progress.close()
