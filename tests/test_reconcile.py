"""`batchgen reconcile`: a folder run against `batchgen emulator` (on loopback, in a thread,
outliving the run as fal does), its bill fetched from the emulator's billing events and set
beside the folder's estimate; and the paths that must change nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_run_support import emulator_thread, stats, write_manifest

from batchgen.billing.compare import Event, Folder, FolderJob, compare, render_text
from batchgen.cli import main
from batchgen.journal.writer import JOURNAL_NAME, Journal
from batchgen.outputs.gallery_page import money

ADMIN = "admin-reconcile-test"
ORDINARY = "kid-1234:s3cr3t-value-that-must-not-leak"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "BATCHGEN_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    # seed 1 drops some submits after making their requests: billed, and (the folder's run
    # keeps no payloads on the server, so its history cannot name them) unknown to the folder.
    with emulator_thread(time_scale=0.001, faults="submitdrop=0.3", seed=1) as url:
        yield url


@pytest.fixture(scope="module")
def folder(emulator: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("reconcile")
    m = write_manifest(tmp, 6)
    out = tmp / "out"
    args = ["run", str(m), "--endpoint", emulator, "--out", str(out), "--quiet", "--no-store-io"]
    assert main(args) == 0
    return out


def journal_state(out: Path) -> tuple[int, int]:
    with Journal.open_readonly(out / JOURNAL_NAME) as r:
        return len(r.bills()), len(r.events())


def test_without_an_admin_key_one_line_exit_2_and_nothing_changes(
    folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    before, page = journal_state(folder), (folder / "index.html").stat().st_mtime_ns
    monkeypatch.setenv("FAL_KEY", ORDINARY)
    assert main(["reconcile", str(folder)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert "admin key" in line and ORDINARY not in line and "s3cr3t" not in line
    monkeypatch.delenv("FAL_KEY")
    assert main(["reconcile", str(folder), "--json"]) == 2  # no key at all: refused the same
    assert "admin key" in capsys.readouterr().err
    assert journal_state(folder) == before
    assert (folder / "index.html").stat().st_mtime_ns == page


def test_the_bill_equals_what_the_emulator_billed(
    folder: Path,
    emulator: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FAL_KEY", ADMIN)
    assert main(["reconcile", str(folder), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    s = stats(emulator)
    assert report["billed_requests"] == s["billed_requests"] == s["submits_accepted"]
    assert report["billed_usd"] == pytest.approx(s["billed_usd"])
    # Each dropped submit made a request the folder never learnt of; the folder counted each
    # as a possible duplicate in its estimate, so the totals agree.
    assert len(report["unknown_requests"]) == s["submits_dropped"] > 0
    assert report["possible_duplicates"] == s["submits_dropped"]
    assert report["estimated_usd"] == pytest.approx(report["billed_usd"])
    assert report["billed_twice"] == [] and report["not_billed"] == []
    assert report["by_quality"]["low"]["requests"] == 6
    assert report["by_quality"]["low"]["average_usd"] == pytest.approx(0.01)
    with Journal.open_readonly(folder / JOURNAL_NAME) as r:
        bills = r.bills()
        jobs = {j.request_id: j.job_id for j in r.iter_jobs()}
        (event,) = [e for e in r.events() if e[2] == "reconcile"]
    assert len(bills) == s["billed_requests"]
    assert sum(b.cost for b in bills) == pytest.approx(s["billed_usd"])
    assert {b.request_id for b in bills if b.job_id is None} == set(report["unknown_requests"])
    assert all(jobs[b.request_id] == b.job_id for b in bills if b.request_id in jobs)
    assert f"for {s['billed_requests']} requests" in event[3]


def test_the_text_report_says_it_in_lines(
    folder: Path,
    emulator: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FAL_KEY", ADMIN)
    assert main(["reconcile", str(folder)]) == 0
    text = capsys.readouterr().out
    s = stats(emulator)
    n, dropped = s["billed_requests"], s["submits_dropped"]
    assert text.startswith(f"billed by {emulator}: ${n / 100:.4f} for {n} requests\n")
    assert f"the folder's estimate: ${n / 100:.4f}\n" in text
    assert "  low: 6 requests, $0.0100 each on average" in text
    unknown = f"{dropped} request{'s' if dropped > 1 else ''}, ${dropped / 100:.4f}"
    assert f"billed but unknown to the folder: {unknown}" in text
    assert text.rstrip().endswith(f"recorded in {folder / JOURNAL_NAME}")
    with Journal.open_readonly(folder / JOURNAL_NAME) as r:
        assert len(r.bills()) == n  # fetched again: updated, not added twice


def test_a_folder_made_with_emulate_is_refused_with_the_way_to_rehearse_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    m = write_manifest(tmp_path, 1)
    out = tmp_path / "out"
    assert (
        main(["run", str(m), "--emulate", "--time-scale", "0", "--out", str(out), "--quiet"]) == 0
    )
    before = journal_state(out)
    capsys.readouterr()  # the run's own lines
    monkeypatch.setenv("FAL_KEY", ADMIN)
    assert main(["reconcile", str(out)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "--emulate" in line and "batchgen emulator" in line and "--endpoint" in line
    assert journal_state(out) == before


@pytest.mark.parametrize("make", ["empty", "missing", "file"])
def test_a_folder_that_is_not_one_is_a_usage_error(
    tmp_path: Path, make: str, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "x"
    if make == "empty":
        target.mkdir()
    elif make == "file":
        target.write_text("hello")
    assert main(["reconcile", str(target)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "is it a batchgen output folder?" in line
    assert make != "empty" or list(target.iterdir()) == []


def test_an_endpoint_the_folder_never_used_is_refused(
    folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAL_KEY", ADMIN)
    assert main(["reconcile", str(folder), "--endpoint", "http://127.0.0.1:9"]) == 2
    assert "made no requests at http://127.0.0.1:9" in capsys.readouterr().err


def test_compare_names_requests_billed_twice_and_counted_but_not_billed() -> None:
    """Cases the emulator never produces (it bills each request once, and every completion)."""
    jobs = {j: FolderJob(j, q, 0.05, 1) for j, q in (("j1", "medium"), ("j2", "high"))}
    folder = Folder(server="fal", owners={"r1": "j1", "r2": "j2"}, paid={"r1", "r2"}, jobs=jobs)
    events = [
        Event("r1", 0.05, billed_at="2026-01-01T00:00:00+00:00"),
        Event("r1", 0.05, billed_at="2026-01-01T00:00:09+00:00"),
        Event("r9", 0.02),
    ]
    rec = compare(folder, events)
    assert rec.billed_usd == pytest.approx(0.12) and rec.billed_requests == 2
    assert rec.estimated_usd == pytest.approx(0.10)
    assert rec.billed_twice == ["r1"] and rec.unknown_requests == ["r9"]
    assert rec.not_billed == ["r2"]
    assert rec.by_quality == {"medium": (1, pytest.approx(0.10)), "unknown": (1, 0.02)}
    assert [(b.request_id, b.n) for b in rec.rows] == [("r1", 0), ("r1", 1), ("r9", 0)]
    text = render_text(rec, "OUT/journal.sqlite")
    assert "billed by fal: $0.1200 for 2 requests" in text
    assert "the folder's estimate: $0.1000 (+$0.0200 billed)" in text
    assert "billed more than once: 1 request\n    r1" in text
    assert "counted as paid by the folder, not billed: 1 request\n    r2" in text


def test_status_and_the_gallery_show_the_bill_reconcile_recorded(
    folder: Path,
    emulator: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FAL_KEY", ADMIN)
    assert main(["reconcile", str(folder), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert main(["status", str(folder), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["billed_usd"] == pytest.approx(report["billed_usd"]) == stats(emulator)["billed_usd"]
    assert doc["billed_requests"] == report["billed_requests"] > 6  # dropped submits too
    assert doc["billed_server"] == emulator and doc["reconciled_before_last_run"] is False
    assert main(["status", str(folder)]) == 0
    n = report["billed_requests"]
    assert f"  billed by {emulator} ${n / 100:.2f} for {n} requests, reconciled " in (
        capsys.readouterr().out
    )
    page = (folder / "index.html").read_text()  # rewritten by reconcile: the header says it
    assert f"billed by {emulator} <b>{money(n / 100)}</b> for {n} requests, reconciled " in page
