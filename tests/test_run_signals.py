"""Real signals to a real `batchgen run` process, then resume with the same command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_run_support import emulator_thread, states, stats, write_manifest

from batchgen.errors import JournalError
from batchgen.journal.writer import JOURNAL_NAME, Journal
from batchgen.planning.jobs import JobState

S = JobState
REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def command(manifest: Path, url: str, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "batchgen",
        "run",
        str(manifest),
        "--endpoint",
        url,
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "BATCHGEN_"))}
    e["PYTHONPATH"] = str(REPO)
    return e


def wait_for_in_flight(out: Path, proc: subprocess.Popen[bytes], n: int = 1) -> None:
    """Until the journal shows ``n`` requests on fal's side (so a stop has paid work to keep)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        try:
            with Journal.open_readonly(out / JOURNAL_NAME) as j:
                c = j.counts()
            if c[S.QUEUED] + c[S.RUNNING] >= n:
                return
        except JournalError:
            pass  # not created yet
        time.sleep(0.02)
    raise AssertionError("no request went in flight")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_finishes_paid_work_then_resume(tmp_path: Path, sig: signal.Signals) -> None:
    m = write_manifest(tmp_path, 24)
    out = tmp_path / "out"
    with emulator_thread(time_scale=0.1) as url:  # ~0.35 s per request
        cmd = command(m, url, out, "--concurrency", "4")
        proc = subprocess.Popen(cmd, env=env(), cwd=REPO, stderr=subprocess.PIPE)
        wait_for_in_flight(out, proc, 2)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err.decode()
        assert b"run the same command again to resume" in err
        st = states(out)
        # every request fal accepted was finished and downloaded; nothing is left in flight
        assert set(st) <= {S.DOWNLOADED, S.PENDING}
        assert st[S.DOWNLOADED] == stats(url)["submits_accepted"] >= 2
        assert st[S.PENDING] > 0
        done = subprocess.run(cmd, env=env(), cwd=REPO, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr.decode()
        s = stats(url)
    assert states(out) == {S.DOWNLOADED: 24}
    assert s["submits_accepted"] == 24 and s["duplicate_submits"] == 0
    assert "interrupted" in (out / "run.log").read_text()


def test_first_ctrl_c_of_an_emulated_run_stops_it_gracefully(tmp_path: Path) -> None:
    """With --emulate the emulator is served in the run's own process: the first Ctrl-C is
    still the run's graceful stop (not the emulator's shutdown), and the resume finishes."""
    m = write_manifest(tmp_path, 24)
    out = tmp_path / "out"
    flags = ["--emulate", "--time-scale", "0.1", "--concurrency", "4", "--quiet"]
    cmd = [sys.executable, "-m", "batchgen", "run", str(m), *flags, "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env(), cwd=REPO, stderr=subprocess.PIPE)
    wait_for_in_flight(out, proc, 2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err.decode()
    assert b"run the same command again to resume" in err
    assert b"Traceback" not in err
    st = states(out)
    assert set(st) <= {S.DOWNLOADED, S.PENDING}  # what was paid for was finished
    assert st[S.DOWNLOADED] >= 2 and st[S.PENDING] > 0
    done = subprocess.run(cmd, env=env(), cwd=REPO, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    assert states(out) == {S.DOWNLOADED: 24}


def test_second_signal_stops_at_once_then_resume(tmp_path: Path) -> None:
    m = write_manifest(tmp_path, 16)
    out = tmp_path / "out"
    with emulator_thread(time_scale=0.3) as url:  # ~1 s per request
        cmd = command(m, url, out, "--concurrency", "4")
        proc = subprocess.Popen(cmd, env=env(), cwd=REPO, stderr=subprocess.PIPE)
        wait_for_in_flight(out, proc, 2)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err.decode()
        st = states(out)
        assert S.SUBMITTING not in st
        assert st[S.QUEUED] + st[S.RUNNING] + st[S.COMPLETED] >= 1  # left attached
        done = subprocess.run(cmd, env=env(), cwd=REPO, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr.decode()
        s = stats(url)
    assert states(out) == {S.DOWNLOADED: 16}
    with Journal.open_readonly(out / JOURNAL_NAME) as j:
        dups = j.tallies().possible_duplicates
    # the attached requests were re-attached, not resubmitted
    assert s["duplicate_submits"] <= dups
    assert "resume:" in (out / "run.log").read_text()
