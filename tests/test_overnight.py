"""The faults an unattended night meets, through a real `batchgen run` over loopback: the
account's credit runs out, the disk fills. Each stops the submitting, keeps what was paid for,
says what to do in one line with its own exit code, and the same command goes on after."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_run_signals import REPO, command, env
from test_run_support import emulator_thread, states, stats, write_manifest

from batchgen.outputs.index import METADATA, read_rows
from batchgen.planning.jobs import JobState
from batchgen.running.summary import EXIT_DISK_FULL, EXIT_LOCKED

S = JobState
pytestmark = pytest.mark.slow


def test_a_locked_account_collects_what_it_paid_for_then_goes_on_after_a_top_up(
    tmp_path: Path,
) -> None:
    m = write_manifest(tmp_path, 30)
    out = tmp_path / "out"
    with emulator_thread(time_scale=0.05, credit=12) as url:
        cmd = command(m, url, out, "--concurrency", "4")
        first = subprocess.run(cmd, env=env(), cwd=REPO, capture_output=True, timeout=120)
        err = first.stderr.decode()
        assert first.returncode == EXIT_LOCKED, err
        assert "account locked" in err and "Top up the balance" in err, err
        assert "Traceback" not in err
        # Every request fal accepted was collected; nothing it refused was failed.
        assert stats(url)["submits_accepted"] == 12
        assert states(out) == {S.DOWNLOADED: 12, S.PENDING: 18}

        httpx.post(f"{url}/_emulator/credit", params={"requests": ""}, timeout=10)
        again = subprocess.run(cmd, env=env(), cwd=REPO, capture_output=True, timeout=120)
        assert again.returncode == 0, again.stderr.decode()
        assert states(out) == {S.DOWNLOADED: 30}
        assert stats(url)["submits_accepted"] == 30  # nothing paid twice
    assert len(list(read_rows(out / METADATA))) == 30


@contextlib.contextmanager
def small_disk(size: str) -> Iterator[Path]:
    """A tmpfs of ``size``; skips the test where this machine cannot mount one."""
    where = Path("/tmp") / f"batchgen-small-{uuid.uuid4().hex[:8]}"
    where.mkdir()
    try:
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True,
        )
        if r.returncode != 0 or os.geteuid() != 0:
            pytest.skip(f"needs a small filesystem (mount -t tmpfs as root): {r.stderr!r}")
        try:
            yield where
        finally:
            subprocess.run(["umount", "-l", str(where)], check=False)
    finally:
        with contextlib.suppress(OSError):
            where.rmdir()


def test_a_full_disk_stops_the_run_and_the_same_command_finishes_once_there_is_room(
    tmp_path: Path,
) -> None:
    n = 60
    m = write_manifest(tmp_path, n)
    with small_disk("1500k") as disk, emulator_thread(time_scale=0.02) as url:
        out = disk / "out"
        cmd = command(m, url, out, "--concurrency", "8")
        first = subprocess.run(cmd, env=env(), cwd=REPO, capture_output=True, timeout=120)
        err = first.stderr.decode()
        assert first.returncode == EXIT_DISK_FULL, err
        assert "Traceback" not in err and "Task exception" not in err, err
        assert f"disk full: {out} has" in err and "run the same command again" in err, err
        before = states(out)
        assert S.FAILED not in before, before  # a full disk fails no job
        paid = stats(url)["submits_accepted"]

        # More room (tmpfs grows in place), and the same command.
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        again = subprocess.run(cmd, env=env(), cwd=REPO, capture_output=True, timeout=120)
        assert again.returncode == 0, again.stderr.decode()
        assert states(out) == {S.DOWNLOADED: n}
        # Nothing paid twice: what the first run had sent was collected, not sent again.
        assert stats(url)["submits_accepted"] == n
        assert paid <= n
        lines = (out / METADATA).read_bytes().splitlines()
        assert len(lines) == n  # one whole row per image
