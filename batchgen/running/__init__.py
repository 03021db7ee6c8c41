"""One run: the runner, the asyncio scheduler, watching requests, pacing and what a run reports.

``runner`` (builds the journal, clients and emulator, handles signals), ``scheduler`` (submit
within a window, watch, fetch, hand to the downloads), ``watcher`` (stream, check or poll one
request), ``window`` (pure pacing: concurrency, budget, how to watch), ``events`` (the typed
events and the end summary) and ``runlog`` (``run.log``). The top stage under ``api``; it uses
every stage below it.

Named ``running`` rather than ``run`` because ``batchgen.run`` is a public function; a
subpackage of that name would replace it on the package once imported.
"""
