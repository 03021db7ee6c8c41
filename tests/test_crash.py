"""kill -9 a real `batchgen run` at random moments, resume each time, and check that nothing
was paid for twice, nothing finished was lost, and no half-written file is in place."""

from __future__ import annotations

import hashlib
import io
import random
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image
from pyarrow import json as pajson
from test_run_signals import REPO, command, env
from test_run_support import emulator_thread, states, stats, write_manifest

from batchgen.emulator.model import canonical_input_key
from batchgen.journal.writer import JOURNAL_NAME, Journal
from batchgen.outputs.index import METADATA, read_index, read_rows
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
    assert len(list(read_rows(out / METADATA))) == 40  # one row per image, whatever the kills
    index = {r["file_name"]: r for r in read_index(out)}
    files = sorted(p for p in (out / "images").rglob("*") if p.is_file())
    assert len(files) == len(index) == 40
    for f in files:
        row = index[f.relative_to(out).as_posix()]
        assert hashlib.sha256(f.read_bytes()).hexdigest() == row["sha256"]
        with Image.open(f) as im:
            im.verify()  # complete and decodable: never a half-written image in place


@pytest.mark.timeout(180)
def test_kills_while_saving_leave_one_index_row_per_image(tmp_path: Path) -> None:
    # Each kill lands while images are being saved, where a row can be on disk before the
    # journal knows its job was downloaded: the index must still end with one row per image,
    # every line whole, as Hugging Face's ImageFolder loader reads it.
    n = 300
    m = write_manifest(tmp_path, n)
    out = tmp_path / "out"
    rng = random.Random(20261204)
    with emulator_thread(time_scale=0.02, concurrency_limit=40) as url:
        cmd = command(m, url, out, "--concurrency", "40")
        for _ in range(2):
            proc = subprocess.Popen(cmd, env=env(), cwd=REPO, stderr=subprocess.DEVNULL)
            _wait_for_downloads(out, proc, rng.randint(20, 120))
            time.sleep(rng.uniform(0.0, 0.3))
            proc.kill()
            proc.wait()
        final = subprocess.run(cmd, env=env(), cwd=REPO, capture_output=True, timeout=120)
    assert final.returncode == 0, final.stderr.decode()
    assert states(out) == {S.DOWNLOADED: n}
    lines = (out / METADATA).read_bytes().splitlines()
    assert len(lines) == n
    assert len({r["file_name"] for r in read_rows(out / METADATA)}) == n
    table = pajson.read_json(io.BytesIO((out / METADATA).read_bytes()))
    assert table.num_rows == n
    datasets = pytest.importorskip("datasets")  # not a dependency: checked where it is there
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    assert loaded.num_rows == n


def _wait_for_downloads(out: Path, proc: subprocess.Popen[bytes], n: int) -> None:
    """Until the journal shows ``n`` jobs downloaded, or the run ends."""
    while proc.poll() is None:
        try:
            if states(out)[S.DOWNLOADED] >= n:
                return
        except Exception:  # the journal is not there yet, or busy: look again
            pass
        time.sleep(0.005)


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
