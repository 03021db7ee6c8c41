"""What `batchgen run` says and asks before it spends, and how it ends (issue 11): the
announcement, the confirmation over a cost threshold, the directions at the end, and a second
manifest file building on a folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_run_support import emulator_thread, states, stats, write_manifest

from batchgen.cli import main
from batchgen.journal.writer import JOURNAL_NAME, Journal
from batchgen.planning.jobs import JobState

S = JobState


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "BATCHGEN_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FAL_KEY", "test-key")


def test_a_copy_of_a_manifest_builds_on_its_folder_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = write_manifest(tmp_path, 3)
    second = tmp_path / "t_v2.yaml"  # cp t.yaml t_v2.yaml, then one more value
    second.write_text(first.read_text().replace("i: [0, 1, 2]", "i: [0, 1, 2, 3]"))
    out = tmp_path / "out"
    with emulator_thread(time_scale=0, announce=False) as url:
        base = ["--endpoint", url, "--out", str(out), "--quiet"]
        assert main(["run", str(first), *base]) == 0
        capsys.readouterr()
        assert main(["run", str(second), *base]) == 2  # another file: refused, naming the way
        err = capsys.readouterr().err
        assert "holds a run of another manifest" in err and "--reuse-folder" in err
        assert main(["run", str(second), *base, "--reuse-folder"]) == 0
        assert stats(url)["submits_accepted"] == 4  # the three shared jobs were kept
    assert states(out) == {S.DOWNLOADED: 4}
    with Journal.open_readonly(out / JOURNAL_NAME) as j:
        used = [run.manifest_path for run in j.runs()]
    assert used == [str(first), str(second)]  # which manifest each run used (not the refused)
