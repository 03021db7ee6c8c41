"""``batchgen review OUT``: serve the review page on loopback until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import sys
import webbrowser
from pathlib import Path

from batchgen.commands.serving import until_stopped
from batchgen.errors import UsageError
from batchgen.journal.writer import JOURNAL_NAME
from batchgen.outputs.index import METADATA

HOST = "127.0.0.1"

EXAMPLES = """\
examples:
  batchgen review outputs/demo                 opens the review page in your browser
  batchgen review outputs/demo --no-browser --port 8800
                                               prints its URL only (open it yourself)
Keys: <- and -> move, p picks, x rejects, u clears. Each mark is written to the folder's
marks.sqlite at once (a closed tab loses nothing); exports' --exclude rejected and
--only picked, and run --replace-rejected, read them. The page follows a run still writing
the folder. It listens on 127.0.0.1 only, and every request needs the token in its URL.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="a run's output folder")
    p.add_argument(
        "--port",
        type=int,
        default=0,
        metavar="N",
        help="port on 127.0.0.1; 0 (default) picks a free one",
    )
    p.add_argument(
        "--no-browser", action="store_true", help="print the page's URL without opening a browser"
    )


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if not ((out / METADATA).is_file() or (out / JOURNAL_NAME).is_file()):
        raise UsageError(
            f"{out} has neither {METADATA} nor {JOURNAL_NAME}: is it a batchgen output folder?"
        )
    if not 0 <= args.port <= 65535:
        raise UsageError("--port must be between 0 and 65535")
    asyncio.run(_serve_forever(out, args.port, not args.no_browser))
    return 0


async def _serve_forever(out: Path, port: int, browser: bool) -> None:
    # Imported here so `batchgen --help` does not pay for Starlette and uvicorn.
    from batchgen.emulator.server import serve_asgi
    from batchgen.outputs.review_app import create_review_app, new_token

    token = new_token()
    async with serve_asgi(create_review_app(out, token), HOST, port) as base:
        url = f"{base}/?t={token}"
        print(f"reviewing {out} at {url}", flush=True)
        print("  keys: <- -> move, p pick, x reject, u clear   (Ctrl-C to stop)", flush=True)
        if browser and not webbrowser.open(url):
            print("  (no browser could be opened: open the URL above)", flush=True)
        await until_stopped()
    print("review page stopped", file=sys.stderr)
