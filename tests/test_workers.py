"""The run's check workers: processes that hash, check and thumbnail each image.

They must give the same answers as the checks in a thread, each to its own check; end with the
run however it ends (normal exit, an exception, a cancellation, Ctrl-C to the whole process
group, ``kill -9`` of the parent, even while busy); and a crash inside one must fail only the
check that crashed, for a recorded reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_run_signals import REPO, command, env, wait_for_in_flight
from test_run_support import emulator_thread, states, write_manifest
from test_scheduler_support import Rig
from test_workers_support import (
    alive,
    children_of,
    crash_on,
    group_members,
    jpeg,
    slow_on,
    wait_until,
    workers_of,
)

from batchgen.errors import DownloadError
from batchgen.manifest import plan
from batchgen.outputs import workers
from batchgen.outputs.checks import Checked, check_file
from batchgen.outputs.index import read_failures, read_index
from batchgen.outputs.thumbs import THUMBS, thumb_name
from batchgen.outputs.workers import CheckPool
from batchgen.planning.jobs import JobState

S = JobState
TESTS = Path(__file__).resolve().parent
linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")


def number(name: str) -> int:
    """The N of ``word-N.jpg``."""
    return int(name.split("-")[1].split(".")[0])


def images(folder: Path, names: list[str]) -> list[Path]:
    """A distinct JPEG under each ``word-N.jpg``: its own bytes, and 64 + N pixels wide."""
    paths = []
    for n in names:
        p = folder / n
        p.write_bytes(jpeg(number(n), size=(64 + number(n), 48)))
        paths.append(p)
    return paths


def half_written(root: Path) -> list[Path]:
    """Thumbnails still under their temporary name."""
    return list((root / THUMBS).rglob("*.part"))


def assert_own_answers(paths: list[Path], got: list[object]) -> None:
    for p, c in zip(paths, got, strict=True):
        assert isinstance(c, Checked), (p.name, c)
        assert c.sha256 == hashlib.sha256(p.read_bytes()).hexdigest(), p.name
        assert c.width == 64 + number(p.name), p.name


async def test_workers_answer_as_the_thread_does_and_make_thumbnails(tmp_path: Path) -> None:
    files = images(tmp_path, [f"img-{i}.jpg.part" for i in range(6)])
    async with CheckPool(2) as pool:
        got = await asyncio.gather(
            *(pool.check(p, "jpeg", durable=True, thumbs=tmp_path) for p in files)
        )
        with pytest.raises(DownloadError) as wrong:
            await pool.check(files[0], "png", durable=False)
        assert pool.started == 2
    assert wrong.value.reason == "wrong_format" and not wrong.value.retryable
    assert str(wrong.value) == "asked for png, got a JPEG image"
    for p, c in zip(files, got, strict=True):
        assert c == dataclasses.replace(check_file(str(p), "jpeg", durable=False), thumbnail=True)
        assert c.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
        assert (tmp_path / thumb_name(c.sha256)).is_file() and c.thumbnail
    assert not half_written(tmp_path)


async def test_many_concurrent_checks_each_get_their_own_images_answer(tmp_path: Path) -> None:
    """An image recorded with another image's checksum would be a corrupt dataset: every
    answer goes to the check it belongs to, however the checks interleave."""
    files = images(tmp_path, [f"img-{i}.jpg" for i in range(60)])
    async with CheckPool(2) as pool:
        pending = []
        for i, p in enumerate(files):
            pending.append(asyncio.ensure_future(pool.check(p, "jpeg", durable=False)))
            if i % 3 == 0:
                await asyncio.sleep(0)  # some sent while a worker starts, some in bursts
        got = await asyncio.gather(*pending)
    assert_own_answers(files, got)


async def test_workers_start_on_demand_up_to_size(tmp_path: Path) -> None:
    # A run that checks an image now and then keeps one worker (~90 ms of CPU to start); a
    # burst spreads over the pool's size, and never more.
    (tmp_path / "a.jpg").write_bytes(jpeg(1))
    async with CheckPool(2) as pool:
        assert pool.started == 0  # a run with nothing to download starts none
        for _ in range(6):
            await pool.check(tmp_path / "a.jpg", "jpeg", durable=False)
            await asyncio.sleep(0.05)
        assert pool.started == 1
        burst = [pool.check(tmp_path / "a.jpg", "jpeg", durable=False) for _ in range(12)]
        await asyncio.gather(*burst)
        assert pool.started == 2 and len(pool.pids) == 2


@linux_only
async def test_a_normal_close_ends_and_reaps_every_worker(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(jpeg(1))
    pool = CheckPool(2)
    await asyncio.gather(*(pool.check(tmp_path / "a.jpg", None, durable=False) for _ in range(8)))
    pids = pool.pids
    assert len(pids) == 2 and all(alive(p) for p in pids)
    await pool.close()
    assert not any(alive(p) for p in pids)
    assert workers_of(os.getpid()) == []  # reaped: not even a zombie is left
    with pytest.raises(RuntimeError):
        await pool.check(tmp_path / "a.jpg", None, durable=False)


@linux_only
@pytest.mark.parametrize("how", ["exception", "cancellation"])
async def test_an_exception_or_a_cancellation_ends_every_worker(tmp_path: Path, how: str) -> None:
    """However the ``async with`` ends, the workers end with it: the checks already running
    finish, the ones waiting are cancelled (check_cancelled), and the loop runs meanwhile."""
    files = images(tmp_path, ["slow-0.jpg"] + [f"img-{i}.jpg" for i in range(1, 6)])
    pids: list[int] = []
    checks: list[asyncio.Future[Checked]] = []

    async def body() -> None:
        async with CheckPool(1, function=functools.partial(slow_on, "slow", 0.5)) as pool:
            checks.extend(asyncio.ensure_future(pool.check(p, None, durable=False)) for p in files)
            await asyncio.sleep(0.3)
            pids.extend(pool.pids)
            if how == "exception":
                raise KeyError("boom")
            await asyncio.sleep(60)

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.ensure_future(body())
    await asyncio.sleep(0.4)
    ticking = asyncio.ensure_future(ticker())
    if how == "cancellation":
        task.cancel()
    with pytest.raises(KeyError if how == "exception" else asyncio.CancelledError):
        await task
    ticking.cancel()
    assert ticks > 5  # the close waited for the slow check without blocking the loop
    assert len(pids) == 1 and not alive(pids[0])
    assert workers_of(os.getpid()) == []
    got = await asyncio.gather(*checks, return_exceptions=True)
    assert isinstance(got[0], Checked)  # it was running: let finish
    cancelled = [g for g in got if isinstance(g, DownloadError)]
    assert cancelled and all(g.reason == "check_cancelled" for g in cancelled)
    assert all(isinstance(g, Checked | DownloadError) for g in got)


@linux_only
async def test_a_check_that_never_ends_is_killed_at_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers, "CLOSE_GRACE_S", 0.5)
    (path,) = images(tmp_path, ["hang-0.jpg"])
    pool = CheckPool(1, function=functools.partial(slow_on, "hang", 60))
    check = asyncio.ensure_future(pool.check(path, None, durable=False))
    await asyncio.sleep(0.5)
    pids = pool.pids
    t0 = time.monotonic()
    await pool.close()
    assert time.monotonic() - t0 < 3
    assert pids and not any(alive(p) for p in pids)
    with pytest.raises(DownloadError) as cancelled:
        await check
    assert cancelled.value.reason == "check_cancelled"


async def test_a_crash_fails_only_the_check_that_crashed(tmp_path: Path) -> None:
    names = [f"img-{i}.jpg" for i in range(10)]
    names[0] = "poison-0.jpg"  # first in line: others are running or waiting when it dies
    files = images(tmp_path, names)
    async with CheckPool(2, function=functools.partial(crash_on, "poison")) as pool:
        got = await asyncio.gather(
            *(pool.check(p, "jpeg", durable=False) for p in files), return_exceptions=True
        )
        # once in the shared executor, once alone: then it is known to be the culprit
        assert pool.crashes == 2
        later = images(tmp_path, [f"later-{i}.jpg" for i in range(10, 14)])
        assert_own_answers(later, [await pool.check(p, "jpeg", durable=False) for p in later])
    err = got[0]
    assert isinstance(err, DownloadError) and err.reason == "check_crashed"
    assert str(err) == "the process checking this image died" and not err.retryable
    assert_own_answers(files[1:], got[1:])


async def test_a_worker_killed_from_outside_costs_only_a_retried_check(tmp_path: Path) -> None:
    """A worker that dies of something else (the OOM killer, a stray kill) fails no check:
    the checks it took down with it are each retried, and answered."""
    files = images(tmp_path, ["slow-0.jpg"] + [f"img-{i}.jpg" for i in range(1, 8)])
    async with CheckPool(2, function=functools.partial(slow_on, "slow", 1.0)) as pool:
        checks = [asyncio.ensure_future(pool.check(p, "jpeg", durable=False)) for p in files]
        await asyncio.sleep(0.5)
        for pid in pool.pids:
            os.kill(pid, signal.SIGKILL)
        got = await asyncio.gather(*checks)
        assert pool.crashes == 1
    assert_own_answers(files, got)


@linux_only
async def test_ctrl_c_while_a_worker_starts_does_not_end_it(tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches the workers too, even one still starting (before its
    initializer could ignore SIGINT): it must neither die nor fail the check."""
    (path,) = images(tmp_path, ["img-0.jpg"])
    async with CheckPool(1) as pool:
        check = asyncio.ensure_future(pool.check(path, "jpeg", durable=False))
        await asyncio.sleep(0)  # the check is submitted, and its worker started
        (pid,) = pool.pids
        while not check.done():
            with contextlib.suppress(ProcessLookupError):  # a worker it killed: see below
                os.kill(pid, signal.SIGINT)
            await asyncio.sleep(0.002)
        assert_own_answers([path], [await check])
        assert alive(pid) and pool.crashes == 0


async def test_a_crashing_worker_fails_that_job_for_a_recorded_reason(tmp_path: Path) -> None:
    rig = Rig(tmp_path, 6)
    poisoned = min(s.job_id for s in plan(rig.manifest))[:16]  # file names hold 16 digits
    async with CheckPool(1, function=functools.partial(crash_on, poisoned)) as pool:
        res = await rig.run(concurrency=3, checks=pool)
        # each check of the poisoned image (the first try and the two reads of a fresh
        # result) breaks the shared executor, then the one it is retried in alone
        assert pool.crashes == 6
    assert res.error is None
    assert rig.states() == {S.DOWNLOADED: 5, S.FAILED: 1}
    (failure,) = read_failures(rig.out)
    assert failure["job_id"].startswith(poisoned)
    assert failure["class"] == "download_check_crashed"
    assert "the process checking this image died" in failure["message"]
    rows = read_index(rig.out)
    assert len(rows) == 5
    for r in rows:  # the other jobs' thumbnails were made by the workers as they landed
        assert (rig.out / thumb_name(r["sha256"])).is_file()
    rig.check_folder()


@linux_only
def test_kill_9_of_the_parent_ends_its_workers_even_busy_ones(tmp_path: Path) -> None:
    (hang,) = images(tmp_path, ["hang-0.jpg"])
    (idle,) = images(tmp_path, ["idle-0.jpg"])
    code = textwrap.dedent(
        f"""
        import asyncio, functools, sys
        sys.path[:0] = [{str(REPO)!r}, {str(TESTS)!r}]
        from pathlib import Path
        from batchgen.outputs.workers import CheckPool
        from test_workers_support import slow_on

        async def main():
            pool = CheckPool(2, function=functools.partial(slow_on, "hang", 60))
            busy = asyncio.ensure_future(pool.check(Path({str(hang)!r}), None, durable=False))
            await pool.check(Path({str(idle)!r}), None, durable=False)  # the other worker
            await asyncio.sleep(0.3)
            print(" ".join(map(str, pool.pids)), flush=True)
            await busy

        asyncio.run(main())
        """
    )
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as run:
        assert run.stdout is not None
        pids = [int(p) for p in run.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)  # one idle, one busy a minute
        helpers = children_of(run.pid)  # the workers and multiprocessing's resource tracker
        assert set(pids) < set(helpers)
        run.kill()
    wait_until(lambda: not any(alive(p) for p in helpers), timeout=5)


def start_run(cmd: list[str], *, stderr: int) -> subprocess.Popen[bytes]:
    """``batchgen run`` in a session (and process group) of its own, as a terminal runs it,
    once it has started a worker process (or ended)."""
    proc = subprocess.Popen(cmd, env=env(), cwd=REPO, stderr=stderr, start_new_session=True)
    wait_until(lambda: workers_of(proc.pid) or proc.poll() is not None)
    return proc


@linux_only
@pytest.mark.slow
def test_ctrl_c_to_the_process_group_finishes_downloads_then_ends_the_workers(
    tmp_path: Path,
) -> None:
    m = write_manifest(tmp_path, 24)
    out = tmp_path / "out"
    with emulator_thread(time_scale=0.1) as url:
        cmd = command(m, url, out, "--concurrency", "4")
        # A terminal's Ctrl-C reaches every process of the foreground group: the run's own
        # group here, so the test runner is spared; the workers are in it too.
        proc = start_run(cmd, stderr=subprocess.PIPE)
        wait_for_in_flight(out, proc, 2)
        before = workers_of(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.1)
        # the workers ignored it: the run (still finishing its paid requests) needs them
        assert proc.poll() is not None or all(alive(p) for p in before)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err.decode()
        st = states(out)
    # every paid request was still checked and saved, then the workers ended with the run
    assert set(st) <= {S.DOWNLOADED, S.PENDING} and st[S.DOWNLOADED] >= 2
    assert before and not any(alive(p) for p in before)
    # multiprocessing's resource tracker ends once the run has closed its pipe
    wait_until(lambda: group_members(proc.pid) == [], timeout=5)


@linux_only
@pytest.mark.slow
def test_kill_9_of_a_run_leaves_no_worker_and_no_file_in_place(tmp_path: Path) -> None:
    m = write_manifest(tmp_path, 30)
    out = tmp_path / "out"
    with emulator_thread(time_scale=0.05) as url:
        cmd = command(m, url, out, "--concurrency", "6")
        proc = start_run(cmd, stderr=subprocess.DEVNULL)
        helpers = children_of(proc.pid)
        assert workers_of(proc.pid), "the run ended before a worker started"
        proc.kill()
        proc.wait()
        wait_until(lambda: not any(alive(p) for p in helpers), timeout=5)
        done = subprocess.run(cmd, env=env(), cwd=REPO, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    assert states(out) == {S.DOWNLOADED: 30}
    assert not list(out.rglob("*.part"))
    for r in read_index(out):
        assert hashlib.sha256((out / r["file_name"]).read_bytes()).hexdigest() == r["sha256"]
