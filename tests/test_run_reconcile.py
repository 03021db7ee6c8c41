"""`batchgen run --reconcile`: the run, then its folder's bill, fetched from the `batchgen
emulator` it ran against (on loopback, in a thread, one per test so its bill is the test's
own) and recorded as `batchgen reconcile` records it; what it does without an admin key, with
--emulate, and when the reconcile is interrupted."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_run_support import emulator_thread, stats, write_manifest

from batchgen.cli import main
from batchgen.journal.writer import JOURNAL_NAME, Journal

ADMIN = "admin-run-reconcile"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "BATCHGEN_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def emulator() -> Iterator[str]:
    with emulator_thread(time_scale=0.001) as url:
        yield url


def run_args(tmp_path: Path, emulator: str, *extra: str) -> list[str]:
    m = write_manifest(tmp_path, 3)
    return ["run", str(m), "--endpoint", emulator, "--out", str(tmp_path / "out"), *extra]


def bills(out: Path) -> int:
    with Journal.open_readonly(out / JOURNAL_NAME) as r:
        return len(r.bills())


def test_the_run_then_its_bill_in_the_summary_status_and_gallery(
    tmp_path: Path,
    emulator: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FAL_KEY", ADMIN)
    assert main(run_args(tmp_path, emulator, "--quiet", "--reconcile")) == 0
    err = capsys.readouterr().err
    out = tmp_path / "out"
    s = stats(emulator)
    assert s["billed_requests"] == 3
    summary, bill = err.split(f"batchgen: billed by {emulator}: ", 1)
    assert "batchgen: done 3, failed 0, unfinished 0 in " in summary  # the run's, first
    assert bill.startswith("$0.0300 for 3 requests\n")
    assert "batchgen: the folder's estimate: $0.0300\n" in err
    assert f"batchgen: recorded in {out / JOURNAL_NAME}\n" in err
    assert bills(out) == 3
    assert main(["status", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["billed_usd"], doc["billed_requests"]) == (pytest.approx(0.03), 3)
    assert doc["billed_server"] == emulator and doc["reconciled_before_last_run"] is False
    page = (out / "index.html").read_text()
    assert f"billed by {emulator} <b>$0.030</b> for 3 requests, reconciled " in page


def test_json_carries_the_bill(
    tmp_path: Path,
    emulator: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FAL_KEY", ADMIN)
    assert main(run_args(tmp_path, emulator, "--quiet", "--json", "--reconcile")) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["exit_code"] == 0 and doc["done"] == 3 and doc["reconcile_error"] is None
    bill = doc["reconcile"]
    assert bill["server"] == emulator and bill["billed_requests"] == 3
    assert bill["billed_usd"] == pytest.approx(stats(emulator)["billed_usd"])
    assert bill["estimated_usd"] == pytest.approx(0.03) and bill["unknown_requests"] == []
    assert "billed by" not in captured.err  # the report is in the JSON only


def test_without_an_admin_key_one_notice_and_the_runs_exit_code(
    tmp_path: Path, emulator: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The emulator is sent the stand-in key a keyless --endpoint run sends it: not an
    admin key, so the bill is refused, said in one line; the run itself went well."""
    assert main(run_args(tmp_path, emulator, "--quiet", "--reconcile")) == 0
    err = capsys.readouterr().err
    (notice,) = [line for line in err.splitlines() if "reconcile" in line]
    assert notice.startswith("batchgen: --reconcile: not reconciled: ")
    assert "admin key" in notice and "admin-" in notice
    assert f"FAL_KEY=<admin key> batchgen reconcile {tmp_path / 'out'} --endpoint {emulator}" in (
        notice
    )
    assert bills(tmp_path / "out") == 0
    assert "billed by" not in (tmp_path / "out" / "index.html").read_text()
    # The same with --json: the notice on stderr, and in the object beside the run's result.
    m = write_manifest(tmp_path, 3)
    args = ["run", str(m), "--endpoint", emulator, "--out", str(tmp_path / "out2")]
    assert main([*args, "--quiet", "--json", "--reconcile"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["exit_code"] == 0 and doc["reconcile"] is None
    assert "admin key" in doc["reconcile_error"] and doc["reconcile_error"] in captured.err


def test_with_emulate_refused_before_any_folder_is_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = write_manifest(tmp_path, 1)
    out = tmp_path / "out"
    assert main(["run", str(m), "--emulate", "--out", str(out), "--reconcile"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("batchgen: --reconcile does not go with --emulate")
    assert "batchgen emulator" in line and "--endpoint URL" in line
    assert not out.exists()


def test_a_ctrl_c_during_the_reconcile_stops_it_only(
    tmp_path: Path,
    emulator: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """What asyncio.run does on a Ctrl-C, cancel the main task, done while the bill is being
    fetched: the run's JSON is still printed and its exit code kept; nothing is recorded."""
    from batchgen.commands import reconcile as command

    async def cancelled(*args: Any, **kwargs: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(1)

    monkeypatch.setattr(command, "reconcile_folder", cancelled)
    monkeypatch.setenv("FAL_KEY", ADMIN)
    assert main(run_args(tmp_path, emulator, "--quiet", "--json", "--reconcile")) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["done"] == 3 and doc["reconcile"] is None
    assert doc["reconcile_error"].startswith("--reconcile: not reconciled: interrupted;")
    assert bills(tmp_path / "out") == 0
