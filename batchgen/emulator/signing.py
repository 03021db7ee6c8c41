"""The emulator signs its webhook deliveries as fal does (docs/webhooks.md): Ed25519 over
``"{request_id}\\n{user_id}\\n{timestamp}\\n{sha256 hex of the body}"``, its public key served
as a JWKS document at ``/.well-known/jwks.json``. A key is made per emulator, so a client that
verifies against it proves it really checks signatures."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from batchgen.fal.webhook import signed_message

USER_ID = "emulator-user"


class Signer:
    def __init__(
        self, key: Ed25519PrivateKey | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self._key = key or Ed25519PrivateKey.generate()
        self._clock = clock

    def jwks(self) -> dict[str, object]:
        raw = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "emulator", "use": "sig"}]}

    def headers(self, request_id: str, raw: bytes, *, forged: bool = False) -> dict[str, str]:
        stamp = str(int(self._clock()))
        signature = self._key.sign(signed_message(request_id, USER_ID, stamp, raw))
        if forged:  # what a stranger posting to the receiver would send: a wrong signature
            signature = bytes(b ^ 0xFF for b in signature)
        return {
            "X-Fal-Webhook-Request-Id": request_id,
            "X-Fal-Webhook-User-Id": USER_ID,
            "X-Fal-Webhook-Timestamp": stamp,
            "X-Fal-Webhook-Signature": signature.hex(),
        }
