"""The emulator's public API, as docs/interfaces.md pins it for the other modules."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from starlette.applications import Starlette

import batchgen.emulator as emulator
from batchgen.emulator import EmulatorConfig, FaultSpec, QueueModel, create_app


def test_public_names() -> None:
    assert set(emulator.__all__) >= {"EmulatorConfig", "create_app", "serve", "FaultSpec"}
    for name in emulator.__all__:
        assert hasattr(emulator, name)


def test_config_defaults() -> None:
    c = EmulatorConfig()
    assert (c.concurrency_limit, c.time_scale, c.seed, c.public_url) == (40, 1.0, 0, None)
    assert c.clock is time.monotonic
    assert c.sleep is asyncio.sleep
    assert c.faults == FaultSpec()
    names = {f.name for f in dataclasses.fields(EmulatorConfig)}
    assert names >= {"concurrency_limit", "time_scale", "faults", "seed", "clock", "public_url"}


def test_faults_may_be_given_as_text() -> None:
    assert EmulatorConfig(faults="truncate=0.5").fault_spec == FaultSpec(truncate=0.5)


def test_create_app_exposes_the_model() -> None:
    app = create_app(EmulatorConfig(concurrency_limit=3))
    assert isinstance(app, Starlette)
    assert isinstance(app.state.emulator, QueueModel)
    assert app.state.emulator.limit == 3
    assert app.state.emulator.stats()["submits_accepted"] == 0
