"""One run: the runner, the asyncio scheduler, watching requests, pacing and what a run reports.

``runner`` (one run from a checked manifest and decided settings), ``setup`` (the server, the
HTTP clients, the signals), ``scheduler`` (submit within a window, watch, fetch, hand to the
downloads), ``submitter`` (one job's submit), ``recovery`` (what a run finds in its folder),
``reach`` (an unreachable server as a run-level condition), ``recorder`` (decisions written
down), ``watcher`` (stream, check or poll one request), ``window`` (pure pacing: concurrency,
budget, how to watch), ``events`` (the typed events), ``summary`` (the end of a run) and
``runlog`` (``run.log``). The top stage under ``api``; it uses every stage below it.

Named ``running`` rather than ``run`` because ``batchgen.run`` is a public function; a
subpackage of that name would replace it on the package once imported.
"""
