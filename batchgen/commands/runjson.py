"""``batchgen run --json``: the run's result as one JSON object, for scripts.

The same figures as the summary lines ``batchgen run`` prints on stderr, as numbers and names
rather than prose. Keys are only ever added, never renamed: a script that reads ``done`` today
reads it tomorrow. Paths are as the run was given them (relative to where it was started when
``--out`` was relative); a file the run did not get to write is ``null``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchgen.outputs.gallery import GALLERY
from batchgen.outputs.index import FAILURES, METADATA
from batchgen.planning.pricing import usd
from batchgen.running.runner import RunResult


def _path(out: Path, name: str) -> str | None:
    path = out / name
    return str(path) if path.is_file() else None


def result_json(result: RunResult) -> dict[str, Any]:
    s = result.summary
    return {
        "out_dir": str(result.out_dir),
        "exit_code": result.exit_code,
        "done": result.done,
        "failed": dict(sorted(result.failed.items())),  # jobs failed for good, by class
        "failed_total": sum(result.failed.values()),
        "unfinished": result.unfinished,
        "images": result.images,  # saved by this run
        # Estimates in USD (fal bills per token): the folder's, this run's part, and what
        # the folder's emulator requests would cost on fal (billed nowhere).
        "spent": usd(result.spent),
        "spent_run": usd(result.spent_run),
        "rehearsal": usd(result.rehearsal),
        "stop": None if result.stop is None else str(result.stop),
        "fatal": result.fatal,
        # The folder's totals, all runs (the summary's "folder totals" line)...
        "retried": s.retried,
        "possible_duplicates": s.possible_duplicates,
        "lost_results": s.lost,
        # ...and this run's figures (its "this run" line).
        "submitted_run": s.stats.submitted,
        "retried_run": s.retried_run,
        "possible_duplicates_run": s.stats.possible_duplicates,
        "lost_results_run": s.stats.lost,
        # what fal's history and the folder's checks saved this run from paying again
        "lost_submits_found_run": s.stats.found,
        "results_recovered_run": s.stats.recovered,
        "images_repaired_run": s.stats.repaired,
        "wall_seconds": round(s.wall_seconds, 3),
        "metadata": _path(result.out_dir, METADATA),
        "failures": _path(result.out_dir, FAILURES),
        "index_html": _path(result.out_dir, GALLERY),
        "summary": result.lines(),  # the human lines, for a script that shows them
    }
