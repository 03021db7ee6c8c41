"""Job identity and the job state rules."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchgen.planning.jobs import (
    InvalidTransition,
    JobSpec,
    JobState,
    check_transition,
    job_id,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
requests = st.dictionaries(st.text(min_size=1, max_size=8), json_values, max_size=6)


def shuffled(value: Any, rng: random.Random) -> Any:
    """The same JSON value with every mapping's keys in another order."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: shuffled(v, rng) for k, v in items}
    if isinstance(value, list):
        return [shuffled(v, rng) for v in value]
    return value


@given(requests, st.integers(0, 50), st.randoms())
def test_job_id_is_independent_of_key_order(
    request: dict[str, Any], variant: int, rng: random.Random
) -> None:
    assert job_id("e", request, variant) == job_id("e", shuffled(request, rng), variant)


@given(requests)
def test_job_id_ignores_secrets_but_not_variant_or_endpoint(request: dict[str, Any]) -> None:
    base = job_id("e", request, 0)
    assert job_id("e", {**request, "openai_api_key": "sk-secret"}, 0) == base
    assert job_id("e", request, 1) != base
    assert job_id("f", request, 0) != base
    assert len(base) == 64 and int(base, 16) >= 0


def test_job_id_changes_with_any_input_value() -> None:
    a = job_id("e", {"prompt": "a fox", "quality": "low"}, 0)
    assert a != job_id("e", {"prompt": "a fox", "quality": "high"}, 0)
    assert a != job_id("e", {"prompt": "a fox ", "quality": "low"}, 0)


def test_spec_round_trips_through_json() -> None:
    spec = JobSpec(
        job_id="ab" * 32,
        endpoint="openai/gpt-image-2",
        input={"prompt": "a", "num_images": 3},
        variant=2,
        prompt_id="p",
        prompt="a",
        vars={"x": "1"},
        tags={"t": ""},
        source="m.yaml:3",
        byok=True,
    )
    assert JobSpec.from_json(spec.to_json()) == spec
    assert spec.short_id == "ab" * 8
    assert spec.num_images == 3
    assert JobSpec(job_id="x", endpoint="e", input={"num_images": "3"}).num_images == 1


# The state rules (docs/interfaces.md, Job states; DOWNLOADED -> COMPLETED when its files are
# missing or broken on disk (fetched again from the kept result), -> PENDING when the result
# or its emulator is gone; FAILED -> COMPLETED when only the download failed: the result
# is kept and fetched again, never paid for twice), written out here rather than read from
# TRANSITIONS: a test that loops over the table it checks passes whatever the table says.
ALLOWED = """
PENDING     SUBMITTING FAILED
SUBMITTING  QUEUED UNKNOWN PENDING FAILED
UNKNOWN     QUEUED PENDING FAILED
QUEUED      RUNNING COMPLETED PENDING FAILED
RUNNING     COMPLETED PENDING FAILED
COMPLETED   DOWNLOADED PENDING FAILED
DOWNLOADED  PENDING COMPLETED
FAILED      PENDING COMPLETED
"""
EXPECTED = {
    JobState[old]: {JobState[n] for n in news}
    for old, *news in (line.split() for line in ALLOWED.strip().splitlines())
}


@pytest.mark.parametrize("new", list(JobState))
@pytest.mark.parametrize("old", list(JobState))
def test_transitions_follow_the_written_table(old: JobState, new: JobState) -> None:
    assert set(EXPECTED) == set(JobState)  # a new state needs a line here
    if new in EXPECTED[old]:
        check_transition(old, new)
    else:
        with pytest.raises(InvalidTransition):
            check_transition(old, new)


def test_a_submitted_job_is_never_sent_back_to_submitting_directly() -> None:
    # QUEUED/RUNNING jobs exist on fal: they are re-attached, never resubmitted.
    for state in (JobState.QUEUED, JobState.RUNNING):
        with pytest.raises(InvalidTransition):
            check_transition(state, JobState.SUBMITTING)
