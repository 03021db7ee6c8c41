"""fal's own controls (docs/controls.md) through `batchgen run` and `batchgen status`:
refusals before anything is sent, the notification at the end (a local receiver over loopback;
its token nowhere in the folder), --on-exit, the manifest keys, --stop-at's time and exit code,
and `status --job`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from test_run_support import write_manifest

from batchgen.cli import main
from batchgen.config import build_settings
from batchgen.emulator.server import serve_asgi
from batchgen.errors import ManifestError, UsageError
from batchgen.journal.writer import JOURNAL_NAME, Journal
from batchgen.manifest import load_manifest
from batchgen.running.events import StopReason
from batchgen.running.summary import exit_code

TOKEN = "T0KEN-b1ff-secret-9f3a"


@contextlib.contextmanager
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A Slack-like incoming webhook on loopback, in its own thread; yields (base URL, bodies)."""
    got: list[dict[str, Any]] = []

    async def hook(request: Request) -> Response:
        got.append({"path": request.url.path, "json": await request.json()})
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/hooks/{rest:path}", hook, methods=["POST"])])
    ready, box = threading.Event(), {}

    def target() -> None:
        async def main_() -> None:
            box["stop"], box["loop"] = asyncio.Event(), asyncio.get_running_loop()
            async with serve_asgi(app) as url:
                box["url"] = url
                ready.set()
                await box["stop"].wait()

        asyncio.run(main_())

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield box["url"], got
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(10)


def _everything_in(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_the_end_is_posted_and_the_token_stays_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = write_manifest(tmp_path, 3)
    out = tmp_path / "out"
    piped = tmp_path / "on_exit.json"
    on_exit = f"{sys.executable} -c 'import sys; open(sys.argv[1], \"w\").write(sys.stdin.read())'"
    with receiver() as (url, got):
        hook = f"{url}/hooks/services/{TOKEN}"
        code = main(
            [
                "run",
                str(m),
                "--emulate",
                "--out",
                str(out),
                "--quiet",
                "--notify",
                hook,
                "--on-exit",
                f"{on_exit} {piped}",
            ]
        )
    assert code == 0
    (post,) = got
    assert post["path"] == f"/hooks/services/{TOKEN}"
    body = post["json"]
    assert (body["exit_code"], body["done"], body["failed"], body["unfinished"]) == (0, 3, 0, 0)
    assert body["folder"] == str(out) and body["rehearsal"] is True
    assert body["text"].startswith("batchgen t: finished. done 3, failed 0")
    assert json.loads(piped.read_text()) == body  # --on-exit read the same summary
    err = capsys.readouterr()
    assert TOKEN not in err.out + err.err
    assert TOKEN.encode() not in _everything_in(out)  # run.log, journal, index, gallery
    log = (out / "run.log").read_text()
    assert "notify: sent to --notify (127.0.0.1)" in log and "on-exit:" in log
    assert "controls: priority fal default (normal), fallbacks disabled, notify 127.0.0.1" in log
    with Journal.open_readonly(out / JOURNAL_NAME) as j:
        assert j.runs()[-1].settings["notify"] is True


def test_the_notify_url_is_masked_in_any_message_but_plain_words_are_not() -> None:
    from batchgen.running.notify import NotifyURL

    url = f"https://hooks.slack.com/services/T0123ABCD/B0123ABCD/{TOKEN}"
    u = NotifyURL(url)
    assert repr(u) == str(u) == "NotifyURL('***')" and u.host == "hooks.slack.com"
    text = u.redact(f"POST {url}: 500; path /services/T0123ABCD/B0123ABCD/{TOKEN}; {TOKEN}")
    assert TOKEN not in text and "T0123ABCD" not in text and "/services/" not in text
    assert u.redact("services ok, hooks ok") == "services ok, hooks ok"


def test_a_failed_notification_is_logged_and_changes_no_exit_code(tmp_path: Path) -> None:
    m = write_manifest(tmp_path, 1)
    out = tmp_path / "out"
    dead = f"http://127.0.0.1:9/hooks/{TOKEN}"  # nothing listens on the discard port
    assert main(["run", str(m), "--emulate", "--out", str(out), "--quiet", "--notify", dead]) == 0
    log = (out / "run.log").read_text()
    assert "notify: --notify (127.0.0.1) failed: ConnectError" in log
    assert TOKEN.encode() not in _everything_in(out)


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--media-expiry", "60"], "too short to download within"),
        (["--media-expiry", "599"], "at least 600 s"),
        (["--start-timeout", "1200"], "not shorter than --deadline"),
        (["--start-timeout", "0.05"], "more than 0.1 s"),
        (["--stop-at", "7am"], "HH:MM"),
        (["--on-exit", "no-such-command-xyz --flag"], "not a command found on PATH"),
        (["--notify", f"ftp://hooks/{TOKEN}"], "must be an http(s) URL"),
    ],
)
def test_bad_controls_exit_2_before_anything_is_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], says: str
) -> None:
    m = write_manifest(tmp_path, 1)
    out = tmp_path / "out"
    assert main(["run", str(m), "--emulate", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and TOKEN not in err
    assert not out.exists()  # nothing written, nothing submitted


def test_manifest_keys_set_priority_and_fallbacks_flags_win(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("priority: low\nallow_fallbacks: true\nprompts: [a fox]\n")
    m = load_manifest(path)
    flags: dict[str, Any] = {"emulate": True}
    s = build_settings(flags, {}, m)
    assert (s.controls.priority, s.controls.allow_fallbacks) == ("low", True)
    s = build_settings({**flags, "priority": "normal"}, {}, m)
    assert s.controls.priority == "normal"
    path.write_text("priority: urgent\nprompts: [a fox]\n")
    with pytest.raises(ManifestError, match="priority: must be 'low' or 'normal'"):
        load_manifest(path)


def test_stop_at_is_the_next_such_local_time_and_exits_4_with_jobs_left() -> None:
    from batchgen.running.clock import next_time

    now = datetime(2026, 5, 1, 23, 0).timestamp()
    assert datetime.fromtimestamp(next_time("07:00", now=now)) == datetime(2026, 5, 2, 7, 0)
    assert datetime.fromtimestamp(next_time("23:30", now=now)) == datetime(2026, 5, 1, 23, 30)
    assert datetime.fromtimestamp(next_time("23:00", now=now)) == datetime(2026, 5, 2, 23, 0)
    with pytest.raises(UsageError):
        next_time("24:00", now=now)
    assert exit_code(stop=StopReason.STOP_AT, failed=0, unfinished=4) == 4
    # It came after the last submit and everything in flight finished: an ordinary end.
    assert exit_code(stop=StopReason.STOP_AT, failed=0, unfinished=0) == 0
    assert exit_code(stop=StopReason.STOP_AT, failed=2, unfinished=0) == 1


def test_status_job_shows_the_row_its_events_and_fals_logs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = write_manifest(tmp_path, 2)
    out = tmp_path / "out"
    faults = ["--faults", "content_policy=1"]
    assert main(["run", str(m), "--emulate", "--out", str(out), "--quiet", *faults]) == 1
    with Journal.open_readonly(out / JOURNAL_NAME) as j:
        job = next(iter(j.iter_jobs()))
    capsys.readouterr()
    assert main(["status", str(out), "--job", job.job_id[:16]]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"job {job.job_id}\n  state failed, attempts 0")
    assert "error content_policy_violation" in text
    assert "PENDING->SUBMITTING" in text and "->FAILED" in text  # its history, in order
    assert "fal's logs of its failed requests" in text
    assert "ERROR Invalid status code: 422 (content_policy_violation)" in text
    assert main(["status", str(out), "--job", str(job.request_id), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["job_id"] == job.job_id and doc["logs"] and doc["error_class"]
    assert main(["status", str(out), "--job", "ffffffffff"]) == 2
    assert "no job 'ffffffffff'" in capsys.readouterr().err
    assert main(["status", str(out), "--job", "ab"]) == 2
