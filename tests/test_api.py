"""The Python API (`import batchgen`): its pinned surface, and a notebook's use of it end to end
through the built-in emulator: load, plan, run with an event callback, read the index."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from test_run_support import emulator_thread, states, stats, write_manifest

import batchgen
from batchgen.cli import build_parser
from batchgen.journal.writer import JOURNAL_NAME, Journal
from batchgen.options import RunOptions
from batchgen.outputs.index import METADATA
from batchgen.outputs.scan import SUPERSEDING
from batchgen.planning.gptimage import PRESETS
from batchgen.planning.jobs import JobState

S = JobState
REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "manifests"
BAD = Path(__file__).resolve().parent / "bad_manifests"
NO_KEY: dict[str, str] = {}  # an injected environment: the tests never read os.environ

PUBLIC = {
    # run a manifest
    "load_manifest",
    "plan",
    "run",
    "run_sync",
    "read_index",
    "iter_index",
    "read_failures",
    # what they return
    "Manifest",
    "PlanSummary",
    "RunResult",
    "StopReason",
    "__version__",
    # what on_event receives
    "RunEvent",
    "Snapshot",
    "Planned",
    "Resumed",
    "Submitted",
    "Started",
    "Finished",
    "Saved",
    "Retrying",
    "Requeued",
    "Failed",
    "WindowChanged",
    "BudgetReached",
    "Stopping",
    "Unreachable",
    "Reachable",
    "Ready",
    "WebhooksSilent",
    # what they raise
    "BatchgenError",
    "UsageError",
    "ManifestError",
    "Problem",
    "JournalError",
    "AuthError",
    "AccountLocked",
    "DiskFull",
}


def test_public_surface_is_pinned() -> None:
    assert set(batchgen.__all__) == PUBLIC
    assert len(batchgen.__all__) == len(PUBLIC)  # no name listed twice
    for name in batchgen.__all__:
        assert getattr(batchgen, name) is not None
    for fn in (
        batchgen.load_manifest,
        batchgen.plan,
        batchgen.run,
        batchgen.run_sync,
        batchgen.read_index,
        batchgen.iter_index,
        batchgen.read_failures,
    ):
        assert fn.__doc__, fn.__name__


def test_importing_one_module_does_not_load_the_runner() -> None:
    """Every module reads batchgen.__version__; the API loads on first use, not with them."""
    code = (
        "import sys, batchgen.planning.jobs; print(sorted(m for m in sys.modules if 'runner' in m))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr


def test_every_option_is_a_flag_and_a_keyword_with_one_default() -> None:
    """`batchgen.run(m)` and `batchgen run M` take the same options (one declaration,
    options.RunOptions), and `help(batchgen.run)` lists them."""
    args = vars(build_parser().parse_args(["run", "m.yaml"]))
    params = inspect.signature(batchgen.run).parameters
    for name, info, _ in RunOptions.flags():
        assert params[name].default == info.default == args[name], name
        assert f"``{name}``" in (batchgen.run.__doc__ or "")
    assert inspect.signature(batchgen.run_sync).parameters.keys() == params.keys()


async def test_a_wrong_keyword_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    m = write_manifest(tmp_path, 1)
    with pytest.raises(batchgen.UsageError, match="'max_cots' \\(did you mean max_cost\\?\\)"):
        await batchgen.run(m, emulate=True, out=tmp_path / "o", max_cots=5)
    with pytest.raises(batchgen.UsageError, match="--max-attempts must be at least 1, got 0"):
        await batchgen.run(m, emulate=True, out=tmp_path / "o", max_attempts=0)
    assert not (tmp_path / "o").exists()


def test_run_sync_takes_every_keyword_of_run_and_passes_it_on(tmp_path: Path) -> None:
    """A call, not a comparison of signatures (functools.wraps copies run's onto run_sync, so
    that comparison held whatever run_sync accepted). No value below is a default."""
    m = write_manifest(tmp_path, 2)
    out = tmp_path / "out"
    events: list[batchgen.RunEvent] = []
    asked: list[Any] = []
    later = time.strftime("%H:%M", time.localtime(time.time() + 7200))  # never reached here
    kwargs: dict[str, Any] = {
        "out": out,
        "emulate": True,
        "endpoint": None,
        "concurrency": 1,
        "max_cost": 5.0,
        "max_attempts": 4,
        "deadline": 77.0,
        "watch": "poll",
        "download_concurrency": 3,
        "max_image_bytes": 9_000_000,
        "retry_failed": True,
        "replace_rejected": True,
        "verify": True,
        "reuse_folder": True,
        "inline_uploads": True,
        "faults": "content_policy=1",
        "time_scale": 0.0,
        "seed": 7,
        "result_ttl": 600.0,
        "on_event": events.append,
        "approve": lambda ready: asked.append(ready) or True,
        "progress_every": None,
        "handle_signals": False,
        "environ": NO_KEY,
        "priority": "low",
        "start_timeout": 30.0,
        "media_expiry": 900,
        "allow_fallbacks": True,
        "no_store_io": True,
        "stop_at": later,
        "notify": "http://127.0.0.1:9/hook/secret-token-1234",
        "on_exit": "true",
    }
    # Every keyword run has, read from run itself, so a new option of run is covered here.
    # (webhook_listen and webhook_url apply with watch="webhook": tests/test_webhooks.py)
    webhook = {"webhook_listen", "webhook_url"}
    assert set(kwargs) == set(inspect.signature(batchgen.run).parameters) - {"manifest", *webhook}
    result = batchgen.run_sync(m, **kwargs)
    assert result.out_dir == out and result.failed == {"content_policy_violation": 2}
    assert [(r.to_submit, r.images, r.rehearsal) for r in asked] == [(2, 2, True)]
    assert {type(e).__name__ for e in events} >= {"Planned", "Submitted", "Failed"}
    # progress_every=None: the snapshot before the first submit and the last one, no timed ones
    assert sum(isinstance(e, batchgen.Snapshot) for e in events) == 2
    with Journal.open_readonly(out / JOURNAL_NAME) as j:
        (run,) = j.runs()
    recorded = {
        k: run.settings[k]
        for k in (
            "target",
            "concurrency",
            "max_cost",
            "max_attempts",
            "deadline",
            "watch",
            "download_concurrency",
            "max_image_bytes",
            "faults",
            "time_scale",
            "reuse_folder",
            "priority",
            "start_timeout",
            "media_expiry",
            "allow_fallbacks",
            "store_io",
            "notify",
            "on_exit",
        )
    }
    assert recorded == {
        "target": "emulate",
        "concurrency": 1,
        "max_cost": 5.0,
        "max_attempts": 4,
        "deadline": 77.0,
        "watch": "poll",
        "download_concurrency": 3,
        "max_image_bytes": 9_000_000,
        "faults": "content_policy=1",
        "time_scale": 0.0,
        "reuse_folder": True,
        "priority": "low",
        "start_timeout": 30.0,
        "media_expiry": 900,
        "allow_fallbacks": True,
        "store_io": False,
        "notify": True,
        "on_exit": True,
    }
    assert run.settings["stop_at"]  # the resolved local time, for the record
    assert "secret-token" not in json.dumps(run.settings)


async def test_notebook_load_plan_run_read(tmp_path: Path) -> None:
    # A notebook cell runs inside an event loop: `await batchgen.run(...)`.
    manifest = batchgen.load_manifest(EXAMPLES / "demo.yaml")
    summary = batchgen.plan(manifest)
    assert (summary.jobs, summary.images, summary.duplicates) == (12, 12, 0)
    assert set(summary.by_size) == {"square_hd", "landscape_4_3"}
    assert summary.cost_usd == pytest.approx(0.12)

    events: list[batchgen.RunEvent] = []
    out = tmp_path / "demo"
    result = await batchgen.run(
        manifest, out=out, emulate=True, time_scale=0, on_event=events.append, environ=NO_KEY
    )
    assert result.ok and result.exit_code == 0
    assert (result.done, result.failed, result.unfinished) == (12, {}, 0)
    assert result.images == 12 and result.out_dir == out
    # A rehearsal bills nothing; what it would cost on fal is the plan's estimate.
    assert result.spent == 0.0 and result.rehearsal == pytest.approx(summary.cost_usd)
    assert result.lines()[0].startswith("done 12, failed 0, unfinished 0")

    rows = batchgen.read_index(out)
    assert len(rows) == summary.images and list(batchgen.iter_index(out)) == rows
    # the plan's sample paths are where the run put the images
    assert {s.output_path for s in summary.samples} <= {r["file_name"] for r in rows}
    for row in rows:
        with Image.open(out / row["file_name"]) as im:
            assert im.format == "JPEG"
            assert im.size == (row["width"], row["height"]) == PRESETS[row["requested_size"]]
    assert batchgen.read_failures(out) == []
    saved = {e.job_id for e in events if isinstance(e, batchgen.Saved)}
    assert {r["job_id"] for r in rows} == saved

    # events: the plan first, what the run will do, a snapshot before the first submit and
    # one at the end, and each job submitted, then finished, then saved, exactly once
    assert events[0] == batchgen.Planned(new=12, kept=0, not_in_manifest=0)
    ready = events[1]
    assert isinstance(ready, batchgen.Ready) and ready.rehearsal
    assert (ready.to_submit, ready.images, ready.done) == (12, 12, 0)
    assert ready.cost == pytest.approx(summary.cost_usd) and ready.out_dir == str(out)
    first, last = events[2], events[-1]
    assert isinstance(first, batchgen.Snapshot) and (first.total, first.done) == (12, 0)
    assert isinstance(last, batchgen.Snapshot) and (last.done, last.pending, last.in_flight) == (
        12,
        0,
        0,
    )
    order: dict[str, list[str]] = {}
    for e in events:
        match e:  # what a callback does: match on the event types
            case (
                batchgen.Submitted(job_id=j)
                | batchgen.Finished(job_id=j)
                | batchgen.Saved(job_id=j)
            ):
                order.setdefault(j, []).append(type(e).__name__)
    assert len(order) == 12
    assert all(seen == ["Submitted", "Finished", "Saved"] for seen in order.values()), order


def test_run_sync_outside_a_loop_then_resume(tmp_path: Path) -> None:
    m = write_manifest(tmp_path, 3)
    out = tmp_path / "out"
    result = batchgen.run_sync(m, out=out, emulate=True, time_scale=0, environ=NO_KEY)
    assert (result.exit_code, result.done, result.images) == (0, 3, 3)
    assert states(out) == {S.DOWNLOADED: 3}
    # The same call again resumes the folder: nothing left to do, nothing submitted.
    events: list[batchgen.RunEvent] = []
    again = batchgen.run_sync(
        str(m), out=str(out), emulate=True, time_scale=0, on_event=events.append, environ=NO_KEY
    )
    assert (again.exit_code, again.done, again.images) == (0, 3, 0)
    assert not any(isinstance(e, batchgen.Submitted) for e in events)
    assert len(batchgen.read_index(out)) == 3


async def test_run_sync_refuses_inside_a_running_loop(tmp_path: Path) -> None:
    m = write_manifest(tmp_path, 1)
    with pytest.raises(batchgen.UsageError, match=r"await batchgen\.run\(\.\.\.\)"):
        batchgen.run_sync(m, out=tmp_path / "out", emulate=True, environ=NO_KEY)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("call", ["load_manifest", "plan", "run_sync"])
def test_bad_manifest_raises_manifest_error_with_every_problem(call: str) -> None:
    path = BAD / "many_problems.yaml"
    with pytest.raises(batchgen.ManifestError) as info:
        if call == "run_sync":
            batchgen.run_sync(path, emulate=True, environ=NO_KEY)
        else:
            getattr(batchgen, call)(path)
    problems = info.value.problems
    assert len(problems) >= 3
    assert all(isinstance(p, batchgen.Problem) and p.file == str(path) for p in problems)
    assert all(p.line is not None for p in problems)
    assert info.value.exit_code == 2


async def test_no_key_for_fal_is_a_usage_error_before_anything_is_written(tmp_path: Path) -> None:
    m = write_manifest(tmp_path, 1)
    with pytest.raises(batchgen.UsageError, match="FAL_KEY"):
        await batchgen.run(m, out=tmp_path / "out", environ=NO_KEY)
    with pytest.raises(batchgen.UsageError, match="--concurrency"):
        await batchgen.run(m, out=tmp_path / "out", emulate=True, concurrency=0, environ=NO_KEY)
    assert not (tmp_path / "out").exists()


def test_read_index_of_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(batchgen.UsageError, match="not an output folder"):
        batchgen.read_index(tmp_path / "nowhere")
    with pytest.raises(batchgen.UsageError, match="not an output folder"):
        batchgen.iter_index(tmp_path / "nowhere")  # at once, not when first read


async def test_signal_handlers_only_when_asked(tmp_path: Path) -> None:
    """A library must not take Ctrl-C from a notebook; the CLI asks for its handlers."""
    m = write_manifest(tmp_path, 2)
    before = signal.getsignal(signal.SIGINT)
    seen: dict[bool, Any] = {}
    for asked in (False, True):

        def during(event: batchgen.RunEvent, asked: bool = asked) -> None:
            if isinstance(event, batchgen.Submitted):
                seen[asked] = signal.getsignal(signal.SIGINT)

        out = tmp_path / f"out-{asked}"
        result = await batchgen.run(
            m,
            out=out,
            emulate=True,
            time_scale=0,
            on_event=during,
            handle_signals=asked,
            environ=NO_KEY,
        )
        assert result.ok
    assert seen[False] is before
    assert seen[True] is not before
    assert signal.getsignal(signal.SIGINT) is before  # put back when the run ends


async def test_cancelled_run_resumes_without_paying_twice(tmp_path: Path) -> None:
    """Interrupting a notebook cell cancels the task: the journal stays consistent."""
    m = write_manifest(tmp_path, 12)
    out = tmp_path / "out"
    with emulator_thread(time_scale=0.05) as url:  # ~0.2 s per request: some stay in flight
        saved = asyncio.Event()

        def on_event(event: batchgen.RunEvent) -> None:
            if isinstance(event, batchgen.Saved):
                saved.set()

        options: dict[str, Any] = {"out": out, "endpoint": url, "concurrency": 4, "environ": {}}
        task = asyncio.create_task(batchgen.run(m, on_event=on_event, **options))
        await saved.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        st = states(out)
        assert 1 <= st[S.DOWNLOADED] < 12 and S.SUBMITTING not in st
        result = await batchgen.run(m, **options)
        s = stats(url)
    assert result.ok and states(out) == {S.DOWNLOADED: 12}
    # in-flight requests were re-attached, not submitted again; a POST the cancel cut short
    # is the only way to a second request, and the summary counts it
    assert s["duplicate_submits"] <= result.summary.possible_duplicates


async def test_a_failing_callback_surfaces_after_a_clean_run(tmp_path: Path) -> None:
    m = write_manifest(tmp_path, 3)
    out = tmp_path / "out"
    calls = 0

    def broken(event: batchgen.RunEvent) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("bug in the caller's callback")

    with pytest.raises(ValueError, match="bug in the caller"):
        await batchgen.run(m, out=out, emulate=True, time_scale=0, on_event=broken, environ={})
    assert calls == 1  # not called again after it failed
    assert states(out) == {S.DOWNLOADED: 3}  # the run itself finished
    assert "on_event raised ValueError" in (out / "run.log").read_text()


async def test_the_notebook_cell_in_docs_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = (REPO / "docs" / "api.md").read_text()
    block = re.search(r"```python\n(.*?)```", doc, re.S)
    assert block is not None
    (tmp_path / "manifests").mkdir()
    shutil.copy(EXAMPLES / "demo.yaml", tmp_path / "manifests")
    monkeypatch.chdir(tmp_path)
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "BATCHGEN_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    # a cell's top-level await, as the body of a coroutine
    cell: dict[str, Any] = {}
    source = "async def cell():\n" + textwrap.indent(block.group(1), "    ")
    exec(compile(source, "docs/api.md", "exec"), cell)
    await cell["cell"]()
    out = capsys.readouterr().out
    assert "12 jobs, 12 images, about $0.12" in out
    assert out.count("saved 1 image(s) of job") == 12
    assert "12/12 done" in out and "done 12, failed 0" in out
    assert len(batchgen.read_index(tmp_path / "outputs" / "demo")) == 12


def test_a_folder_of_another_manifest_is_a_journal_error(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = write_manifest(tmp_path / "a", 1)
    assert batchgen.run_sync(first, out=out, emulate=True, time_scale=0, environ=NO_KEY).ok
    other = write_manifest(tmp_path / "b", 2)
    with pytest.raises(batchgen.JournalError):
        batchgen.run_sync(other, out=out, emulate=True, time_scale=0, environ=NO_KEY)
    assert states(out) == {S.DOWNLOADED: 1}  # the folder is as the first run left it


async def test_byok_through_the_api_takes_the_key_from_environ(tmp_path: Path) -> None:
    manifest = Path(__file__).parents[1] / "manifests" / "byok.yaml"
    key = "sk-api-test-5f2a9c0d1e"
    with pytest.raises(batchgen.UsageError, match="OPENAI_API_KEY"):
        await batchgen.run(manifest, out=tmp_path / "none", emulate=True, environ={})
    assert not (tmp_path / "none").exists()

    out = tmp_path / "out"
    result = await batchgen.run(
        manifest, out=out, emulate=True, time_scale=0, environ={"OPENAI_API_KEY": key}
    )
    assert result.ok
    rows = batchgen.read_index(out)
    assert rows and all(r["usage"] and r["cost_actual"] for r in rows)
    for f in out.rglob("*"):
        if f.is_file():
            assert key.encode() not in f.read_bytes(), f


def test_images_made_again_where_they_lay_leave_one_index_row_each(tmp_path: Path) -> None:
    # A rehearsal stopped between an image's index row and its journal commit (a full disk,
    # a kill) has its request sent again by the next run, which makes the image again in
    # the same place: the index must still hold one row per image for ImageFolder.
    m = write_manifest(tmp_path, 3)
    out = tmp_path / "out"
    assert batchgen.run_sync(m, out=out, emulate=True, time_scale=0, environ=NO_KEY).ok
    with sqlite3.connect(out / "journal.sqlite") as db:  # the state such a stop leaves
        db.execute(
            "UPDATE jobs SET state = 'PENDING', files = NULL, result = NULL,"
            " request_id = NULL, handle = NULL, submitted_at = NULL"
        )
    again = batchgen.run_sync(m, out=out, emulate=True, time_scale=0, environ=NO_KEY)
    assert (again.exit_code, again.images) == (0, 3)
    assert len((out / METADATA).read_bytes().splitlines()) == 3
    assert not (out / SUPERSEDING).exists()
