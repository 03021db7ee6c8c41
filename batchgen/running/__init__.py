"""One run: the runner, the asyncio scheduler, watching requests, pacing and what a run reports.

``runner`` (one run from a checked manifest and decided settings), ``setup`` (the server, the
HTTP clients, the signals), ``scheduler`` (the story: resume, submit within a window, drain),
``context`` (what the parts of one run share), ``submitter`` (one job's submit), ``follow``
(one request to its committed result), ``watching`` (the stream, polling or a webhook behind
one interface), ``pacing`` and ``window`` (the window and its pure rules), ``stop`` (why the
run stops, one value), ``recovery`` (what a run finds in its folder), ``reach`` (an
unreachable server as a run-level condition), ``recorder`` (decisions written down),
``events`` (the typed events), ``summary`` (the end of a run) and ``runlog`` (``run.log``).
The top stage under ``api``; it uses every stage below it.

Named ``running`` rather than ``run`` because ``batchgen.run`` is a public function; a
subpackage of that name would replace it on the package once imported.
"""
