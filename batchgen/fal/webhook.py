"""fal's webhook deliveries: what a body says, and whether fal really sent it.

A delivery is ``POST <our URL>`` with ``{"request_id", "gateway_request_id", "status": "OK" |
"ERROR", "payload", "error"?, "payload_error"?}`` (from fal's docs: docs/fal.md, Webhooks).
It is signed with Ed25519 over ``"{request_id}\\n{user_id}\\n{timestamp}\\n{sha256 hex of the
raw body}"``, carried in ``X-Fal-Webhook-Request-Id``, ``-User-Id``, ``-Timestamp`` (unix
seconds) and ``-Signature`` (hex). The public keys are a JWKS document at fal's rest host
(``/.well-known/jwks.json``; keys ``kty: OKP``, ``crv: Ed25519``, ``x`` in base64url). The
signing scheme is inferred from five independent implementations, not from fal's own text:
docs/webhooks.md says which parts are confirmed.

``Verifier`` fetches the keys once, keeps them, and fetches them again (at most once a
ten seconds) when no key it has checks a signature, since fal may rotate its key. A delivery is
refused (``WebhookRefused``) when a header is missing, the timestamp is more than five
minutes off, or no key verifies it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from batchgen.errors import ProtocolError, QueueHTTPError

TOLERANCE_S = 300.0
REFETCH_EVERY_S = 10.0  # a flood of forged deliveries costs at most one fetch this often
HEADERS = (
    "x-fal-webhook-request-id",
    "x-fal-webhook-user-id",
    "x-fal-webhook-timestamp",
    "x-fal-webhook-signature",
)


class WebhookRefused(Exception):
    """Not a delivery fal signed: answered 401 and recorded, never acted on."""


@dataclass(frozen=True, slots=True)
class Delivery:
    request_id: str
    ok: bool
    payload: dict[str, Any] | None  # the result (OK) or the error body (ERROR)
    error: str | None = None
    payload_error: str | None = None  # fal could not serialise the payload: fetch it instead

    def failure(self) -> QueueHTTPError:
        """An ERROR delivery as the error the result GET would have raised, so the same
        ``classify`` decides what it means (``Invalid status code: 422`` -> 422, ...)."""
        text = self.error or ""
        digits = text.rsplit(":", 1)[-1].strip()
        status = int(digits) if digits.isdigit() else 500
        body = self.payload or {}
        return QueueHTTPError(
            status,
            detail=body.get("detail", text),
            error_type=body.get("error_type") if isinstance(body.get("error_type"), str) else None,
            request_id=self.request_id,
        )


def parse_delivery(raw: bytes) -> Delivery:
    try:
        body = json.loads(raw)
    except ValueError:
        raise ProtocolError("a webhook delivery that is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("request_id"), str):
        raise ProtocolError("a webhook delivery without a request_id")
    payload = body.get("payload")
    error, payload_error = body.get("error"), body.get("payload_error")
    return Delivery(
        request_id=body["request_id"],
        ok=body.get("status") == "OK",
        payload=payload if isinstance(payload, dict) else None,
        error=error if isinstance(error, str) else None,
        payload_error=payload_error if isinstance(payload_error, str) else None,
    )


def signed_message(request_id: str, user_id: str, timestamp: str, raw: bytes) -> bytes:
    digest = hashlib.sha256(raw).hexdigest()
    return f"{request_id}\n{user_id}\n{timestamp}\n{digest}".encode()


def public_keys(jwks: Any) -> list[Ed25519PublicKey]:
    """The Ed25519 keys of a JWKS document (others are skipped)."""
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    out = []
    for k in keys if isinstance(keys, list) else []:
        if not (isinstance(k, dict) and k.get("kty") == "OKP" and k.get("crv") == "Ed25519"):
            continue
        x = k.get("x")
        try:
            raw = base64.urlsafe_b64decode(str(x) + "=" * (-len(str(x)) % 4))
            out.append(Ed25519PublicKey.from_public_bytes(raw))
        except (ValueError, binascii.Error):
            continue
    return out


class Verifier:
    def __init__(
        self,
        fetch_jwks: Callable[[], Awaitable[Any]],
        *,
        clock: Callable[[], float] = time.time,
        tolerance: float = TOLERANCE_S,
    ) -> None:
        self._fetch = fetch_jwks
        self._clock = clock
        self._tolerance = tolerance
        self._keys: list[Ed25519PublicKey] | None = None
        self._fetched_at = float("-inf")

    async def verify(self, headers: Mapping[str, str], raw: bytes) -> str:
        """The delivery's request id, once its signature checks; else ``WebhookRefused``."""
        lower = {k.lower(): v for k, v in headers.items()}  # HTTP header names have no case
        got = {h: lower.get(h) for h in HEADERS}
        missing = [h for h, v in got.items() if not v]
        if missing:
            raise WebhookRefused(f"unsigned delivery (no {', '.join(missing)})")
        request_id, user_id, stamp, signature = (str(got[h]) for h in HEADERS)
        try:
            skew = abs(self._clock() - float(stamp))
            sig = bytes.fromhex(signature)
        except ValueError:
            raise WebhookRefused("a malformed timestamp or signature") from None
        if skew > self._tolerance:
            raise WebhookRefused(f"timestamp {skew:.0f} s off (more than {self._tolerance:g} s)")
        message = signed_message(request_id, user_id, stamp, raw)
        if self._keys is not None and _any_verifies(self._keys, sig, message):
            return request_id
        # Unknown to the keys we have: fal may have rotated its key since we fetched them.
        if not await self._refresh() or not _any_verifies(self._keys or [], sig, message):
            raise WebhookRefused("the signature matches none of fal's public keys")
        return request_id

    async def _refresh(self) -> bool:
        """Fetch the keys again (first use, or a key fal rotated), at most every 10 s."""
        now = self._clock()
        if now - self._fetched_at < REFETCH_EVERY_S and self._keys is not None:
            return False
        self._fetched_at = now
        try:
            self._keys = public_keys(await self._fetch())
        except Exception as exc:  # cannot check: refuse now, fal delivers again later
            raise WebhookRefused(f"fal's public keys could not be fetched: {exc}") from exc
        return True


def _any_verifies(keys: list[Ed25519PublicKey], sig: bytes, message: bytes) -> bool:
    for key in keys:
        try:
            key.verify(sig, message)
            return True
        except InvalidSignature:
            continue
    return False
