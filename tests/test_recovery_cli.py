"""The recovery paths as a user walks them, through `batchgen run` itself: a rehearsal never
becomes the dataset, a rehearsal stopped hard resumes in seconds (not at the deadline), the
resume hint keeps the flags that matter, an outage shows in the terminal within seconds."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_run_signals import REPO, env, wait_for_in_flight
from test_run_support import emulator_thread, states, stats, write_manifest
from test_tls_support import self_signed

import batchgen
from batchgen.cli import main
from batchgen.journal.writer import JOURNAL_NAME, Journal
from batchgen.outputs.index import read_failures, read_index
from batchgen.planning.jobs import JobState

S = JobState
NO_KEY: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "BATCHGEN_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


def rehearse(m: Path, out: Path, *extra: str) -> int:
    return main(
        ["run", str(m), "--emulate", "--out", str(out), "--quiet", "--time-scale", "0", *extra]
    )


def origins(out: Path) -> set[object]:
    return {r.get("origin") for r in read_index(out)}


def fal_stand_in() -> contextlib.AbstractContextManager[str]:
    """The emulator on a loopback port, not saying it is one: to this run, a real server."""
    return emulator_thread(time_scale=0, announce=False)


# -- a rehearsal never becomes the dataset ---------------------------------------------------


def real_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[Path, Path, str]:
    """A folder holding 3 jobs run for real (on a fal stand-in, now gone): the manifest, the
    folder and the server's URL; what the run printed is cleared."""
    m = write_manifest(tmp_path, 3)
    out = tmp_path / "out"
    monkeypatch.setenv("FAL_KEY", "test-key")
    with fal_stand_in() as url:
        assert main(["run", str(m), "--endpoint", url, "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    return m, out, url


def test_a_real_run_after_a_rehearsal_makes_every_image_for_real(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    m = write_manifest(tmp_path, 6)
    out = tmp_path / "out"
    assert rehearse(m, out) == 0
    assert origins(out) == {"emulator"}
    capsys.readouterr()
    monkeypatch.setenv("FAL_KEY", "test-key")
    with fal_stand_in() as url:  # another server, a real one
        assert main(["run", str(m), "--endpoint", url, "--out", str(out), "--quiet"]) == 0
        accepted = stats(url)["submits_accepted"]
    assert accepted == 6  # every job was made for real, none taken from the rehearsal
    assert states(out) == {S.DOWNLOADED: 6}
    assert origins(out) == {f"endpoint:{url}"} and len(read_index(out)) == 6
    err = capsys.readouterr().err
    assert "held a rehearsal: its 6 jobs are made for real now" in err
    # nothing billed by the emulator counts: this run's spend is the folder's
    assert "estimated spend $0.06 this run, $0.06 for the folder" in err


def test_a_rehearsal_stopped_halfway_never_mixes_with_real_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = write_manifest(tmp_path, 8)
    out = tmp_path / "out"
    assert rehearse(m, out, "--max-cost", "0.035", "--concurrency", "1") == 3  # the budget
    assert 0 < len(read_index(out)) < 8
    monkeypatch.setenv("FAL_KEY", "test-key")
    with fal_stand_in() as url:
        assert main(["run", str(m), "--endpoint", url, "--out", str(out), "--quiet"]) == 0
        assert stats(url)["submits_accepted"] == 8
    rows = read_index(out)
    assert len(rows) == 8 and origins(out) == {f"endpoint:{url}"}
    on_disk = sorted(p.relative_to(out).as_posix() for p in (out / "images").rglob("*.jpg"))
    assert on_disk == sorted(r["file_name"] for r in rows)  # no placeholder left behind


def test_a_rehearsal_into_real_work_is_refused_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    m, out, url = real_work(tmp_path, monkeypatch, capsys)
    before = (out / "metadata.jsonl").read_bytes()
    assert rehearse(m, out) == 2
    err = capsys.readouterr().err
    assert f"{out} holds real work (3 jobs run on {url})" in err
    assert "--out" in err and "Traceback" not in err
    assert (out / "metadata.jsonl").read_bytes() == before
    assert states(out) == {S.DOWNLOADED: 3}


# -- a rehearsal stopped hard resumes at once -------------------------------------------------


def hint(out: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The resume command `batchgen status` gives, as argv for this interpreter."""
    capsys.readouterr()
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    (line,) = [ln for ln in text.splitlines() if "to resume: " in ln]
    argv = shlex.split(line.split("to resume: ", 1)[1])
    assert argv[:2] == ["batchgen", "run"]
    return [sys.executable, "-m", "batchgen", *argv[1:], "--quiet"]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill -9", "two Ctrl-C"])
def test_a_rehearsal_stopped_hard_resumes_within_seconds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    m = write_manifest(tmp_path, 20)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "batchgen",
        "run",
        str(m),
        "--emulate",
        "--out",
        str(out),
        "--quiet",
        "--time-scale",
        "0.05",
        "--faults",
        "slow_media=0.3",
        "--concurrency",
        "6",
    ]
    proc = subprocess.Popen(cmd, env=env(), cwd=REPO, stderr=subprocess.DEVNULL)
    wait_for_in_flight(out, proc, 3)
    time.sleep(random.Random(how).uniform(0.0, 0.4))
    if how == "kill -9":
        proc.kill()
    else:
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
    proc.wait(30)
    held = states(out)
    dead = sum(held[s] for s in (S.SUBMITTING, S.UNKNOWN, S.QUEUED, S.RUNNING, S.COMPLETED))
    resume = hint(out, capsys)
    assert "--emulate" in resume and "--time-scale" in resume and "--faults" in resume
    started = time.monotonic()
    done = subprocess.run(resume, env=env(), cwd=REPO, capture_output=True, timeout=90)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr.decode()
    assert states(out) == {S.DOWNLOADED: 20}
    assert took < 45  # seconds, not the 1,200 s deadline of a dead emulator's requests
    if dead:  # the requests the stopped emulator held were resubmitted at once, and said so
        assert "requests of a stopped emulator are submitted again" in done.stderr.decode()


async def test_a_cancelled_api_rehearsal_resumes_without_waiting(tmp_path: Path) -> None:
    m = write_manifest(tmp_path, 12)
    out = tmp_path / "out"
    running = asyncio.Event()

    def note(event: batchgen.RunEvent) -> None:
        if isinstance(event, batchgen.Started):
            running.set()

    task = asyncio.create_task(
        batchgen.run(
            m,
            out=out,
            emulate=True,
            time_scale=0.05,
            concurrency=4,
            environ=NO_KEY,
            on_event=note,
        )
    )
    await running.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with Journal.open_readonly(out / JOURNAL_NAME) as j:
        assert j.counts()[S.RUNNING] + j.counts()[S.QUEUED] > 0  # left attached to the dead one
    started = time.monotonic()
    result = await batchgen.run(
        m, out=out, emulate=True, time_scale=0.05, concurrency=4, environ=NO_KEY
    )
    assert result.ok and time.monotonic() - started < 30
    assert states(out) == {S.DOWNLOADED: 12}


# -- what a re-run and an outage say ---------------------------------------------------------


def test_a_rerun_with_nothing_to_do_spends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    m = write_manifest(tmp_path, 4)
    out = tmp_path / "out"
    monkeypatch.setenv("FAL_KEY", "test-key")
    with fal_stand_in() as url:
        argv = ["run", str(m), "--endpoint", url, "--out", str(out), "--quiet"]
        assert main(argv) == 0
        capsys.readouterr()
        assert main(argv) == 0
    assert "estimated spend $0.00 this run, $0.04 for the folder" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_an_unreachable_server_shows_in_the_terminal_within_seconds(tmp_path: Path) -> None:
    m = write_manifest(tmp_path, 3)
    out = tmp_path / "out"
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    cmd = [sys.executable, "-m", "batchgen", "run", str(m), "--endpoint", url, "--out", str(out)]
    # With a key: without one, a server that is not a batchgen emulator is refused up front.
    e = env() | {"FAL_KEY": "test-key"}
    proc = subprocess.Popen(cmd, env=e, cwd=REPO, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    started, said = time.monotonic(), ""
    while time.monotonic() - started < 20 and "unreachable for" not in said:
        said += proc.stderr.readline()
    assert f"{url} unreachable for" in said and "ConnectError" in said
    assert time.monotonic() - started < 15
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=30)
    assert proc.returncode == 130, said + rest
    # nothing failed for the outage, nothing is left half-submitted: the next run resumes
    assert states(out) == {S.PENDING: 3}
    assert read_failures(out) == []


@contextlib.contextmanager
def untrusted_https(tmp: Path) -> Iterator[str]:
    """An HTTPS listener whose certificate nobody trusts: every client handshake fails."""
    server_ctx, _ = self_signed(tmp)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        with server_ctx.wrap_socket(listener, server_side=True) as tls:
            while True:
                try:
                    conn, _ = tls.accept()  # the handshake: the client refuses it
                    conn.close()
                except ssl.SSLError:
                    continue
                except OSError:  # closed: the test is over
                    return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        listener.close()


@pytest.mark.slow
def test_an_untrusted_certificate_says_how_to_trust_it(tmp_path: Path) -> None:
    # Behind a proxy that inspects TLS, fal's certificate fails to verify: retried like an
    # outage (nothing is lost), and the user is told which variable names the right CA.
    m = write_manifest(tmp_path, 2)
    out = tmp_path / "out"
    with untrusted_https(tmp_path) as url:
        cmd = [
            sys.executable,
            "-m",
            "batchgen",
            "run",
            str(m),
            "--endpoint",
            url,
            "--out",
            str(out),
        ]
        e = env() | {"FAL_KEY": "test-key"}  # a server that bills needs one (preflight.py)
        proc = subprocess.Popen(cmd, env=e, cwd=REPO, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        started, said = time.monotonic(), ""
        while time.monotonic() - started < 20 and "SSL_CERT_FILE" not in said:
            said += proc.stderr.readline()
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=30)
    assert "CERTIFICATE_VERIFY_FAILED" in said and "point SSL_CERT_FILE" in said, said
    assert proc.returncode == 130, said + rest
    assert states(out) == {S.PENDING: 2}


# -- a rehearsal against `batchgen emulator` (an --endpoint that says it is the emulator) ------


def test_a_standalone_emulator_rehearsal_is_a_rehearsal_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    m = write_manifest(tmp_path, 4)
    out = tmp_path / "out"
    with emulator_thread(time_scale=0) as url:
        assert main(["run", str(m), "--endpoint", url, "--out", str(out), "--quiet"]) == 0
    assert origins(out) == {f"emulator:{url}"}
    err = capsys.readouterr().err
    assert "rehearsal, nothing billed (on fal ~$0.04 this run" in err
    monkeypatch.setenv("FAL_KEY", "test-key")
    with fal_stand_in() as real:  # then for real: every image made again
        assert main(["run", str(m), "--endpoint", real, "--out", str(out), "--quiet"]) == 0
        assert stats(real)["submits_accepted"] == 4
    assert origins(out) == {f"endpoint:{real}"}


def test_a_standalone_emulator_into_real_work_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    m, out, _ = real_work(tmp_path, monkeypatch, capsys)
    before = (out / "metadata.jsonl").read_bytes()
    with emulator_thread(time_scale=0) as url:
        assert main(["run", str(m), "--endpoint", url, "--out", str(out), "--quiet"]) == 2
        assert stats(url)["submits_accepted"] == 0
    assert "holds real work (3 jobs run on" in capsys.readouterr().err
    assert (out / "metadata.jsonl").read_bytes() == before


def test_a_real_run_after_a_rehearsal_uploads_its_files_to_the_real_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The rehearsal's emulator hosted the reference files at its own (now dead) URLs: a real
    # run must upload them again, never send fal a URL only the rehearsal could serve.
    shutil.copytree(REPO / "manifests" / "refs", tmp_path / "refs")
    m = tmp_path / "edit.yaml"
    shutil.copy(REPO / "manifests" / "edit.yaml", m)
    out = tmp_path / "out"
    assert rehearse(m, out) == 0
    monkeypatch.setenv("FAL_KEY", "test-key")
    with fal_stand_in() as real:
        assert main(["run", str(m), "--endpoint", real, "--out", str(out), "--quiet"]) == 0
        uploads = stats(real)["uploads"]
    assert uploads == 3  # room.png, swatch.png and mask.png, each once
    assert states(out) == {S.DOWNLOADED: 5}
