"""API keys: where they come from, and wrappers that never print them.

fal-client looks for ``FAL_KEY``, then ``FAL_KEY_ID`` + ``FAL_KEY_SECRET`` (sent as
``id:secret``). batchgen reads the same two, from an ``environ`` mapping passed in, so tests
never touch the process environment. The key lives in a ``FalKey`` whose ``repr``/``str`` are
redacted: it can sit in a dataclass, a log record or a traceback's locals without leaking.

A "bring your own key" run also needs ``OPENAI_API_KEY``: it is held as an ``OpenAIKey``,
the same kind of wrapper, and only ``byok.submit_input`` takes it out (into the request body,
at submit time).
"""

from __future__ import annotations

from collections.abc import Mapping

from batchgen.errors import AuthError

_MASK = "***"


class Secret:
    """A credential. ``reveal()`` is the only way out; ``repr``/``str`` show ``***``."""

    __slots__ = ("_value",)
    _what, _env = "the key", "the environment"

    def __init__(self, value: str) -> None:
        value = value.strip()
        if not value:
            raise AuthError(f"{self._what} is empty")
        # A CR/LF or space would let the value break out of its header line.
        if any(c.isspace() for c in value):
            raise AuthError(f"{self._what} contains whitespace; check {self._env}")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def redact(self, text: str) -> str:
        """``text`` with every copy of the key (and of its secret half) masked."""
        return redact_all(text, self)

    def fragments(self) -> list[str]:
        """The texts to mask: the key, and the secret half of an ``id:secret`` pair."""
        _, sep, secret = self._value.partition(":")
        return [self._value, secret] if sep and len(secret) >= 8 else [self._value]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({_MASK!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        # A fal key never equals an OpenAI key, even with the same text.
        return type(other) is type(self) and other._value == self._value

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._value))

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would write the key to disk in the clear; nothing in batchgen needs it.
        raise TypeError(f"a {type(self).__name__} is not picklable")


def redact_all(text: str, *secrets: Secret | None) -> str:
    """``text`` with every fragment of every secret masked, longest first: masking a short
    one first could cut a longer key that contains it and leave the rest of it readable."""
    fragments = sorted({f for s in secrets if s is not None for f in s.fragments()}, key=len)
    for fragment in reversed(fragments):
        text = text.replace(fragment, _MASK)
    return text


class FalKey(Secret):
    """The fal key. ``header`` is the Authorization value."""

    __slots__ = ()
    _what, _env = "the fal key", "FAL_KEY"

    @property
    def header(self) -> str:
        return f"Key {self._value}"


class OpenAIKey(Secret):
    """The user's OpenAI key for BYOK requests: sent in the request body (the
    ``openai_api_key`` input field) at submit time, never written anywhere."""

    __slots__ = ()
    _what, _env = "the OpenAI key", "OPENAI_API_KEY"


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


def openai_key_from_env(environ: Mapping[str, str]) -> OpenAIKey | None:
    """``OPENAI_API_KEY`` (stripped), or None when it is unset or blank."""
    value = environ.get("OPENAI_API_KEY", "").strip()
    return OpenAIKey(value) if value else None
