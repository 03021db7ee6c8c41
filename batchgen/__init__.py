"""batchgen: bulk image generation on fal.ai's queue API.

The Python API (see docs/api.md): ``load_manifest``, ``plan``, ``await run(...)`` or
``run_sync(...)``, ``read_index``, ``read_failures``; the events a ``run(on_event=...)``
callback receives; and the exception tree. ``__all__`` is pinned by tests/test_api.py.
"""

__version__ = "0.1.0"

# Below __version__: the modules imported here read it from this package while it loads.
from batchgen.api import load_manifest, plan, read_failures, read_index, run, run_sync
from batchgen.errors import (
    AuthError,
    BatchgenError,
    JournalError,
    ManifestError,
    Problem,
    UsageError,
)
from batchgen.manifest import Manifest
from batchgen.planning import PlanSummary
from batchgen.runner import RunEvent, RunResult, Snapshot
from batchgen.summary import (
    BudgetReached,
    Failed,
    Finished,
    Planned,
    Requeued,
    Resumed,
    Retrying,
    Saved,
    Started,
    Stopping,
    StopReason,
    Submitted,
    WindowChanged,
)

__all__ = [
    "AuthError",
    "BatchgenError",
    "BudgetReached",
    "Failed",
    "Finished",
    "JournalError",
    "Manifest",
    "ManifestError",
    "PlanSummary",
    "Planned",
    "Problem",
    "Requeued",
    "Resumed",
    "Retrying",
    "RunEvent",
    "RunResult",
    "Saved",
    "Snapshot",
    "Started",
    "StopReason",
    "Stopping",
    "Submitted",
    "UsageError",
    "WindowChanged",
    "__version__",
    "load_manifest",
    "plan",
    "read_failures",
    "read_index",
    "run",
    "run_sync",
]
