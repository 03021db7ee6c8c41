"""batchgen: bulk image generation on fal.ai's queue API.

The Python API (see docs/api.md): ``load_manifest``, ``plan``, ``await run(...)`` or
``run_sync(...)``, ``read_index`` (``iter_index`` streams it), ``read_failures``; the events a
``run(on_event=...)`` callback receives; and the exception tree. ``__all__`` is pinned by
tests/test_api.py.

The names load on first use: importing one module of the package
(``batchgen.planning.jobs``) must not pull in the whole runner (~0.3 s).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from batchgen._version import __version__

if TYPE_CHECKING:
    from batchgen.api import (
        iter_index,
        load_manifest,
        plan,
        read_failures,
        read_index,
        run,
        run_sync,
    )
    from batchgen.errors import (
        AccountLocked,
        AuthError,
        BatchgenError,
        DiskFull,
        JournalError,
        ManifestError,
        Problem,
        UsageError,
    )
    from batchgen.manifest import Manifest
    from batchgen.planning.summary import PlanSummary
    from batchgen.running.events import (
        BudgetReached,
        Failed,
        Finished,
        Planned,
        Reachable,
        Ready,
        Requeued,
        Resumed,
        Retrying,
        Saved,
        Started,
        Stopping,
        StopReason,
        Submitted,
        Unreachable,
        WebhooksSilent,
        WindowChanged,
    )
    from batchgen.running.runner import RunResult
    from batchgen.running.snapshot import RunEvent, Snapshot

_HOME = {
    "batchgen.api": "iter_index load_manifest plan read_failures read_index run run_sync",
    "batchgen.errors": "AccountLocked AuthError BatchgenError DiskFull JournalError ManifestError "
    "Problem UsageError",
    "batchgen.manifest": "Manifest",
    "batchgen.planning.summary": "PlanSummary",
    "batchgen.running.runner": "RunResult",
    "batchgen.running.snapshot": "RunEvent Snapshot",
    "batchgen.running.events": "BudgetReached Failed Finished Planned Reachable Ready Requeued "
    "Resumed "
    "Retrying Saved Started Stopping StopReason Submitted Unreachable WebhooksSilent WindowChanged",
}
_WHERE = {name: module for module, names in _HOME.items() for name in names.split()}

__all__ = [
    "AccountLocked",
    "AuthError",
    "BatchgenError",
    "BudgetReached",
    "DiskFull",
    "Failed",
    "Finished",
    "JournalError",
    "Manifest",
    "ManifestError",
    "PlanSummary",
    "Planned",
    "Problem",
    "Reachable",
    "Ready",
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
    "Unreachable",
    "UsageError",
    "WebhooksSilent",
    "WindowChanged",
    "__version__",
    "iter_index",
    "load_manifest",
    "plan",
    "read_failures",
    "read_index",
    "run",
    "run_sync",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'batchgen' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
