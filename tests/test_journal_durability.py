"""A committed request id survives ``kill -9``: the rule that keeps a resume from paying twice."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_journal_support import open_journal

from batchgen.planning.jobs import JobState

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    sys.path[:0] = [{root!r}, {tests!r}]
    from pathlib import Path
    from test_journal_support import handle, open_journal, spec

    j = open_journal(Path({path!r}))
    if j.needs_plan:
        j.add_jobs(spec(i) for i in range({n}))
    mode = {mode!r}
    for (row,) in iter(lambda: j.claim(1), []):
        if mode == "kill-after-claim":
            os.kill(os.getpid(), signal.SIGKILL)
        j.sending(row.job_id, "key")
        if mode == "kill-while-sending":
            os.kill(os.getpid(), signal.SIGKILL)
        j.set_submitted(row.job_id, handle("req-" + row.spec.prompt_id))
        if mode == "kill-after-submit":
            os.kill(os.getpid(), signal.SIGKILL)
        # Only printed once the call returned: the parent may rely on every line it reads.
        print(row.job_id, flush=True)
    """
)


def start_child(path: Path, mode: str, n: int = 1) -> subprocess.Popen[str]:
    code = CHILD.format(root=str(ROOT), tests=str(ROOT / "tests"), path=str(path), n=n, mode=mode)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "out" / "journal.sqlite"


def test_a_request_id_survives_kill_9_right_after_set_submitted(path: Path) -> None:
    proc = start_child(path, "kill-after-submit")
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with open_journal(path) as j:  # the dead writer's lock went with it
        (row,) = j.attached()
        assert (row.state, row.request_id) == (JobState.QUEUED, "req-p0")
        assert row.handle is not None and row.handle["request_id"] == "req-p0"
        assert j.interrupted_submits() == []
        assert j.claim(1) == []  # never submitted twice


def test_a_claim_killed_before_its_post_is_sent_again_uncounted(path: Path) -> None:
    proc = start_child(path, "kill-after-claim")
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with open_journal(path) as j:
        assert j.interrupted_submits() == []  # its POST was never begun: nothing to look for
        (again,) = j.claim(1)
        assert again.possible_duplicates == 0 and again.submits == 2


def test_a_post_killed_mid_way_resumes_as_a_lost_submit_to_look_for(path: Path) -> None:
    proc = start_child(path, "kill-while-sending")
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with open_journal(path) as j:
        (unknown,) = j.interrupted_submits()
        assert unknown.state is JobState.UNKNOWN
        (lost,) = j.lost_submits()
        assert lost.job_id == unknown.job_id and lost.key == "key" and lost.known
        assert unknown.job_id not in {r.job_id for r in j.claim(5)}  # looked for first


def test_kill_9_from_outside_loses_no_returned_commit(path: Path) -> None:
    proc = start_child(path, "loop", n=5_000)
    assert proc.stdout is not None
    seen = [proc.stdout.readline().strip() for _ in range(300)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    with open_journal(path) as j:
        assert not j.needs_plan  # the plan was committed before the first line
        for job_id in seen:
            row = j.get(job_id)
            assert row is not None and row.state is JobState.QUEUED
            assert row.request_id == "req-" + row.spec.prompt_id
        assert len(j.interrupted_submits()) <= 1
