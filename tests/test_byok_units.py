"""BYOK, the pure parts: which jobs carry the key, the settings check, the token prices."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchgen.config import build_settings
from batchgen.errors import AuthError, QueueHTTPError, UsageError
from batchgen.fal import Endpoints, QueueClient
from batchgen.fal.auth import FalKey, OpenAIKey, openai_key_from_env, redact_all
from batchgen.fal.byok import (
    KEY_FIELD,
    base_endpoint,
    is_byok_endpoint,
    manifest_wants_key,
    submit_input,
)
from batchgen.manifest import load_manifest
from batchgen.planning.jobs import JobSpec, job_id
from batchgen.planning.pricing import ActualCost, Tokens, actual_cost, parse_usage, token_cost
from batchgen.retry import classify
from batchgen.running.runlog import RunLog

KEY = "sk-proj-abcdef0123456789SECRET"


def spec(endpoint: str = "openai/gpt-image-2", byok: bool = False) -> JobSpec:
    inp = {"prompt": "a fox"}
    return JobSpec(job_id=job_id(endpoint, inp, 0), endpoint=endpoint, input=inp, byok=byok)


# ---------------------------------------------------------------------------- endpoint ids


@pytest.mark.parametrize(
    ("endpoint", "byok", "base"),
    [
        ("openai/gpt-image-2", False, "openai/gpt-image-2"),
        ("openai/gpt-image-2/edit", False, "openai/gpt-image-2/edit"),
        ("openai/gpt-image-2/byok", True, "openai/gpt-image-2"),
        ("openai/gpt-image-2/byok/edit", True, "openai/gpt-image-2/edit"),
        ("/openai/gpt-image-2/edit/byok/", True, "openai/gpt-image-2/edit"),
        ("acme/byoknot", False, "acme/byoknot"),  # a segment, not a substring
    ],
)
def test_a_byok_segment_names_a_byok_endpoint(endpoint: str, byok: bool, base: str) -> None:
    assert is_byok_endpoint(endpoint) is byok
    assert base_endpoint(endpoint) == base


def test_the_key_joins_the_body_only_for_byok_jobs_and_never_the_spec() -> None:
    key = OpenAIKey(KEY)
    plain = spec()
    assert submit_input(plain, key) is plain.input
    for s in (spec(byok=True), spec("openai/gpt-image-2/byok")):
        body = submit_input(s, key)
        assert body[KEY_FIELD] == KEY and body["prompt"] == "a fox"
        assert KEY_FIELD not in s.input  # the spec (what the journal stores) is untouched
        assert KEY not in str(s.to_json())
    # the key is not part of the job id: the same job with or without it
    assert job_id(plain.endpoint, {**plain.input, KEY_FIELD: KEY}, 0) == plain.job_id


def test_a_byok_job_without_a_key_fails_with_the_one_line_message() -> None:
    with pytest.raises(UsageError, match="OPENAI_API_KEY is not set"):
        submit_input(spec(byok=True), None)


@pytest.mark.parametrize(
    ("text", "suffix", "wants"),
    [
        ("prompts: [a fox]\n", ".yaml", False),
        ("byok: true\nprompts: [a fox]\n", ".yaml", True),
        ("model: openai/gpt-image-2/byok\nprompts: [a fox]\n", ".yaml", True),
        ('{"endpoint": "openai/gpt-image-2/byok", "input": {"prompt": "a"}}\n', ".jsonl", True),
        ('{"input": {"prompt": "a"}}\n', ".jsonl", False),
        ("prompt,model\na fox,openai/gpt-image-2/byok\n", ".csv", True),
    ],
)
def test_which_manifests_need_the_key(tmp_path: Path, text: str, suffix: str, wants: bool) -> None:
    path = tmp_path / f"m{suffix}"
    path.write_text(text)
    assert manifest_wants_key(load_manifest(path)) is wants


# ---------------------------------------------------------------------------- key and settings


def test_openai_key_is_read_from_the_given_environ_and_never_shows() -> None:
    assert openai_key_from_env({}) is None
    assert openai_key_from_env({"OPENAI_API_KEY": "  "}) is None
    key = openai_key_from_env({"OPENAI_API_KEY": f" {KEY} "})
    assert key is not None and key.reveal() == KEY
    for text in (repr(key), str(key), f"{key}", repr([key])):
        assert "SECRET" not in text
    assert key.redact(f"got {KEY}!") == "got ***!"
    with pytest.raises(TypeError):
        pickle.dumps(key)
    assert key != FalKey(KEY)  # two kinds of key never compare equal
    with pytest.raises(AuthError, match="OPENAI_API_KEY") as err:
        OpenAIKey("sk-a b")
    assert "sk-a" not in str(err.value)


def settings(env: dict[str, str], byok: bool, folder: Path) -> Any:
    # --endpoint: the fal key from the environment is used (--emulate would swap in a dummy)
    path = folder / "m.yaml"
    path.write_text(f"byok: {'true' if byok else 'false'}\nprompts: [a red fox]\n")
    return build_settings({"endpoint": "http://127.0.0.1:9"}, env, load_manifest(path))


def test_a_byok_manifest_needs_the_key_before_anything_else(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as err:
        settings({}, byok=True, folder=tmp_path)
    assert err.value.exit_code == 2
    assert str(err.value).count("\n") == 0 and "OPENAI_API_KEY is not set" in str(err.value)
    # not BYOK: the key is not even read
    assert settings({"OPENAI_API_KEY": KEY}, byok=False, folder=tmp_path).openai_key is None


def test_settings_hold_the_key_redacted_and_public_leaves_it_out(tmp_path: Path) -> None:
    s = settings(
        {"OPENAI_API_KEY": KEY, "FAL_KEY": "fal-abc:0123456789"}, byok=True, folder=tmp_path
    )
    assert s.openai_key == OpenAIKey(KEY)
    assert KEY not in repr(s) and "SECRET" not in str(s.public())
    assert s.redact(f"{KEY} and {s.key.reveal()}") == "*** and ***"


# ---------------------------------------------------------------------------- token prices


@pytest.mark.parametrize(
    ("usage", "usd"),
    [
        # 1M of each kind at fal's prices: text in $5, image in $8, image out $30
        ({"input_tokens": 1_000_000, "output_tokens": 0}, 5.0),
        (
            {
                "input_tokens": 1_000_000,
                "input_tokens_details": {"image_tokens": 1_000_000, "text_tokens": 0},
                "output_tokens": 0,
            },
            8.0,
        ),
        ({"input_tokens": 0, "output_tokens": 1_000_000}, 30.0),
        (
            {
                "input_tokens": 1_040,
                "input_tokens_details": {"text_tokens": 40, "image_tokens": 1_000},
                "output_tokens": 5_000,
                "total_tokens": 6_040,
            },
            40 * 5e-6 + 1_000 * 8e-6 + 5_000 * 30e-6,
        ),
        ({"input_tokens": 10, "output_tokens": -5}, 10 * 5e-6),  # nonsense counts are 0
        ({"input_tokens": True, "output_tokens": 2.5}, 0.0),
        ({"total_tokens": 100}, 0.0),  # no counts fal prices
        ({}, 0.0),
    ],
)
def test_token_cost(usage: dict[str, Any], usd: float) -> None:
    assert token_cost(usage) == pytest.approx(usd)


def test_parse_usage_tells_counts_from_anything_else() -> None:
    assert parse_usage(None) is None and parse_usage({"total_tokens": 3}) is None
    assert parse_usage({"input_tokens": 0, "output_tokens": 0}) == Tokens(0, 0, 0)


def test_actual_cost_sums_jobs_and_images_with_usage() -> None:
    u = {"input_tokens": 0, "output_tokens": 1_000}
    got = actual_cost([(u, 2), ({"other": 1}, 4), (u, 1)])
    assert got == ActualCost(usd=pytest.approx(0.06), jobs=2, images=3)
    assert actual_cost([]) == ActualCost(0.0, 0, 0)


# ---------------------------------------------------------------------------- scrubbing


def test_the_run_log_masks_both_keys(tmp_path: Path) -> None:
    s = settings(
        {"OPENAI_API_KEY": KEY, "FAL_KEY": "fal-abc:0123456789"}, byok=True, folder=tmp_path
    )
    log = RunLog(tmp_path, redact=s.redact)
    log.write(f"failed: server said {KEY} / Key fal-abc:0123456789")
    log.close()
    text = (tmp_path / "run.log").read_text()
    assert KEY not in text and "0123456789" not in text and text.count("***") == 2
    # the fal secret half is inside the OpenAI key: masking it first would leave the rest
    assert "abcdef" not in text and "SECRET" not in text


async def test_queue_errors_are_scrubbed_before_anyone_reads_them() -> None:
    fal = FalKey("fal-abc:0123456789")
    openai = OpenAIKey(KEY)

    def echo(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        detail = [{"loc": ["body"], "msg": f"bad request {body}", "input": body}]
        return httpx.Response(422, json={"detail": detail}, headers={"x-fal-request-id": "r1"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(echo)) as http:
        plain = QueueClient(http, endpoints=Endpoints.single("http://fal.test"), key=fal)
        both = QueueClient(
            http,
            endpoints=Endpoints.single("http://fal.test"),
            key=fal,
            redact=lambda t: redact_all(t, fal, openai),
        )
        body = {"prompt": "a", KEY_FIELD: KEY, "note": fal.reveal()}
        with pytest.raises(QueueHTTPError) as err:
            await plain.submit("openai/gpt-image-2", body)
        assert fal.reveal() not in f"{err.value} {err.value.detail}"  # our own key, always
        assert "abcdef" in str(err.value.detail)  # without being told, it cannot know the other
        with pytest.raises(QueueHTTPError) as err:
            await both.submit("openai/gpt-image-2", body)
        text = f"{err.value} {err.value.detail} {classify(err.value, op='submit').message}"
        assert KEY not in text and fal.reveal() not in text and "***" in text
