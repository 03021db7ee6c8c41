"""Where a request was made: the in-process emulator, a given ``--endpoint``, or fal.

Every job row records the origin of its requests (``jobs.origin``), so a run can tell work it
may count as done from work it may not:

* ``emulator``: the emulator ``--emulate`` starts inside its own process. Its images are
  placeholders and it billed nothing; its requests die with the process that made them.
* ``endpoint:<base URL>``: a fal-compatible server named by ``--endpoint``.
* ``emulator:<base URL>``: the same, when it answered the submit as batchgen's emulator does
  (``X-Batchgen-Emulator``): a rehearsal run against ``batchgen emulator``.
* ``fal``: fal itself, which bills.

A rehearsal is work of the emulator. It never counts as done for a run against another server,
and real work is never mixed with a rehearsal's (``running/recovery.py`` decides what happens).
"""

from __future__ import annotations

FAL = "fal"
EMULATOR = "emulator"
_ENDPOINT = "endpoint:"


def endpoint(base_url: str) -> str:
    return _ENDPOINT + base_url.rstrip("/")


def emulator_at(base_url: str) -> str:
    return EMULATOR + ":" + base_url.rstrip("/")


def of_target(target: str, endpoint_url: str | None) -> str:
    """The origin of a run's requests, from its settings (``Settings.target``: ``fal``,
    ``endpoint`` or ``emulate``, and ``Settings.endpoint``)."""
    if target == "emulate":
        return EMULATOR
    if target == "endpoint" and endpoint_url:
        return endpoint(endpoint_url)
    return FAL


def server_of(origin: str | None) -> str | None:
    """The server an origin's requests went to, as `batchgen reconcile` names it: ``fal``, an
    --endpoint server's base URL, or None (the in-process emulator, which no one can ask)."""
    if origin is None or origin == EMULATOR:
        return None
    if origin == FAL:
        return FAL
    return origin.split(":", 1)[1]


def is_rehearsal(origin: str | None) -> bool:
    """Work an emulator did: nothing billed, placeholder images."""
    return origin is not None and (origin == EMULATOR or origin.startswith(EMULATOR + ":"))


def describe(origin: str | None) -> str:
    """For messages: ``fal``, ``the emulator (--emulate)``, ``http://host:port``."""
    if origin is None:
        return "an unrecorded server"
    if origin == EMULATOR:
        return "the emulator (--emulate)"
    if origin.startswith(EMULATOR + ":"):
        return f"the emulator at {origin[len(EMULATOR) + 1 :]}"
    if origin.startswith(_ENDPOINT):
        return origin[len(_ENDPOINT) :]
    return origin
