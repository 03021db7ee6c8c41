"""Completion by webhook (docs/webhooks.md): fal's deliveries are checked (Ed25519 against the
server's JWKS), idempotent on the request id, and a lost one costs one status request, not an
image."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_run_support import states, write_manifest

from batchgen.cli import main
from batchgen.emulator.signing import Signer
from batchgen.fal.webhook import Verifier, WebhookRefused, parse_delivery
from batchgen.journal.writer import JOURNAL_NAME, Journal
from batchgen.outputs.index import read_index
from batchgen.planning.jobs import JobState

S = JobState
BODY = json.dumps({"request_id": "r-1", "status": "OK", "payload": {"images": []}}).encode()


def fetching(*docs: dict[str, Any], clock: Any = time.time) -> tuple[Verifier, list[int]]:
    """A verifier whose JWKS fetches return ``docs`` in turn; the list counts the fetches."""
    fetched: list[int] = []

    async def fetch() -> dict[str, Any]:
        fetched.append(1)
        return docs[min(len(fetched), len(docs)) - 1]

    return Verifier(fetch, clock=clock), fetched


async def test_a_signed_delivery_is_accepted_and_the_keys_fetched_once() -> None:
    signer = Signer()
    verifier, fetched = fetching(signer.jwks())
    for _ in range(3):
        assert await verifier.verify(signer.headers("r-1", BODY), BODY) == "r-1"
    assert len(fetched) == 1


@pytest.mark.parametrize(
    "tamper",
    ["forged", "unsigned", "stale", "other body", "other request id"],
)
async def test_anything_but_fals_signature_is_refused(tamper: str) -> None:
    signer = Signer()
    verifier, _ = fetching(signer.jwks())
    headers = signer.headers("r-1", BODY, forged=tamper == "forged")
    raw = BODY
    if tamper == "unsigned":
        headers = {}
    elif tamper == "stale":  # a replay of an old delivery
        old = Signer(key=None, clock=lambda: time.time() - 3600)
        verifier, _ = fetching(old.jwks())
        headers = old.headers("r-1", BODY)
    elif tamper == "other body":
        raw = BODY.replace(b'"OK"', b'"ERROR"')
    elif tamper == "other request id":
        headers = {**headers, "X-Fal-Webhook-Request-Id": "r-2"}
    with pytest.raises(WebhookRefused):
        await verifier.verify({k.lower(): v for k, v in headers.items()}, raw)


async def test_a_rotated_key_is_fetched_again_but_not_for_every_stranger() -> None:
    old, new = Signer(), Signer(key=Ed25519PrivateKey.generate())
    now = [time.time()]
    verifier, fetched = fetching(old.jwks(), new.jwks(), clock=lambda: now[0])
    assert await verifier.verify(old.headers("r-1", BODY), BODY) == "r-1"
    now[0] += 30  # fal rotated its key since
    assert await verifier.verify(new.headers("r-1", BODY), BODY) == "r-1"
    assert len(fetched) == 2
    for _ in range(5):  # strangers' keys right after: refused, and no fetch for each of them
        with pytest.raises(WebhookRefused):
            await verifier.verify(Signer().headers("r-1", BODY), BODY)
    assert len(fetched) == 2


def test_an_error_delivery_reads_as_the_result_would() -> None:
    raw = json.dumps(
        {
            "request_id": "r-9",
            "status": "ERROR",
            "error": "Invalid status code: 422",
            "payload": {
                "detail": [
                    {
                        "loc": ["body", "prompt"],
                        "msg": "refused",
                        "type": "content_policy_violation",
                    }
                ]
            },
        }
    ).encode()
    d = parse_delivery(raw)
    assert not d.ok and d.failure().status == 422
    assert d.failure().detail[0]["type"] == "content_policy_violation"


def _lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


@pytest.mark.slow
def test_a_webhook_run_through_lost_repeated_late_and_forged_deliveries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = write_manifest(tmp_path, 24)
    out = tmp_path / "out"
    faults = "webhook_lost=0.25,webhook_dup=0.25,webhook_delay=0.25,webhook_forged=0.25"
    code = main(
        [
            "run",
            str(m),
            "--emulate",
            "--watch",
            "webhook",
            "--concurrency",
            "8",
            "--time-scale",
            "0",
            "--faults",
            faults,
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    assert states(out) == {S.DOWNLOADED: 24} and len(read_index(out)) == 24
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if "webhooks:" in ln)
    said = re.search(
        r"(\d+) delivered, (\d+) repeats ignored, (\d+) refused \((\d+) unsigned or badly"
        r" signed\), (\d+) late deliveries checked",
        line,
    )
    assert said is not None, line
    delivered, repeats, refused, forged, late = (int(n) for n in said.groups())
    assert refused > 0 and repeats > 0 and late > 0  # each fault happened
    assert forged == refused  # the forged copies, and nothing else
    assert delivered + late == 24  # every job: its delivery, or one check for a lost one
    with Journal.open_readonly(out / JOURNAL_NAME) as j:
        noted = [e for e in j.events() if e[2] == "webhook"]
    assert len(noted) == refused and all("refused a delivery" in e[3] for e in noted)


def test_webhooks_against_fal_need_a_public_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAL_KEY", "k")
    m = write_manifest(tmp_path, 1)
    assert main(["run", str(m), "--watch", "webhook", "--out", str(tmp_path / "o")]) == 2
    assert "--watch webhook needs --webhook-url" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
