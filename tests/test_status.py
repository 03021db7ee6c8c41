"""``batchgen status``: the report a user reads (or a script parses) about an output folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_journal_durability import start_child as kill_9_child
from test_journal_support import FakeClock, handle, open_journal, spec

from batchgen.cli import main
from batchgen.journal.writer import Journal
from batchgen.outputs.status import build_report, render_text

MANIFEST = "/data/manifests/my cats.yaml"  # recorded absolute, quoted in the command


def _populate(out: Path, clock: FakeClock | None = None) -> Journal:
    """A run caught mid-way: one downloaded, two failed, two in flight, one pending."""
    kw = {"clock": clock} if clock else {}
    j = open_journal(out / "journal.sqlite", manifest_path=MANIFEST, **kw)
    j.add_jobs([spec(i) for i in range(6)], cost_of=lambda s: 0.25)
    rows = j.claim(5)
    for i, r in enumerate(rows):
        j.set_submitted(r.job_id, handle(f"req-{i}"))
        if clock:
            clock.now += 60
    j.set_result(rows[0].job_id, {"images": []})
    j.mark_downloaded(rows[0].job_id, [])
    j.fail(rows[1].job_id, "content_policy_violation", "the prompt was refused")
    j.fail(rows[2].job_id, "content_policy_violation", "refused again")
    j.transition(rows[3].job_id, j.get(rows[3].job_id).state.RUNNING)  # type: ignore[union-attr]
    return j


def test_no_journal_is_one_clear_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("batchgen: no journal at ") and "Traceback" not in err


def test_the_report_while_a_run_is_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    with _populate(out) as j:
        assert main(["status", str(out)]) == 0
        text = capsys.readouterr().out
        # The writer is not disturbed by the reader: it keeps committing.
        j.claim(1)
        assert main(["status", str(out), "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
    assert "6 jobs" in text
    assert "downloaded 1" in text and "failed 2" in text and "queued 1" in text
    assert "spent ~$0.25, in flight ~$0.50, still to submit ~$0.25" in text
    assert "content_policy_violation: 2" in text and "refused again" in text
    assert "req-3" in text and "req-4" in text and "in flight: 2 requests" in text
    assert f"a run is in progress (pid {os.getpid()})" in text
    assert f"batchgen run '/data/manifests/my cats.yaml' --out {out}" in text
    assert doc["counts"]["SUBMITTING"] == 1 and doc["counts"]["PENDING"] == 0
    assert doc["running"] is True and doc["done"] is False
    assert doc["failures"][0]["error_class"] == "content_policy_violation"
    assert doc["failures"][0]["count"] == 2
    assert doc["resume_command"] == f"batchgen run '/data/manifests/my cats.yaml' --out {out}"


def test_in_flight_requests_show_their_age_oldest_first(tmp_path: Path) -> None:
    clock = FakeClock(1000.0)
    out = tmp_path / "out"
    _populate(out, clock).close()
    with Journal.open_readonly(out / "journal.sqlite") as r:
        rep = build_report(r, out, now=1000.0 + 600, writer_pid=None)
    assert [(f.request_id, f.state, f.age_s) for f in rep.in_flight] == [
        ("req-3", "RUNNING", 420.0),
        ("req-4", "QUEUED", 360.0),
    ]
    assert "req-3  running      7m  job " in render_text(rep)


def test_an_interrupted_run_says_how_to_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    j = _populate(out)
    j.close()  # closed without an exit code is still a stop; a crash leaves ended_at empty
    assert main(["status", str(out)]) == 0
    assert f"stopped; to resume: batchgen run '/data/manifests/my cats.yaml' --out {out}" in (
        capsys.readouterr().out
    )


def test_a_budget_stop_says_to_raise_the_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    _populate(out).close(exit_code=3)
    assert main(["status", str(out)]) == 0
    assert "stopped at the budget; to continue, raise it: batchgen run" in capsys.readouterr().out


def test_a_finished_run_with_failures_offers_retry_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    with open_journal(out / "journal.sqlite", manifest_path="/data/m.yaml") as j:
        j.add_jobs([spec(0), spec(1)])
        a, b = j.claim(2)
        j.fail(a.job_id, "validation", "bad size")
        j.set_submitted(b.job_id, handle("r"))
        j.set_result(b.job_id, {"images": []})
        j.mark_downloaded(b.job_id, [])
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert (
        f"finished; to retry the failures: batchgen run /data/m.yaml --out {out} --retry-failed"
        in text
    )


def test_jobs_dropped_from_the_manifest_are_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    with open_journal(out / "journal.sqlite") as j:
        j.add_jobs([spec(0), spec(1), spec(2)])
    with open_journal(out / "journal.sqlite", sha="e" * 64, allow_manifest_change=True) as j:
        j.add_jobs([spec(0)])
    assert main(["status", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["not_in_manifest"] == {"PENDING": 2} and doc["total"] == 1
    assert main(["status", str(out)]) == 0
    assert "2 jobs are no longer in the manifest and will not run (pending 2)" in (
        capsys.readouterr().out
    )


def test_a_killed_run_reads_as_interrupted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    proc = kill_9_child(out / "journal.sqlite", "kill-after-submit")
    proc.communicate(timeout=30)
    # A kill -9 never reaches close(): ended_at stays empty and the lock died with the process.
    assert main(["status", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["running"] is False and doc["last_run"]["ended_at"] is None
    assert doc["in_flight"][0]["request_id"] == "req-p0"
    assert main(["status", str(out)]) == 0
    assert "interrupted; to resume: batchgen run MANIFEST --out" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("options", "env", "flags"),
    [
        ({}, {"FAL_KEY": "k"}, ""),
        ({"emulate": True}, {}, " --emulate"),  # the rehearsal's own pace is not repeated
        (
            {"emulate": True, "time_scale": 1.0, "faults": "flaky,truncate=0.5"},
            {},
            " --emulate --faults flaky,truncate=0.5 --time-scale 1",
        ),
        ({"endpoint": "http://h:8080"}, {}, " --endpoint http://h:8080"),
        ({}, {"BATCHGEN_ENDPOINT": "http://h:1"}, " --endpoint http://h:1"),
        ({"concurrency": "8", "max_cost": "5"}, {"FAL_KEY": "k"}, " --concurrency 8 --max-cost 5"),
        (  # how the requests asked fal; the stop time, the URL and the command are not kept
            {
                "priority": "low",
                "start_timeout": 30.0,
                "media_expiry": 900,
                "allow_fallbacks": True,
                "no_store_io": True,
                "stop_at": "07:00",
                "notify": "https://hooks.example.com/T0KEN-123",
                "on_exit": "true",
            },
            {"FAL_KEY": "k"},
            " --priority low --start-timeout 30 --media-expiry 900 --allow-fallbacks --no-store-io",
        ),
        ({"watch": "poll"}, {"FAL_KEY": "k"}, " --watch poll"),
        (  # the receiver's default address is not repeated; a fixed one and the URL are
            {"endpoint": "http://h:1", "watch": "webhook"},
            {},
            " --endpoint http://h:1 --watch webhook",
        ),
        (
            {
                "watch": "webhook",
                "webhook_listen": "0.0.0.0:8787",
                "webhook_url": "https://hooks.example.com/",
            },
            {"FAL_KEY": "k"},
            " --watch webhook --webhook-listen 0.0.0.0:8787 --webhook-url https://hooks.example.com/",
        ),
    ],
)
def test_the_resume_command_keeps_the_flags_that_decide_where_and_how_much(
    tmp_path: Path, options: dict[str, object], env: dict[str, str], flags: str
) -> None:
    """Resumed without --emulate a rehearsal would run for real; without --max-cost, uncapped.
    The flags come from the run's options as the journal recorded them."""
    from batchgen.config import build_settings
    from batchgen.journal.schema import RunInfo
    from batchgen.manifest import load_manifest
    from batchgen.outputs.status import resume_command

    path = tmp_path / "m.yaml"
    path.write_text("prompts: [a red fox]\n")
    recorded = build_settings(options, env, load_manifest(path)).public()
    assert "T0KEN" not in json.dumps(recorded)
    run = RunInfo(1, "0" * 64, "/m.yaml", "t", recorded, 0.0, 0.0, None, None)
    assert resume_command(Path("/o"), run) == f"batchgen run /m.yaml --out /o{flags}"
    capped = resume_command(Path("/o"), run, max_cost=False)
    assert "--max-cost" not in capped and capped.startswith("batchgen run /m.yaml --out /o")


def test_a_folder_from_before_the_recorded_flags_still_resumes_where_it_ran() -> None:
    from batchgen.journal.schema import RunInfo
    from batchgen.outputs.status import resume_command

    old = {"target": "emulate", "time_scale": 0.02, "concurrency": 8, "max_cost": 5.0}
    run = RunInfo(1, "0" * 64, "/m.yaml", "t", old, 0.0, 0.0, None, None)
    expected = "batchgen run /m.yaml --out /o --emulate --concurrency 8 --max-cost 5"
    assert resume_command(Path("/o"), run) == expected


def test_the_bill_once_reconciled_beside_the_estimate_and_marked_stale_after_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`batchgen reconcile` records fal's bill (here written as it writes it); status shows it,
    for the server the folder's last run went to, and says when a later run is missing."""
    import time

    from batchgen.journal.bills import StoredBill, reconcile_head, record_bills

    out = tmp_path / "out"
    _populate(out, FakeClock(1000.0)).close(exit_code=1)  # a run long ago
    assert main(["status", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["billed_usd"] is None and doc["reconciled_at"] is None
    assert doc["billed_requests"] is None and doc["spent_usd"] == 0.25  # unchanged fields
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "billed by" not in text and "spent ~$0.25" in text and "(estimates)" in text

    at = time.time() - 120
    bills = [StoredBill("req-0", 0, None, None, None, 0.25)]
    bills += [StoredBill("req-9", n, None, None, None, 0.125) for n in (0, 1)]  # billed twice
    path = out / "journal.sqlite"
    record_bills(path, "fal", bills, f"{reconcile_head('fal')}$0.5000 for 2 requests", now=at)
    elsewhere = [StoredBill("x", 0, None, None, None, 9.0)]  # a server the folder's run left
    record_bills(path, "http://127.0.0.1:9", elsewhere, "billed by http://127.0.0.1:9: ...")
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(at))
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"  billed by fal $0.50 for 2 requests, reconciled {when}\n" in text
    assert "spent ~$0.25, in flight ~$0.50, still to submit ~$0.25 (estimates)" in text
    assert main(["status", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["billed_usd"], doc["billed_requests"], doc["billed_server"]) == (0.5, 2, "fal")
    assert doc["reconciled_at"] == pytest.approx(at) and doc["spent_usd"] == 0.25
    assert doc["reconciled_before_last_run"] is False and "billed" not in doc

    with open_journal(path, manifest_path=MANIFEST):  # another run, writing now
        assert main(["status", str(out)]) == 0
        text = capsys.readouterr().out
        assert main(["status", str(out), "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
    assert (
        f"billed by fal $0.50 for 2 requests, reconciled {when}, before the last run started"
        f" (its requests: batchgen reconcile {out})" in text
    )
    assert doc["reconciled_before_last_run"] is True and doc["running"] is True
