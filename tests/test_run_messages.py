"""What `batchgen run` says, as a user reads it: --quiet keeps the notices, a failed --notify
is said on stderr, the files notice says how --inline-uploads sends them, a run with nothing
to do shows no rate or ETA, the summary labels this run's figures and the folder's, the
resume command leaves defaults out, and money reaches the user rounded."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image
from test_run_support import write_manifest

import batchgen
from batchgen.cli import main
from batchgen.commands.progress import Snapshot, bar_postfix, status_line
from batchgen.options import RunOptions
from batchgen.planning.disk import over_limit_text, size_text
from batchgen.planning.gptimage import EDIT
from batchgen.planning.jobs import JobState
from batchgen.planning.pricing import usd
from batchgen.running.notify import end_message
from batchgen.running.stats import RunStats
from batchgen.running.summary import build_summary

TOKEN = "xoxb-0123456789-secret-token"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "BATCHGEN_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("BATCHGEN_NOTIFY_URL", raising=False)


def edit_manifest(folder: Path) -> Path:
    """One edit of a local file: its plan has a notice about how the file travels."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), (1, 100, 200)).save(folder / "a.png", format="PNG")
    path = folder / "m.yaml"
    path.write_text(
        f"name: m\nmodel: {EDIT}\ndefaults: {{quality: low, image_size: square}}\n"
        "prompts: [{prompt: x, image_urls: [a.png]}]\n"
    )
    return path


def rehearse(manifest: Path, out: Path, *flags: str) -> int:
    argv = ["run", str(manifest), "--emulate", "--time-scale", "0", "--out", str(out)]
    return main([*argv, *flags])


def test_quiet_drops_the_progress_and_routine_lines_but_keeps_every_notice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = edit_manifest(tmp_path / "m")
    assert rehearse(m, tmp_path / "out", "--quiet") == 0
    err = capsys.readouterr().err
    assert "batchgen: notice: 1 local file (a.png) will be uploaded to the storage of" in err
    assert "progress:" not in err
    assert "to submit" not in err and "output folder:" not in err  # routine: dropped
    assert "batchgen: done 1, failed 0, unfinished 0" in err  # the summary stays


def test_the_quiet_help_says_what_it_keeps(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--help"]) == 0
    flat = " ".join(capsys.readouterr().out.split())
    said = flat[flat.index("--quiet no ") :]
    assert said.startswith("--quiet no progress bar or progress lines")
    for kept in ("errors", "every notice", "the plan's", "the summary"):
        assert kept in said[:400], kept


def test_the_files_notice_says_inline_uploads_send_data_uris(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = edit_manifest(tmp_path / "m")
    assert rehearse(m, tmp_path / "out", "--inline-uploads") == 0
    err = capsys.readouterr().err
    assert (
        "batchgen: notice: 1 local file (a.png) will be sent inside every request that names"
        " them, as data URIs (--inline-uploads): nothing is uploaded or stored"
    ) in err
    assert "uploaded to" not in err


def test_the_plan_still_says_where_files_go_without_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = edit_manifest(tmp_path / "m")
    assert main(["plan", str(m)]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "will be uploaded to fal storage once each" in said
    assert "(--inline-uploads sends them as data URIs instead)" in said


def test_a_failed_notify_is_said_on_stderr_in_one_line_and_the_exit_code_stands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = write_manifest(tmp_path, 1)
    dead = f"http://127.0.0.1:9/hooks/{TOKEN}"  # nothing listens on the discard port
    assert rehearse(m, tmp_path / "out", "--quiet", "--notify", dead) == 0
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "--notify" in line]
    assert len(said) == 1, err
    assert said[0].startswith("batchgen: notify: --notify (127.0.0.1) failed: ConnectError")
    assert said[0].endswith("(the run's exit code stands)")
    assert TOKEN not in err and "hooks" not in err
    # after the summary it tells of
    assert err.index("batchgen: done 1") < err.index("batchgen: notify:")


def test_a_failed_on_exit_is_said_on_stderr_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = write_manifest(tmp_path, 1)
    assert rehearse(m, tmp_path / "out", "--quiet", "--json", "--on-exit", "false") == 0
    captured = capsys.readouterr()
    assert "batchgen: on-exit: 'false' exited 1 (the run's exit code stands)" in captured.err
    assert '"exit_code": 0' in captured.out


def test_a_progress_line_with_nothing_done_or_to_do_has_no_rate_or_eta() -> None:
    idle = Snapshot(
        pending=0, queued=0, running=0, in_flight=0, done=12, failed=0, window=2, spent=0.0
    )
    line = status_line(idle, total=12, images=0, done_now=0, elapsed=0.3)
    assert "images/min" not in line and "ETA" not in line
    assert line.startswith("progress: done 12/12, failed 0,")
    postfix = bar_postfix(idle, per_min=None, eta=None, room=200)
    assert "images/min" not in postfix and "ETA" not in postfix
    busy = Snapshot(
        pending=4, queued=0, running=0, in_flight=0, done=8, failed=0, window=2, spent=0.0
    )
    line = status_line(busy, total=12, images=0, done_now=0, elapsed=1.0)
    assert "0.0 images/min" in line and "ETA ?" in line  # work waits: the pace is news


def test_a_run_with_nothing_to_do_prints_no_rate_or_eta(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = write_manifest(tmp_path, 2)
    out = tmp_path / "out"
    assert rehearse(m, out) == 0
    capsys.readouterr()
    assert rehearse(m, out) == 0
    err = capsys.readouterr().err
    assert "batchgen: nothing to submit" in err
    progress = [line for line in err.splitlines() if line.startswith("progress:")]
    assert progress, err
    for line in progress:
        assert "images/min" not in line and "ETA" not in line, line


def test_the_resume_flags_leave_out_values_that_are_the_default_anyway() -> None:
    given = {"emulate": True, "time_scale": "0.02", "seed": "0", "watch": "stream"}
    assert RunOptions.parse(given).resume_flags() == ["--emulate"]
    chosen = {"emulate": True, "time_scale": "0", "seed": "3", "max_cost": "5"}
    assert RunOptions.parse(chosen).resume_flags() == [
        "--emulate",
        "--max-cost",
        "5",
        "--time-scale",
        "0",
        "--seed",
        "3",
    ]


def test_the_suggested_command_repeats_no_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = write_manifest(tmp_path, 1)
    out = tmp_path / "out"
    argv = ["run", str(m), "--emulate", "--out", str(out), "--quiet", "--time-scale", "0.02"]
    assert main([*argv, "--seed", "0", "--faults", "content_policy=1"]) == 1
    err = capsys.readouterr().err
    (hint,) = [line for line in err.splitlines() if "to retry the failures:" in line]
    assert hint.endswith(
        f"batchgen run {m} --out {out} --emulate --faults content_policy=1 --retry-failed"
    )


def test_the_summary_labels_the_folders_totals_and_this_runs_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = write_manifest(tmp_path, 6)
    out = tmp_path / "out"
    flags = ["--quiet", "--faults", "runner_error=0.5", "--seed", "1", "--max-attempts", "9"]
    assert rehearse(m, out, *flags) == 0
    first = json.loads(rehearse_json(m, out, capsys))  # nothing left to do
    assert first["retried"] > 0  # the folder's, from the first run
    assert (first["submitted_run"], first["retried_run"]) == (0, 0)
    assert (first["possible_duplicates_run"], first["lost_results_run"]) == (0, 0)
    lines = first["summary"]
    assert lines[1] == (
        "this run: submitted 0, retried 0, possible duplicate charges 0, lost results 0"
        " (resubmitted)"
    )
    assert lines[2] == (
        f"folder totals (all runs): retried {first['retried']}, possible duplicate charges"
        f" {first['possible_duplicates']}, lost results {first['lost_results']}"
    )


def rehearse_json(manifest: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert rehearse(manifest, out, "--quiet", "--json") == 0
    return capsys.readouterr().out


def test_money_reaches_the_user_rounded_to_a_millionth() -> None:
    s = build_summary(
        {JobState.DOWNLOADED: 402},
        failures=[],
        journal_retries=0,
        possible_duplicates=0,
        lost=0,
        spent=0.0,
        stats=RunStats(),
        rehearsal=4.0199999999999925,  # 402 × $0.01, summed as floats
        rehearsal_run=0.1 + 0.2,
        wall_seconds=1.0,
        stop=None,
    )
    assert (s.rehearsal, s.rehearsal_run) == (4.02, 0.3)
    assert "4.0199" not in repr(s) and "0.30000000000000004" not in repr(s)
    message = end_message(
        replace(s, spent=0.0123456789, spent_run=0.0123456789), name="m", images=1, exit_code=0
    )
    # the same precision as --json and status: a millionth, everywhere
    assert (message["spent_usd"], message["spent_run_usd"]) == (0.012346, 0.012346)
    assert usd(4.0199999999999925) == 4.02


def test_a_run_result_holds_rounded_money(tmp_path: Path) -> None:
    m = write_manifest(tmp_path, 3)
    result = batchgen.run_sync(m, out=tmp_path / "out", emulate=True, time_scale=0)
    for figure in (result.spent, result.spent_run, result.rehearsal):
        assert figure == usd(figure)
    assert result.rehearsal == 0.03


def test_sizes_are_printed_in_one_unit_system() -> None:
    assert [size_text(n) for n in (900, 812 * 1024, 50 * 1024**2, 52_400_000, 3.4 * 1024**3)] == [
        "900 bytes",
        "812 KiB",
        "50 MiB",
        "50 MiB",
        "3.4 GiB",
    ]
    # a size and the limit it passes: the same units, never shown equal
    assert over_limit_text(55_000_000, 50 * 1024**2) == ("52.5 MiB", "50 MiB")
    assert over_limit_text(50 * 1024**2 + 1, 50 * 1024**2) == (
        "52,428,801 bytes",
        "52,428,800 bytes",
    )


def test_a_reference_over_the_limit_is_told_in_the_limits_units(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = edit_manifest(tmp_path / "m")
    with (tmp_path / "m" / "a.png").open("ab") as f:
        f.truncate(55_000_000)  # PNG's header, then zeros: too big before it is read
    assert main(["plan", str(m)]) == 2
    err = capsys.readouterr().err
    assert "'a.png' is 52.5 MiB; a reference image may be at most 50 MiB" in err
    assert " MB" not in err


def test_an_image_over_the_download_cap_says_both_in_the_same_units() -> None:
    from batchgen.outputs.download import _too_large

    assert str(_too_large(50_000_000, 60_000_000)) == (
        "image of 57.2 MiB is over the cap of 47.7 MiB (--max-image-bytes 50000000)"
    )
    assert str(_too_large(1000)) == "image over the cap of 1000 bytes (--max-image-bytes 1000)"


def test_a_result_waiting_for_its_download_still_counts_as_work_left() -> None:
    waiting = Snapshot(
        pending=0,
        queued=0,
        running=0,
        in_flight=0,
        done=0,
        failed=0,
        window=2,
        spent=0.0,
        total=12,
    )
    postfix = bar_postfix(waiting, per_min=0.0, eta=None, room=200)
    assert "ETA ?" in postfix
    assert "ETA ?" in status_line(waiting, total=12, images=0, done_now=0, elapsed=1.0)
