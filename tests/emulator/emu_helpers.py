"""Helpers for the emulator's tests (a uniquely named module: conftest names collide)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

AUTH = {"Authorization": "Key test-id:test-secret"}
T2I = "/openai/gpt-image-2"


class FakeClock:
    """Model time that moves only when told to; ``sleep`` moves it and yields once."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


async def submit(
    client: httpx.AsyncClient, body: dict[str, Any], path: str = T2I
) -> dict[str, Any]:
    r = await client.post(path, json=body)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


async def stats(client: httpx.AsyncClient) -> dict[str, Any]:
    data: dict[str, Any] = (await client.get("/_emulator/stats")).json()
    return data
