"""The SSE status stream: one event per change, keep-alives, closed after COMPLETED."""

from __future__ import annotations

import json

from conftest import MakeClient
from emu_helpers import T2I, FakeClock, stats, submit

HIGH = {"prompt": "a castle", "quality": "high", "image_size": "square_hd"}


def events(text: str) -> tuple[list[dict[str, object]], int]:
    data = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    keepalives = sum(1 for line in text.splitlines() if line.startswith(":"))
    return data, keepalives


async def test_stream_reports_each_change_and_ends_after_completed(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client, _ = await make_client(concurrency_limit=1, keepalive_s=15.0)
    await submit(client, HIGH)  # occupies the only slot for ~30 s
    h = await submit(client, {**HIGH, "prompt": "second"})
    r = await client.get(f"{h['status_url']}/stream", params={"logs": "1"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    data, keepalives = events(r.text)
    assert [(d["status"], d.get("queue_position")) for d in data] == [
        ("IN_QUEUE", 0),
        ("IN_PROGRESS", None),
        ("COMPLETED", None),
    ]
    assert isinstance(data[-1]["logs"], list)
    # ~60 s of model time with nothing else happening: keep-alives every 15 s in between.
    assert keepalives >= 2
    s = await stats(client)
    assert (s["stream_connections"], s["stream_events"]) == (1, 3)


async def test_stream_of_a_finished_request_sends_one_event(make_client: MakeClient) -> None:
    client, _ = await make_client(time_scale=0)
    h = await submit(client, HIGH)
    r = await client.get(f"{h['status_url']}/stream")
    data, _ = events(r.text)
    assert [d["status"] for d in data] == ["COMPLETED"]
    assert data[0]["logs"] is None


async def test_stream_of_unknown_request_is_404(make_client: MakeClient) -> None:
    client, _ = await make_client()
    r = await client.get(f"{T2I}/requests/nope/status/stream")
    assert r.status_code == 404
