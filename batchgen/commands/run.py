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
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from batchgen.api import execute
from batchgen.billing.compare import render_text as render_bill
from batchgen.commands.confirm import DEFAULT_CONFIRM_OVER, approval
from batchgen.commands.flags import add_option_flags, options_from
from batchgen.commands.progress import LOG_EVERY_S, Progress
from batchgen.commands.reconcile import EMULATE_REFUSED, after_run
from batchgen.commands.runjson import result_json
from batchgen.config import Settings, build_settings
from batchgen.errors import UsageError
from batchgen.journal.origin import describe
from batchgen.journal.writer import JOURNAL_NAME
from batchgen.manifest import Manifest, load_manifest
from batchgen.options import RunOptions, flag_of
from batchgen.running.events import (
    NOTICE,
    HistoryUnavailable,
    Reachable,
    Ready,
    Resumed,
    Stopping,
    StopReason,
    TellFailed,
    Unreachable,
    WebhooksSilent,
    announce,
    history_text,
    repair_notices,
    silent_text,
)
from batchgen.running.runner import Approve
from batchgen.running.snapshot import RunEvent, Snapshot

EXAMPLES = """\
examples:
  batchgen run manifests/demo.yaml --emulate          rehearse offline: no key, nothing billed
  batchgen run manifests/demo.yaml --emulate --faults flaky
                                                      rehearse a bad night on fal
  FAL_KEY=... batchgen run manifests/demo.yaml --max-cost 5
                                                      for real, stopping before $5
  batchgen run manifests/demo.yaml --emulate --quiet --json > run.json
                                                      for a script: one JSON object on stdout
  FAL_KEY=<admin key> batchgen run manifests/demo.yaml --reconcile
                                                      then fetch and record what fal billed

Run the same command again to resume after a stop, a crash or Ctrl-C: nothing is paid twice.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", help="a YAML, CSV or JSONL manifest")
    groups = add_option_flags(p)  # every run option, from options.RunOptions
    # Not a run option (batchgen.run never reconciles): this command does it once the run has
    # ended, so it is listed with the options about the end of a run.
    groups[flag_of(RunOptions.model_fields["on_exit"]).section].add_argument(
        "--reconcile",
        action="store_true",
        help="once the run has ended, fetch what the server billed for the folder's requests"
        " and record it, as 'batchgen reconcile OUT' does (status and the gallery then show"
        " the billed figure); needs an admin FAL_KEY: without one a notice says so and the exit"
        " code stays the run's. Not with --emulate (its emulator stops with the run)",
    )
    # How this command talks to the terminal: not options of the run itself.
    here = p.add_argument_group("this command's output")
    here.add_argument(
        "--json",
        action="store_true",
        help="print the run's summary as one JSON object on stdout, instead of the summary"
        " lines on stderr",
    )
    here.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar or progress lines, and none of the routine lines (what the run"
        " will submit, the output folder); still printed: errors, every notice (the plan's, a"
        " server that stops answering, a stop, what a resumed folder held, a failed --notify)"
        " and the summary",
    )
    here.add_argument(
        "--confirm-over",
        type=_usd,
        default=DEFAULT_CONFIRM_OVER,
        metavar="USD",
        help="ask on the terminal before submitting more than this estimate (never in a"
        " rehearsal or with --yes); without a terminal (cron, a script) such a run is"
        " refused, exit 2, unless --yes or --max-cost is given",
    )
    here.add_argument("--yes", "-y", action="store_true", help="do not ask (see --confirm-over)")


def _usd(text: str) -> float:
    """``--confirm-over``'s value: a finite amount, not negative (argparse says which flag)."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(text)
    return value


_usd.__name__ = "USD amount"  # argparse's error: "invalid USD amount value: '-1'"


def run(args: argparse.Namespace) -> int:
    options = options_from(args)  # every bad flag at once, before the manifest is read
    if args.reconcile and options.emulate:
        raise UsageError(EMULATE_REFUSED)
    manifest = load_manifest(Path(args.manifest))
    # Settings (and the key check) come before anything touches the output folder.
    settings = build_settings(options, os.environ, manifest)
    approve = approval(
        over=args.confirm_over,
        yes=args.yes,
        stdin=sys.stdin,
        stderr=sys.stderr,
        max_cost=options.max_cost,
    )
    json_out = sys.stdout if args.json else None
    return asyncio.run(
        run_manifest(
            manifest,
            settings,
            stderr=sys.stderr,
            json_out=json_out,
            approve=approve,
            quiet=args.quiet,
            reconcile=args.reconcile,
        )
    )


async def run_manifest(
    manifest: Manifest,
    settings: Settings,
    *,
    stderr: IO[str],
    signals: bool = True,
    approve: Approve | None = None,
    json_out: IO[str] | None = None,
    quiet: bool = False,
    reconcile: bool = False,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run and report: the summary lines on ``stderr``, or, given ``json_out``, one JSON
    object there instead (stdout stays clean for the script reading it). With ``reconcile``
    the folder's bill is then fetched (the key from ``env``, default ``os.environ``) and
    reported the same way; it never changes the exit code."""
    bar = not quiet and stderr.isatty()
    view = _View(
        stderr, bar=bar, quiet=quiet, where=describe(settings.origin), out=settings.out_dir
    )
    try:
        result = await execute(
            manifest,
            settings,
            on_event=view.on_event,
            # --quiet draws nothing from the timed snapshots, so it asks for none.
            progress_every=None if quiet else 0.5 if bar else LOG_EVERY_S,
            handle_signals=signals,
            approve=approve,
        )
    finally:
        view.close()
    if result.fatal is not None:
        print(f"batchgen: {result.fatal}", file=stderr)
    if json_out is None:
        for line in result.lines():
            print(f"batchgen: {line}", file=stderr)
    bill, notice = None, None
    if reconcile:
        if json_out is None and not quiet:
            print(
                f"batchgen: --reconcile: asking {describe(settings.origin)} what it billed",
                file=stderr,
            )
        bill, notice = await after_run(
            result.out_dir,
            settings.origin,
            interrupted=result.stop is StopReason.INTERRUPTED,
            env=os.environ if env is None else env,
            stderr=stderr,
        )
        if notice is not None:
            print(f"batchgen: {notice}", file=stderr)
        elif bill is not None and json_out is None:
            for line in render_bill(bill, str(result.out_dir / JOURNAL_NAME)).splitlines():
                print(f"batchgen: {line}", file=stderr)
    for line in view.late:  # a failed --notify or --on-exit: after the summary it tells of
        print(f"batchgen: {line}", file=stderr)
    if json_out is not None:
        doc = result_json(result)
        if reconcile:
            doc.update(reconcile=bill.to_json() if bill else None, reconcile_error=notice)
        json.dump(doc, json_out, indent=2, ensure_ascii=False)
        json_out.write("\n")
        json_out.flush()
    return result.exit_code


# Retried like any outage (a captive portal on a laptop's Wi-Fi passes), but said once: behind
# a proxy that inspects TLS it never passes on its own. httpx reads both variables.
UNTRUSTED = (
    "the server's certificate is not trusted here; behind a proxy that inspects TLS, point"
    " SSL_CERT_FILE (or SSL_CERT_DIR) at the CA bundle that trusts it"
)


class _View:
    """The terminal side of a run: the progress bar (or lines) and the stop notice.

    With ``quiet`` there is no progress at all, neither bar nor lines, and of the announcement
    only its notices; the notices (the plan's, a stop, an unreachable server, what a resume
    found) are still said, since they ask something of the user or explain a wait.
    """

    def __init__(self, stderr: IO[str], *, bar: bool, quiet: bool, where: str, out: Path) -> None:
        self._stderr = stderr
        self._bar = bar
        self._quiet = quiet
        self._where = where
        self._out = out
        self._progress: Progress | None = None
        self._latest: Snapshot | None = None
        self.late: list[str] = []  # said after the summary: what went wrong telling of it

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
        if isinstance(event, TellFailed):
            self.late.append(event.text)
            return
        if isinstance(event, Stopping) and not event.now and event.reason == StopReason.INTERRUPTED:
            self._say(
                "batchgen: stopping: no new submits; waiting for paid requests to finish"
                " and download (press Ctrl-C again to stop at once)"
            )
        if isinstance(event, Ready):
            for line in announce(event):
                if not self._quiet or line.startswith(NOTICE):  # the routine lines are not
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
                        *repair_notices(event),
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
            case WebhooksSilent():
                return [silent_text(event)]
            case HistoryUnavailable():
                return [history_text(event)]
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
