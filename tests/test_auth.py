"""fal/auth.py: the key comes from the given environ, and never shows when printed."""

from __future__ import annotations

import pickle

import pytest

from batchgen.errors import AuthError
from batchgen.fal.auth import FalKey, key_from_env

SECRET = "abc123:s3cr3t-value-xyz"


def test_fal_key_wins() -> None:
    key = key_from_env({"FAL_KEY": " k1 ", "FAL_KEY_ID": "id", "FAL_KEY_SECRET": "sec"})
    assert key is not None
    assert key.header == "Key k1"


def test_id_and_secret_are_joined_like_fal_client() -> None:
    key = key_from_env({"FAL_KEY_ID": "id", "FAL_KEY_SECRET": "sec"})
    assert key is not None
    assert key.header == "Key id:sec"


def test_no_key_is_none() -> None:
    assert key_from_env({}) is None
    assert key_from_env({"FAL_KEY": "  "}) is None


@pytest.mark.parametrize("env", [{"FAL_KEY_ID": "id"}, {"FAL_KEY_SECRET": "sec"}])
def test_half_a_pair_is_an_error_naming_the_missing_half(env: dict[str, str]) -> None:
    with pytest.raises(AuthError, match=r"FAL_KEY_(ID|SECRET) is not set") as err:
        key_from_env(env)
    assert "sec" not in str(err.value).replace("SECRET", "")


def test_a_key_that_could_break_a_header_is_refused() -> None:
    with pytest.raises(AuthError) as err:
        FalKey("abc\r\nX-Evil: 1")
    assert "Evil" not in str(err.value)


def test_the_key_never_shows_in_repr_str_or_format() -> None:
    key = FalKey(SECRET)
    for text in (repr(key), str(key), f"{key}", repr([key]), repr({"k": key})):
        assert "s3cr3t" not in text
        assert "abc123" not in text
    assert key.reveal() == SECRET


def test_redact_masks_the_key_and_its_secret_half() -> None:
    key = FalKey(SECRET)
    line = f"header Key {SECRET} then s3cr3t-value-xyz alone"
    assert key.redact(line) == "header Key *** then *** alone"


def test_the_key_cannot_be_pickled_to_disk() -> None:
    with pytest.raises(TypeError):
        pickle.dumps(FalKey(SECRET))


def test_equality_compares_values_without_exposing_them() -> None:
    assert FalKey("a1") == FalKey("a1")
    assert FalKey("a1") != FalKey("a2")
    assert len({FalKey("a1"), FalKey("a1")}) == 1
