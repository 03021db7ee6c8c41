"""The account's credit, as the emulator models it: a number of requests it can pay for.

fal locks an account whose balance ran out: every new request is refused with 403 "User is
locked. Reason: Exhausted balance..." while the requests it had already accepted go on
running (docs/fal.md, Errors). ``EmulatorConfig.credit`` (``batchgen emulator --credit N``)
sets how many submits the account pays for; ``POST /_emulator/credit?requests=N`` tops it up
(or ``requests=`` with nothing: no limit), so a rehearsal can show a run stopped by a locked
account and the same command going on after the top-up.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

# fal's words, as reported for a locked account.
LOCKED_DETAIL = (
    "User is locked. Reason: Exhausted balance. Top up your balance at fal.ai/dashboard/billing"
)


class Credit:
    def __init__(self, requests: int | None) -> None:
        self.left = requests  # None: no limit

    def pay(self) -> bool:
        """One submit paid for; False when the account is locked."""
        if self.left is None:
            return True
        if self.left <= 0:
            return False
        self.left -= 1
        return True


def locked() -> Response:
    return JSONResponse({"detail": LOCKED_DETAIL}, status_code=403)


async def top_up(request: Request) -> Response:
    """``POST /_emulator/credit?requests=N``: the account can pay for N more requests."""
    credit: Credit = request.app.state.credit
    given = request.query_params.get("requests", "")
    if given and not given.isdigit():
        return JSONResponse({"detail": "requests must be a whole number"}, status_code=422)
    credit.left = int(given) if given else None
    return JSONResponse({"requests": credit.left})
