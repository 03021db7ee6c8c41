"""A server that lies, end to end: through the real scheduler and downloader (and `main(argv)`),
against the emulator's hostile faults. The promises: no file is written outside the output
folder whatever a server says; a URL that is not http(s) or data fails its job with a recorded
reason while the run goes on; a content-policy refusal is final whatever its headers say."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from test_run_support import states, write_manifest
from test_scheduler_support import Rig, submits_explained

from batchgen.cli import main
from batchgen.emulator.faults import EVIL_NAMES
from batchgen.journal.writer import JOURNAL_NAME, Journal
from batchgen.outputs.index import read_failures, read_index
from batchgen.planning.jobs import JobState
from batchgen.running.events import Failed, Requeued, Saved

S = JobState
ETC_X = Path("/etc/x")  # where EVIL_NAMES' absolute name points
PASSWD = Path("/etc/passwd")  # where the file_url fault points


def stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:
        return None


def stray_files(root: Path, out: Path) -> set[Path]:
    """Files below ``root`` that are neither the manifest nor inside ``out``."""
    return {
        p
        for p in root.rglob("*")
        if p.is_file() and not p.is_relative_to(out) and p.suffix != ".yaml"
    }


def no_copy_of(secret: Path, root: Path) -> bool:
    data = secret.read_bytes() if secret.is_file() else None
    return all(f.read_bytes() != data for f in root.rglob("*") if f.is_file())


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "BATCHGEN_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


def test_a_hostile_file_name_never_places_a_file(tmp_path: Path) -> None:
    # The output folder sits three levels down, so "../../../evil.png" joined to the folder,
    # to its images/ or to images/<prompt>/ (wherever a careless client might join it) lands
    # inside tmp_path, where the test can see it. The absolute name aims at /etc/x itself.
    assert EVIL_NAMES == ("../../../evil.png", "/etc/x")
    m = write_manifest(tmp_path, 4)
    out = tmp_path / "a" / "b" / "c" / "out"
    etc_x = stat_or_none(ETC_X)
    code = main(
        [
            "run",
            str(m),
            "--emulate",
            "--faults",
            "evil_name=1",
            "--time-scale",
            "0",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    # First what matters most: no file went anywhere but the output folder.
    assert not list(tmp_path.rglob("evil.png"))
    assert stray_files(tmp_path, out) == set()
    assert stat_or_none(ETC_X) == etc_x
    assert code == 0
    assert states(out) == {S.DOWNLOADED: 4}
    # The server really said it, for every job, both names.
    with Journal.open_readonly(out / JOURNAL_NAME) as j:
        said = Counter(img["file_name"] for r in j.iter_jobs() for img in r.result["images"])
    assert said == {name: 2 for name in EVIL_NAMES}
    images = {p for p in (out / "images").rglob("*") if p.is_file()}
    assert len(images) == 4
    assert {out / r["file_name"] for r in read_index(out)} == images


async def test_a_file_url_fails_its_job_and_the_run_goes_on(tmp_path: Path) -> None:
    rig = Rig(tmp_path, 8, emulator={"faults": "file_url=0.5", "seed": 3})
    r = await rig.run(concurrency="4")
    assert r.error is None
    told = rig.stats()["results_file_url"]
    assert 0 < told < 8  # some results pointed at /etc/passwd, some were honest
    assert rig.states() == {S.FAILED: told, S.DOWNLOADED: 8 - told}
    assert len(r.of(Saved)) == 8 - told
    failed = r.of(Failed)
    assert {e.reason for e in failed} == {"download_bad_url"}
    assert all("file:///etc/passwd" in e.message for e in failed)
    rows = read_failures(rig.out)
    assert {f["job_id"] for f in rows} == {e.job_id for e in failed}
    assert {f["class"] for f in rows} == {"download_bad_url"}
    # Refused, not retried: one request per job, no resubmit, nothing read from the disk.
    assert r.of(Requeued) == []
    assert rig.stats()["submits_accepted"] == 8
    submits_explained(rig, [r])
    assert no_copy_of(PASSWD, rig.out)
    assert stray_files(tmp_path, rig.out) == set()
    rig.check_folder()


async def test_a_retryable_content_policy_refusal_is_final(tmp_path: Path) -> None:
    # Every refusal says X-Fal-Retryable: true. Believing it pays again for a refusal.
    rig = Rig(tmp_path, 5, emulator={"faults": "content_policy=1,policy_retryable=1"})
    r = await rig.run(concurrency="5", max_attempts=3)
    assert r.error is None
    stats = rig.stats()
    assert sorted(stats["submits_per_input"].values()) == [1] * 5  # never paid for again
    assert stats["refusals_retryable"] == 5  # though every refusal said "retry me"
    assert r.of(Requeued) == []
    assert rig.states() == {S.FAILED: 5}
    assert r.sched.stats.failed == {"content_policy_violation": 5}  # the summary's count
    rows = read_failures(rig.out)
    assert len(rows) == 5 and {f["class"] for f in rows} == {"content_policy_violation"}
    assert all(f["attempts"] == 1 for f in rows)
    rig.check_folder()
