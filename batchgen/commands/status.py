"""``batchgen status OUT [--json] [--job ID]``: read a run's journal without touching it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from batchgen.journal.writer import JOURNAL_NAME, Journal, writer_pid
from batchgen.outputs.jobreport import build_job_report, render_job
from batchgen.outputs.status import build_report, render_text

EXAMPLES = """\
examples:
  batchgen status outputs/demo           counts, spend, failures, the command that resumes
  batchgen status outputs/demo --json    the same as one JSON object
  batchgen status outputs/demo --job 3f9a2c41d0e8b7a6
                                         one job: its row, its history, fal's logs
Safe while a run writes to the folder: status only reads.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="a run's output folder")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument(
        "--job",
        metavar="ID",
        help="one job instead: its row, its events and fal's logs of its failed requests (a job"
        " id, its first hex digits as in file names, or a request id)",
    )


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    path = out / JOURNAL_NAME
    # Read-only: safe while a run writes to the same folder (WAL); a missing journal is a
    # JournalError, which the CLI turns into one line and exit code 2.
    if args.job is not None:
        with Journal.open_readonly(path) as reader:
            job = build_job_report(reader, args.job)
        if args.json:
            json.dump(job.to_json(), sys.stdout, indent=2, ensure_ascii=False)
            sys.stdout.write("\n")
        else:
            sys.stdout.write(render_job(job))
        return 0
    with Journal.open_readonly(path) as reader:
        pid = writer_pid(path)
        report = build_report(reader, out, now=time.time(), writer_pid=pid, check_files=True)
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_text(report))
    return 0
