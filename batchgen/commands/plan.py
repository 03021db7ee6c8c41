"""`batchgen plan MANIFEST [--json]`: what the manifest will do, and an estimate of its cost.

A thin layer over ``batchgen.api.plan``: this file only prints its ``PlanSummary``. Nothing is
sent anywhere. A bad manifest raises ManifestError (exit 2, no traceback). A BYOK manifest
without ``OPENAI_API_KEY`` is a warning here (exit 0), and an error for ``run``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from typing import TextIO

from batchgen.api import load_manifest, plan
from batchgen.fal.byok import ENV, plan_note
from batchgen.planning.disk import size_text
from batchgen.planning.summary import ESTIMATE_NOTE, Group, PlanSummary

EXAMPLES = """\
examples:
  batchgen plan manifests/demo.yaml                 jobs, images, cost; nothing is sent
  batchgen plan manifests/everything.yaml --json    the same as one JSON object
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", help="a YAML, CSV or JSONL manifest")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")


def run(args: argparse.Namespace) -> int:
    manifest = load_manifest(args.manifest)
    summary = plan(manifest)
    # Only whether the key is set: plan never holds the key itself.
    byok = plan_note(manifest, key_set=bool(os.environ.get(ENV, "").strip()))
    if args.json:
        doc = summary.to_json()
        if byok is not None:
            doc["byok"] = byok
        json.dump(doc, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        render(summary, sys.stdout)
        if byok is not None:
            sys.stdout.write(f"\nbyok       your OpenAI key ({ENV}) is added to each request")
            sys.stdout.write(" at submit time\n" if byok["openai_key_set"] else "; it is NOT set\n")
    if byok is not None and byok["problem"]:
        print(f"batchgen: warning: {byok['problem']}", file=sys.stderr)
    return 0


def render(s: PlanSummary, out: TextIO) -> None:
    w = out.write
    w(f"manifest   {s.manifest}  ({s.name}, sha256 {s.sha256[:12]})\n")
    dup = f"  ({s.duplicates:,} duplicate(s) collapsed)" if s.duplicates else ""
    w(f"jobs       {s.jobs:,}{dup}\n")
    w(f"images     {s.images:,}\n")
    w(f"cost       ~${s.cost_usd:,.2f}  ({ESTIMATE_NOTE})\n")
    w(f"disk       ~{size_text(s.disk_bytes)}  (typical image sizes; docs/outputs.md)\n")
    for title, groups in (
        ("endpoint", s.by_endpoint),
        ("size", s.by_size),
        ("quality", s.by_quality),
    ):
        w(f"\nby {title}\n")
        _table(groups, out)
    w("\nsample jobs\n")
    for sample in s.samples:
        prompt = sample.prompt if len(sample.prompt) <= 60 else sample.prompt[:57] + "..."
        w(f"  {sample.job_id[:16]}  {sample.output_path}\n")
        w(f"      {sample.size} {sample.quality}  {prompt!r}  ({sample.source})\n")
    if s.notices:
        w("\nnotices\n")
        for notice in s.notices:
            w(f"  - {notice}\n")


def _table(groups: Mapping[str, Group], out: TextIO) -> None:
    width = max((len(k) for k in groups), default=0)
    for key, g in sorted(groups.items(), key=lambda kv: (-kv[1].jobs, kv[0])):
        out.write(
            f"  {key:<{width}}  {g.jobs:>10,} jobs  {g.images:>10,} images  ~${g.cost_usd:,.2f}\n"
        )
