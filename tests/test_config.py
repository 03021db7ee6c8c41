"""Settings: flags over environment over manifest over defaults, in one function."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

from batchgen.config import (
    DUMMY_KEY,
    EMULATE_TIME_SCALE,
    Settings,
    Target,
    build_settings,
)
from batchgen.errors import AuthError, UsageError
from batchgen.manifest import Manifest, load_manifest
from batchgen.running.window import WatchMode

SECRET = "key-id-123:very-secret-value-456"


@pytest.fixture(autouse=True)
def _manifest(tmp_path: Path) -> None:
    global MANIFEST
    path = tmp_path / "demo.yaml"
    path.write_text("prompts: [a red fox]\n")
    MANIFEST = load_manifest(path)


MANIFEST: Manifest


def settings(env: dict[str, str] | None = None, **flags: Any) -> Settings:
    return build_settings(flags, env or {}, MANIFEST)


def test_defaults_against_real_fal() -> None:
    s = settings({"FAL_KEY": SECRET})
    assert s.target is Target.FAL
    assert s.endpoint is None
    assert s.out_dir == Path("outputs/demo")
    o = s.options
    assert o.concurrency is None  # auto
    assert o.max_attempts == 3
    assert o.deadline == 1200.0
    assert o.watch is WatchMode.STREAM
    assert o.download_concurrency == 32
    assert s.key.reveal() == SECRET


def test_missing_key_for_real_fal_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="FAL_KEY") as e:
        settings({})
    assert e.value.exit_code == 2


def test_key_id_and_secret() -> None:
    s = settings({"FAL_KEY_ID": "abc", "FAL_KEY_SECRET": "defghijk"})
    assert s.key.reveal() == "abc:defghijk"
    with pytest.raises(AuthError):
        settings({"FAL_KEY_ID": "abc"})


def test_key_never_printed() -> None:
    s = settings({"FAL_KEY": SECRET})
    for text in (repr(s), str(s), repr(s.public()), str(s.key)):
        assert SECRET not in text
        assert "very-secret" not in text
    with pytest.raises(TypeError):
        pickle.dumps(s)


def test_emulate_uses_a_dummy_key_and_fast_time() -> None:
    s = settings({"FAL_KEY": SECRET}, emulate=True)
    assert s.target is Target.EMULATE
    assert s.key.reveal() == DUMMY_KEY  # the real key never travels to the emulator
    assert s.time_scale == EMULATE_TIME_SCALE
    assert s.faults == "none"
    s = settings({}, emulate=True, time_scale=0.5, faults="flaky")
    assert (s.time_scale, s.faults) == (0.5, "flaky")


@pytest.mark.parametrize(
    ("flags", "env", "endpoint"),
    [
        ({"endpoint": "http://127.0.0.1:9/"}, {}, "http://127.0.0.1:9"),
        ({}, {"BATCHGEN_ENDPOINT": "http://h:1"}, "http://h:1"),
        ({"endpoint": "http://a:1"}, {"BATCHGEN_ENDPOINT": "http://b:2"}, "http://a:1"),
    ],
)
def test_endpoint_from_flag_or_environment(
    flags: dict[str, Any], env: dict[str, str], endpoint: str
) -> None:
    s = settings(env, **flags)
    assert s.target is Target.ENDPOINT
    assert s.endpoint == endpoint
    assert s.key.reveal() == DUMMY_KEY  # no key needed for one's own server


def test_emulate_wins_over_environment_endpoint() -> None:
    s = settings({"BATCHGEN_ENDPOINT": "http://h:1"}, emulate=True)
    assert s.target is Target.EMULATE
    assert s.endpoint is None


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        ({"endpoint": "ftp://x"}, "http"),
        ({"endpoint": "http://user:pw@h:1"}, "credentials"),
        ({"concurrency": "lots"}, "--concurrency"),
        ({"concurrency": "0"}, "--concurrency"),
        ({"max_attempts": 0}, "--max-attempts"),
        ({"deadline": 0}, "--deadline"),
        ({"max_cost": -1}, "--max-cost"),
        ({"max_cost": "nan"}, "--max-cost"),
        ({"download_concurrency": 0}, "--download-concurrency"),
        ({"download_concurrency": 100_000}, "--download-concurrency must be at most"),
        ({"faults": "flaky"}, "--emulate"),
        ({"time_scale": 0.1}, "--emulate"),
    ],
)
def test_bad_flags(flags: dict[str, Any], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        settings({"FAL_KEY": SECRET}, **flags)


def test_numbers_and_out() -> None:
    s = settings(
        {"FAL_KEY": SECRET},
        concurrency="7",
        max_cost=2.5,
        out="/tmp/x",
        watch="poll",
        retry_failed=True,
    )
    o = s.options
    assert (o.concurrency, o.max_cost, s.out_dir, o.watch) == (7, 2.5, Path("/tmp/x"), "poll")
    assert o.retry_failed
    assert s.public()["concurrency"] == 7
    assert settings({"FAL_KEY": SECRET}, concurrency="AUTO").options.concurrency is None


def test_a_bad_notify_url_from_the_environment_is_named_as_such() -> None:
    with pytest.raises(UsageError, match=r"^BATCHGEN_NOTIFY_URL must be an http") as e:
        settings({"FAL_KEY": SECRET, "BATCHGEN_NOTIFY_URL": "ftp://hooks/T0KEN-9"})
    assert "T0KEN" not in str(e.value)
