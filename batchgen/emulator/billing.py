"""What the emulator bills: one charge per request that ran to completion successfully.

fal bills a request when it delivers its output (docs/fal.md, The result: "5xx outcomes are not
billed; a 422 may be"; a start timeout is not billed). The emulator takes the certain side of
that and bills exactly what batchgen's journal counts as charged (``journal.schema.charges``):
a successful completion, billed whether or not anyone fetched the result (a lost result was
paid for). Everything else bills nothing: invalid input (its result says
``x-fal-billable-units: 0``), a content-policy refusal, a runner error, a start timeout, and a
cancel, queued or running (the emulated app stops at once and delivers nothing).

The price is fal's published per-image table (``planning.pricing``) times ``num_images``, for
the endpoint id the request was posted to; an endpoint the table does not price (a BYOK id with
its ``byok`` segment, another model) is billed $0, as the plan estimates it.
"""

from __future__ import annotations

from dataclasses import dataclass

from batchgen.emulator.request import Outcome, Request
from batchgen.planning import gptimage
from batchgen.planning.pricing import DEFAULT_TABLE

NANO = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Charge:
    """One billing event: ``units`` images at ``unit_price`` USD each."""

    request_id: str
    endpoint_id: str
    at: float  # model time of the completion
    units: int
    unit_price: float

    @property
    def nano_usd(self) -> int:
        return round(self.units * self.unit_price * NANO)

    @property
    def usd(self) -> float:
        return self.nano_usd / NANO


def charge(req: Request) -> Charge | None:
    """The charge for a completed request, or None when fal bills nothing for it."""
    if req.outcome is not Outcome.OK or req.completed_at is None:
        return None
    spec = gptimage.with_defaults(req.endpoint, req.input)
    price, _ = DEFAULT_TABLE.per_image(req.endpoint, spec.get("image_size"), spec.get("quality"))
    units = spec.get("num_images", 1)
    units = units if isinstance(units, int) and not isinstance(units, bool) and units > 0 else 1
    return Charge(req.id, req.endpoint, req.completed_at, units, price)
