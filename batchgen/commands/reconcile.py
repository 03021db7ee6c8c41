"""``batchgen reconcile OUT [--json] [--endpoint URL]``: fal's bill beside the folder's estimate."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING

from batchgen.errors import UsageError
from batchgen.option_rules import check_url

if TYPE_CHECKING:
    from batchgen.billing.compare import Reconciliation

EXAMPLES = """\
examples:
  FAL_KEY=<admin key> batchgen reconcile outputs/demo
                                  what fal billed for the folder, beside its estimate
  batchgen reconcile outputs/demo --json
                                  the same as one JSON object
  FAL_KEY=admin-x batchgen reconcile outputs/demo --endpoint http://127.0.0.1:8765
                                  a rehearsal's bill, from the 'batchgen emulator' it ran against
fal's billing events need an admin key (fal's dashboard makes one). The bill is recorded in the
folder's journal, and shown by 'batchgen status' and the gallery's header (index.html is
rewritten); a refused key changes nothing (exit 2). 'batchgen run --reconcile' does this after
its run.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="a run's output folder")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument(
        "--endpoint",
        metavar="URL",
        help="ask this fal-compatible server (its platform API under URL/v1) instead of the one"
        " the folder's requests went to (default: that one: fal, or the --endpoint of its runs)",
    )


def run(args: argparse.Namespace) -> int:
    from batchgen.billing.compare import render_text
    from batchgen.journal.writer import JOURNAL_NAME

    out = Path(args.out)
    if not (out / JOURNAL_NAME).is_file():
        raise UsageError(f"{out} has no {JOURNAL_NAME}: is it a batchgen output folder?")
    server = None if args.endpoint is None else check_url(args.endpoint, "--endpoint").rstrip("/")
    rec = asyncio.run(reconcile_folder(out, server=server, env=os.environ, stderr=sys.stderr))
    if args.json:
        json.dump(rec.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_text(rec, str(out / JOURNAL_NAME)))
    return 0


async def reconcile_folder(
    out: Path, *, server: str | None, env: Mapping[str, str], stderr: IO[str]
) -> Reconciliation:
    """What `batchgen reconcile OUT` does, and `batchgen run --reconcile` after its run: fetch
    the bill of ``out`` at ``server`` (None: the folder's own), with the key in ``env``'s
    FAL_KEY, record it in the journal, and rewrite the gallery's page (when the folder has
    one) so its header shows it. Raises what ``billing.reconcile.reconcile`` raises."""
    # Imported here so `batchgen --help` does not pay for httpx and the journal.
    import httpx

    from batchgen.billing.reconcile import reconcile
    from batchgen.fal import Endpoints
    from batchgen.fal.auth import FalKey, key_from_env
    from batchgen.fal.platform import PLATFORM_URL, PlatformClient
    from batchgen.outputs.gallery import GALLERY
    from batchgen.running.setup import refresh_view

    key = key_from_env(env)
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=15.0)) as http:

        def client_for(where: str) -> PlatformClient:
            base = PLATFORM_URL if where == "fal" else Endpoints.single(where).platform
            if key is None and where == "fal":
                raise UsageError(
                    "fal's billing events need an admin key: set FAL_KEY to one"
                    " (fal's dashboard makes them)"
                )
            # An --endpoint server without FAL_KEY is sent the same stand-in key a run
            # sends it (not a secret); the emulator answers 403 to it, as fal would.
            return PlatformClient(http, key=key or FalKey("batchgen-emulator"), base_url=base)

        rec = await reconcile(out, client_for, server=server, now=time.time())
    if (out / GALLERY).is_file():  # the page is a view: a failure to write it is only said
        refresh_view(out, lambda problem: print(f"batchgen: {problem}", file=stderr))
    return rec


# `batchgen run --emulate --reconcile` is refused before anything happens (commands/run.py):
# the emulator of --emulate runs inside the run and stops before the run returns, its record
# with it. Reconciling before it stops would mean doing it inside the runner, while the run's
# journal is open and locked (a reconcile writes under that lock and refuses a folder a run
# holds), and would record the bill of a server no later `batchgen reconcile` can ask again;
# `batchgen reconcile` refuses such a folder for the same reason.
EMULATE_REFUSED = (
    "--reconcile does not go with --emulate: that emulator runs inside the run and its record"
    " stops with it (and it bills nothing). To rehearse a reconcile, run against 'batchgen"
    " emulator' with --endpoint URL and an emulator admin key (FAL_KEY=admin-...)"
)


async def after_run(
    out: Path, origin: str, *, interrupted: bool, env: Mapping[str, str], stderr: IO[str]
) -> tuple[Reconciliation | None, str | None]:
    """`batchgen run --reconcile`, once the run has ended (its journal closed, its lock
    released): ``out`` reconciled against the server the run's requests went to (``origin``,
    ``journal.origin``), as ``reconcile_folder`` does. The bill or the line that says why
    there is none: a refused key, a server that does not answer, an interrupted run, a
    Ctrl-C during the reconcile (nothing is recorded then). Neither changes the run's exit
    code: the bill is a report on the run, not part of it."""
    import shlex

    from batchgen.errors import BatchgenError
    from batchgen.journal.origin import FAL, server_of

    server = server_of(origin)
    if server is None:  # --emulate: refused before the run (EMULATE_REFUSED)
        return None, EMULATE_REFUSED
    again = ["batchgen", "reconcile", str(out)] + ([] if server == FAL else ["--endpoint", server])
    later = f"the run's exit code is its own; later: FAL_KEY=<admin key> {shlex.join(again)}"
    if interrupted:
        return None, f"--reconcile: not reconciled, the run was interrupted; {later}"
    try:
        return await reconcile_folder(out, server=server, env=env, stderr=stderr), None
    except (BatchgenError, OSError) as exc:
        why = str(exc)
    except asyncio.CancelledError:
        # A Ctrl-C stops the reconcile only: the run's result stands and is reported.
        task = asyncio.current_task()
        if task is None or task.uncancel() > 0:  # cancelled by someone else: theirs
            raise
        why = "interrupted"
    return None, f"--reconcile: not reconciled: {why}; {later}"
