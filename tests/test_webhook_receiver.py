"""The webhook receiver (docs/webhooks.md): deliveries are taken at the path of the URL fal is
given, whatever the user chose; everything else is refused and counted, a body past the cap
without being held whole; and a run whose deliveries never come says so, once."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_run_support import states, write_manifest
from test_scheduler_support import FastClock, Rig

from batchgen.cli import main
from batchgen.emulator.signing import Signer
from batchgen.fal.webhook import Verifier
from batchgen.journal.writer import JOURNAL_NAME, Journal
from batchgen.planning.jobs import JobState
from batchgen.running.events import WebhooksSilent
from batchgen.running.receiver import (
    DEFAULT_PATH,
    MAX_BODY,
    public_url,
    receive,
    receiver_app,
    served_path,
)
from batchgen.running.runlog import describe
from batchgen.running.webhooks import SILENT_AFTER_S, Inbox, Silence

S = JobState


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def delivery(rid: str = "r-1") -> bytes:
    return json.dumps({"request_id": rid, "status": "OK", "payload": {"images": []}}).encode()


class Receiving:
    """A receiver app serving the path of ``url``, with what it refused."""

    def __init__(self, url: str, signer: Signer, max_body: int = MAX_BODY) -> None:
        async def jwks() -> dict[str, Any]:
            return signer.jwks()

        self.inbox = Inbox()
        self.noted: list[str] = []
        app = receiver_app(
            self.inbox, Verifier(jwks), self.noted.append, path=served_path(url), max_body=max_body
        )
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r")


@pytest.mark.parametrize(
    ("given", "path"),
    [
        ("https://hooks.example.com/fal-webhook", "/fal-webhook"),
        ("https://hooks.example.com/fal-webhook/", "/fal-webhook"),
        ("https://hooks.example.com/a/b?token=x", "/a/b"),
        ("https://hooks.example.com", "/"),
        ("https://hooks.example.com/", "/"),
        ("https://hooks.example.com/?token=x", "/"),
        ("https://hooks.example.com/caf%C3%A9%20hook", "/café hook"),
    ],
)
def test_fal_is_given_the_url_as_typed_and_the_receiver_serves_its_path(
    given: str, path: str
) -> None:
    assert public_url(given, "http://127.0.0.1:8787") == given
    assert served_path(given) == path


@pytest.mark.parametrize(
    ("url", "post_to"),
    [
        ("http://r/fal-webhook", "/fal-webhook"),
        ("http://r/fal-webhook", "/fal-webhook/"),  # a proxy that adds a slash
        ("http://r/fal-webhook/", "/fal-webhook"),  # ...or drops it
        ("http://r/fal-webhook?token=t", "/fal-webhook?token=t"),
        ("http://r", "/"),
        ("http://r/caf%C3%A9", "/caf%C3%A9"),
    ],
)
async def test_a_delivery_is_taken_at_the_urls_own_path(url: str, post_to: str) -> None:
    signer = Signer()
    r = Receiving(url, signer)
    async with r.http:
        answer = await r.http.post(
            post_to, content=delivery(), headers=signer.headers("r-1", delivery())
        )
    assert answer.status_code == 200
    assert r.inbox.delivered == 1 and r.inbox.refused == 0


async def test_other_paths_methods_and_signatures_are_refused_counted_and_never_used() -> None:
    signer = Signer()
    r = Receiving("https://hooks.example.com/fal-webhook", signer)
    signed = signer.headers("r-1", delivery())
    async with r.http:
        answers = [
            await r.http.post("/batchgen/webhook", content=delivery(), headers=signed),
            await r.http.post("/", content=delivery(), headers=signed),
            await r.http.get("/fal-webhook"),
            await r.http.put("/fal-webhook", content=delivery(), headers=signed),
            await r.http.post("/fal-webhook", content=delivery()),  # unsigned
        ]
    assert [a.status_code for a in answers] == [404, 404, 405, 405, 401]
    assert answers[2].headers["allow"] == "POST"
    counts = r.inbox.counts()
    assert counts["delivered"] == 0 and counts["refused"] == 5
    assert (counts["refused_path"], counts["refused_method"], counts["refused_signature"]) == (
        2,
        2,
        1,
    )
    assert r.inbox.last_path == "/"
    assert len(r.noted) == 5  # each one in the journal's audit trail


async def _chunks(n: int, size: int, sent: list[int]) -> AsyncIterator[bytes]:
    for _ in range(n):
        sent.append(size)
        yield b"x" * size


@pytest.mark.parametrize("declared", [True, False])
async def test_a_body_past_the_cap_is_refused_without_being_read_whole(declared: bool) -> None:
    signer = Signer()
    r = Receiving("http://r/hook", signer, max_body=MAX_BODY)
    sent: list[int] = []
    size, n = 64 * 1024, 1024  # 64 MiB offered, as a stranger could
    headers = {"content-length": str(size * n)} if declared else {}
    async with r.http:
        answer = await r.http.post("/hook", content=_chunks(n, size, sent), headers=headers)
        # a delivery just under the cap is still read and checked (its signature is bad)
        small = b"x" * (MAX_BODY - 1)
        under = await r.http.post("/hook", content=small, headers=signer.headers("r", delivery()))
    assert answer.status_code == 413
    # read no further than the cap (one chunk past it), or not at all when it was declared
    assert sum(sent) <= (0 if declared else MAX_BODY + size)
    assert under.status_code == 401
    assert r.inbox.counts()["refused_size"] == 1 and r.inbox.counts()["refused_signature"] == 1


async def test_the_receiver_is_given_to_fal_as_typed_or_on_its_own_address() -> None:
    signer = Signer()

    async def jwks() -> dict[str, Any]:
        return signer.jwks()

    inbox = Inbox()
    given = "https://hooks.example.com/fal-webhook/?token=t"
    async with receive("127.0.0.1:0", given, inbox, Verifier(jwks), print) as url:
        assert url == given
    async with receive("127.0.0.1:0", None, inbox, Verifier(jwks), print) as url:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+" + DEFAULT_PATH, url)
        async with httpx.AsyncClient() as http:
            answer = await http.post(
                url, content=delivery(), headers=signer.headers("r-1", delivery())
            )
    assert answer.status_code == 200 and inbox.delivered == 1


def test_silence_is_said_once_after_completions_without_any_delivery() -> None:
    s = Silence()
    assert s.due(10_000.0) is None  # nothing found complete: no evidence
    s.found_complete(100.0)
    assert s.due(100.0 + SILENT_AFTER_S - 1) is None
    s.heard()  # a delivery after all: one was only late
    s.found_complete(300.0)
    s.found_complete(350.0)
    assert s.due(300.0 + SILENT_AFTER_S) == SILENT_AFTER_S and s.missed == 2
    s.found_complete(1_000.0)
    assert s.due(5_000.0) is None  # said once a run


def inbox_of(run: Any) -> Inbox:
    assert run.sched.webhook is not None
    inbox: Inbox = run.sched.webhook.inbox
    return inbox


def webhook_run(rig: Rig, url: str, listen: str, **kw: Any) -> Any:
    kw.setdefault("concurrency", 4)
    return rig.run(watch="webhook", webhook_listen=listen, webhook_url=url, **kw)


async def test_a_webhook_url_with_its_own_path_gets_every_delivery_and_no_status_request(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, 12)
    port = free_port()
    run = await webhook_run(rig, f"http://127.0.0.1:{port}/fal-webhook", f"127.0.0.1:{port}")
    await rig.app.state.webhooks.aclose()  # the emulator's connections to the receiver
    assert run.error is None and rig.states() == {S.DOWNLOADED: 12}
    counts = inbox_of(run).counts()
    assert (counts["delivered"], counts["refused"], counts["checked"]) == (12, 0, 0)
    stats = rig.stats()
    assert stats["status_polls"] == 0 and stats["stream_connections"] == 0
    assert stats["result_requests"] == 0  # each result came in its delivery
    assert not run.of(WebhooksSilent)


class PathChangingProxy(httpx.AsyncBaseTransport):
    """A reverse proxy in front of the receiver that strips the URL's first path segment:
    fal reaches the machine, but not the path the receiver serves."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        stripped = "/" + request.url.path.lstrip("/").partition("/")[2]
        request.url = request.url.copy_with(
            scheme="http", host="127.0.0.1", port=self._port, path=stripped
        )
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_a_proxy_that_changes_the_path_is_refused_counted_and_said_once(
    tmp_path: Path,
) -> None:
    port = free_port()
    proxy = httpx.AsyncClient(transport=PathChangingProxy(port))
    rig = Rig(tmp_path, 12, emulator={"webhook_client": proxy, "webhook_retry_s": 0.0})
    url = "https://hooks.example.com/batchgen/fal-webhook?token=s3cret"
    clock = FastClock(1000.0)  # the run's minutes pass in milliseconds
    async with proxy:
        run = await webhook_run(
            rig, url, f"127.0.0.1:{port}", clock=clock, sleep=clock.sleep, concurrency=2
        )
        await rig.app.state.webhooks.idle()
    assert run.error is None and rig.states() == {S.DOWNLOADED: 12}  # by the late checks
    counts = inbox_of(run).counts()
    assert counts["delivered"] == 0 and counts["checked"] >= 12
    assert counts["refused_path"] == counts["refused"] > 0
    (said,) = run.of(WebhooksSilent)  # once, however many requests went on after it
    assert said.seconds >= SILENT_AFTER_S and said.completed >= 1
    assert said.url == "https://hooks.example.com/batchgen/fal-webhook?…"  # no token
    assert said.last_path == "/fal-webhook" and set(dict(said.refused)) == {"refused_path"}
    logged = describe(said)  # run.log's line, which the CLI prints too
    assert logged is not None and said.url in logged and "at another path" in logged
    assert "s3cret" not in logged
    with Journal.open_readonly(rig.out / JOURNAL_NAME) as j:
        noted = [e[3] for e in j.events() if e[2] == "webhook"]
    assert len(noted) == counts["refused"] and "another path: '/fal-webhook'" in noted[0]


@pytest.mark.slow
def test_the_cli_with_a_url_of_its_own_path_gets_every_delivery(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the user runs: --webhook-url names a path of their choosing on the listen port."""
    m = write_manifest(tmp_path, 16)
    out = tmp_path / "out"
    port = free_port()
    code = main(
        [
            "run",
            str(m),
            "--emulate",
            "--watch",
            "webhook",
            "--webhook-listen",
            f"127.0.0.1:{port}",
            "--webhook-url",
            f"http://127.0.0.1:{port}/fal-webhook",
            "--concurrency",
            "4",
            "--time-scale",
            "0",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 0 and states(out) == {S.DOWNLOADED: 16}
    assert "batchgen: webhooks: 16 delivered, 0 repeats ignored, 0 refused, 0 late" in err
    assert "none came through" not in err and "no delivery for" not in err
