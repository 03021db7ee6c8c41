"""kill -9 a real `batchgen run` at random moments, resume each time, and check that nothing
was paid for twice, nothing finished was lost, and no half-written file is in place."""

from __future__ import annotations

import hashlib
import random
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image
from test_run_signals import REPO, command, env
from test_run_support import emulator_thread, states, stats, write_manifest

from batchgen.emulator.model import canonical_input_key
from batchgen.journal.writer import JOURNAL_NAME, Journal
from batchgen.outputs.index import read_index
from batchgen.planning.jobs import JobState

S = JobState
pytestmark = pytest.mark.slow
KILLS = 6


@pytest.mark.timeout(120)
def test_kill_9_at_random_moments_then_resume(tmp_path: Path) -> None:
    m = write_manifest(tmp_path, 40)
    out = tmp_path / "out"
    rng = random.Random(20261125)
    killed = 0
    moments: list[dict[JobState, int]] = []
    with emulator_thread(time_scale=0.05, concurrency_limit=8) as url:  # ~0.2 s per request
        cmd = command(m, url, out, "--concurrency", "6")
        while killed < KILLS:
            starts = _starts(out)
            proc = subprocess.Popen(cmd, env=env(), cwd=REPO, stderr=subprocess.DEVNULL)
            # Kill after the run really began (Python's start-up time varies with the
            # machine's load). Every other kill lands at a random moment: planning,
            # submitting, watching, downloading. The rest are aimed at paid requests in
            # flight: the moment that matters most, which a loaded machine's slow start made
            # random kills miss (they landed before the first submit).
            while _starts(out) == starts and proc.poll() is None:
                time.sleep(0.01)
            if killed % 2:
                _wait_for_requests_in_flight(out, proc)
            else:
                time.sleep(rng.uniform(0.0, 0.6))
            if proc.poll() is not None:
                break  # finished before the kill: nothing left to interrupt
            proc.kill()
            proc.wait()
            killed += 1
            moments.append(dict(states(out)))
        final = subprocess.run(cmd, env=env(), cwd=REPO, capture_output=True, timeout=60)
        seen = Counter(stats(url)["submits_per_input"])
    assert killed >= 5, "the run finished before it was killed five times"
    # the kills interrupted real work, not just start-up: requests were in flight (the aimed
    # kills see to it; a random one may too)
    assert sum(1 for c in moments if c.get(S.QUEUED, 0) + c.get(S.RUNNING, 0)) >= KILLS // 2
    assert final.returncode == 0, final.stderr.decode()
    assert states(out) == {S.DOWNLOADED: 40}

    with Journal.open_readonly(out / JOURNAL_NAME) as j:
        rows = list(j.iter_jobs())
    for row in rows:
        key = canonical_input_key(row.spec.endpoint, dict(row.spec.input))
        # one request per job, plus one per submit a kill cut short (counted, UNKNOWN)
        assert 1 <= seen[key] <= 1 + row.possible_duplicates, row.job_id
    assert sum(seen.values()) <= len(rows) + sum(r.possible_duplicates for r in rows)

    assert not list(out.rglob("*.part"))
    index = {r["file_name"]: r for r in read_index(out)}
    files = sorted(p for p in (out / "images").rglob("*") if p.is_file())
    assert len(files) == len(index) == 40
    for f in files:
        row = index[f.relative_to(out).as_posix()]
        assert hashlib.sha256(f.read_bytes()).hexdigest() == row["sha256"]
        with Image.open(f) as im:
            im.verify()  # complete and decodable: never a half-written image in place


def _wait_for_requests_in_flight(out: Path, proc: subprocess.Popen[bytes]) -> None:
    """Until the journal shows two requests on fal (QUEUED or RUNNING), or the run ends."""
    while proc.poll() is None:
        try:
            now = states(out)
        except Exception:  # the journal is not there yet, or busy: look again
            now = Counter()
        if now[S.QUEUED] + now[S.RUNNING] >= 2:
            return
        time.sleep(0.005)


def _starts(out: Path) -> int:
    try:
        return (out / "run.log").read_text().count(" start: ")
    except FileNotFoundError:
        return 0
