"""What `batchgen run` says and asks before it spends, and how it ends: the
announcement, the confirmation over a cost threshold, the directions at the end, and a second
manifest file building on a folder."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from test_run_signals import REPO, env
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


def test_a_run_says_what_it_will_do_before_it_submits_and_where_it_all_is_after(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = tmp_path / "noquality.csv"
    m.write_text("prompt\na red fox\na snowy owl\n")  # no quality column: fal's default, high
    out = tmp_path / "out"
    with emulator_thread(time_scale=0, announce=False) as url:
        assert main(["run", str(m), "--endpoint", url, "--out", str(out), "--yes"]) == 0
    err = capsys.readouterr().err
    first = err.index(f"batchgen: 2 jobs to submit (2 images) to {url}, estimated ~$0.30")
    assert first < err.index("progress:")  # said before anything was sent
    assert f"batchgen: output folder: {out}" in err
    # the plan's notices are said up front too: here, that nobody chose the dearest quality
    assert "batchgen: notice: 2 prompt(s) set no quality, so fal's default applies: high" in err
    assert (
        f"batchgen: images in {out}/images, index {out}/metadata.jsonl, gallery {out}/index.html"
    ) in err


def test_a_run_over_the_threshold_without_a_terminal_is_refused_unless_capped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = write_manifest(tmp_path, 3)
    out = tmp_path / "out"
    with emulator_thread(time_scale=0, announce=False) as url:
        argv = ["run", str(m), "--endpoint", url, "--out", str(out), "--quiet"]
        assert main([*argv, "--confirm-over", "0.01"]) == 2  # pytest's stdin: no terminal
        assert stats(url)["submits_accepted"] == 0
        assert "~$0.03 is over --confirm-over $0.01 and there is no terminal to ask on" in (
            capsys.readouterr().err
        )
        assert main([*argv, "--confirm-over", "0.01", "--max-cost", "5"]) == 0
        assert stats(url)["submits_accepted"] == 3
    assert "not asking (no terminal): ~$0.03 is over --confirm-over $0.01" in (
        capsys.readouterr().err
    )


@pytest.mark.slow
@pytest.mark.parametrize(("answer", "code", "submits"), [("n\n", 130, 0), ("y\n", 0, 3)])
def test_a_run_over_the_threshold_asks_on_the_terminal(
    tmp_path: Path, answer: str, code: int, submits: int
) -> None:
    m = write_manifest(tmp_path, 3)
    out = tmp_path / "out"
    with emulator_thread(time_scale=0, announce=False) as url:
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
            "--confirm-over",
            "0.02",
        ]
        leader, follower = pty.openpty()  # the run's stdin is a terminal
        e = env() | {"FAL_KEY": "test-key"}
        proc = subprocess.Popen(cmd, env=e, cwd=REPO, stdin=follower, stderr=subprocess.PIPE)
        os.close(follower)
        assert proc.stderr is not None
        said = b""
        while b"[y/N]" not in said:
            chunk = proc.stderr.read1(4096)
            assert chunk, said.decode()
            said += chunk
        assert b"submit 3 jobs (3 images) for about $0.03? [y/N]" in said
        os.write(leader, answer.encode())
        rest = proc.communicate(timeout=60)[1]
        os.close(leader)
        assert proc.returncode == code, rest.decode()
        assert stats(url)["submits_accepted"] == submits
    if code:
        assert b"not started: the estimated cost was not confirmed" in rest
        assert states(out) == {S.PENDING: 3}


async def test_a_long_run_refreshes_its_gallery_as_it_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import batchgen
    from batchgen.running import setup

    monkeypatch.setattr(setup, "GALLERY_EVERY_S", 0.1)  # every few minutes, in a real run
    m = write_manifest(tmp_path, 12)
    out = tmp_path / "out"
    seen: list[bool] = []

    def look(event: batchgen.RunEvent) -> None:
        if isinstance(event, batchgen.Saved):
            seen.append((out / "index.html").is_file())

    result = await batchgen.run(
        m, out=out, emulate=True, time_scale=0.05, concurrency=2, on_event=look, environ={}
    )
    assert result.ok and len(seen) == 12
    assert any(seen[:-1])  # the page existed before the run's last image was saved
