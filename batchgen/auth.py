"""The fal API key: where it comes from, and a wrapper that never prints it.

fal-client looks for ``FAL_KEY``, then ``FAL_KEY_ID`` + ``FAL_KEY_SECRET`` (sent as
``id:secret``). batchgen reads the same two, from an ``environ`` mapping passed in, so tests
never touch the process environment. The key lives in a ``FalKey`` whose ``repr``/``str`` are
redacted: it can sit in a dataclass, a log record or a traceback's locals without leaking.
"""

from __future__ import annotations

from collections.abc import Mapping

from .errors import AuthError

_MASK = "***"


class FalKey:
    """An API key. ``header`` is the Authorization value; ``reveal()`` is the only way out."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        value = value.strip()
        if not value:
            raise AuthError("the fal key is empty")
        # A CR/LF or space would let the value break out of its header line.
        if any(c.isspace() for c in value):
            raise AuthError("the fal key contains whitespace; check FAL_KEY")
        self._value = value

    @property
    def header(self) -> str:
        return f"Key {self._value}"

    def reveal(self) -> str:
        return self._value

    def redact(self, text: str) -> str:
        """``text`` with every copy of the key (and of its secret half) masked."""
        out = text.replace(self._value, _MASK)
        _, sep, secret = self._value.partition(":")
        if sep and len(secret) >= 8:
            out = out.replace(secret, _MASK)
        return out

    def __repr__(self) -> str:
        return f"FalKey({_MASK!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FalKey) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("FalKey", self._value))

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would write the key to disk in the clear; nothing in batchgen needs it.
        raise TypeError("a FalKey is not picklable")


def key_from_env(environ: Mapping[str, str]) -> FalKey | None:
    """``FAL_KEY``, else ``FAL_KEY_ID:FAL_KEY_SECRET``, else None (the emulator needs none)."""
    key = environ.get("FAL_KEY", "").strip()
    if key:
        return FalKey(key)
    key_id = environ.get("FAL_KEY_ID", "").strip()
    secret = environ.get("FAL_KEY_SECRET", "").strip()
    if key_id and secret:
        return FalKey(f"{key_id}:{secret}")
    if key_id or secret:
        missing = "FAL_KEY_SECRET" if key_id else "FAL_KEY_ID"
        raise AuthError(f"FAL_KEY_ID and FAL_KEY_SECRET go together; {missing} is not set")
    return None
