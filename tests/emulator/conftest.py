"""Fixtures for the emulator's tests: a fake clock and an in-process client factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from emu_helpers import AUTH, FakeClock
from starlette.applications import Starlette

from batchgen.emulator import EmulatorConfig, create_app


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


MakeClient = Callable[..., Awaitable[tuple[httpx.AsyncClient, Starlette]]]


@pytest.fixture
async def make_client(clock: FakeClock) -> AsyncIterator[MakeClient]:
    """``await make_client(**config)`` -> (client with auth, app), on the fake clock."""
    clients: list[httpx.AsyncClient] = []

    async def make(**kw: Any) -> tuple[httpx.AsyncClient, Starlette]:
        kw.setdefault("clock", clock)
        kw.setdefault("sleep", clock.sleep)
        app = create_app(EmulatorConfig(**kw))
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://emulator", headers=AUTH
        )
        clients.append(client)
        return client, app

    yield make
    for c in clients:
        await c.aclose()
