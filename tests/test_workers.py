"""The run's check workers (issue 12): processes that hash, check and thumbnail each image.

They must give the same answers as the checks in a thread, end with the run however it ends
(normal exit, Ctrl-C to the whole process group, ``kill -9`` of the parent, even while busy),
and a crash inside one must fail only the check it was running, for a recorded reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image
from test_run_signals import REPO, command, env, wait_for_in_flight
from test_run_support import emulator_thread, states, write_manifest
from test_scheduler_support import Rig

from batchgen.errors import DownloadError
from batchgen.manifest import plan
from batchgen.outputs.checks import Checked, check_file
from batchgen.outputs.index import read_failures, read_index
from batchgen.outputs.thumbs import THUMBS, thumb_name
from batchgen.outputs.workers import GROW_AT, CheckPool
from batchgen.planning.jobs import JobState

S = JobState
linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")

# A worker that behaves like the real one, except on files whose path holds the marker given
# as its first argument: there it dies by SIGKILL ("crash"), sleeps a minute ("hang"), or
# answers under another task's id ("swap": what frames out of order would look like).
FAKE = textwrap.dedent(
    """
    import os, pickle, signal, sys, time, types
    action, marker = sys.argv.pop(1), sys.argv.pop(1)
    sys.path.insert(0, sys.argv[2])
    from batchgen.outputs import checks, checkworker

    def check(path, *args, **kwargs):
        if marker in path:
            if action == "crash":
                os.kill(os.getpid(), signal.SIGKILL)
            if action == "hang":
                time.sleep(60)
        return checks.check_file(path, *args, **kwargs)

    def loads(body):
        task_id, name, args, kwargs = pickle.loads(body)
        if action == "swap" and marker in args[0]:
            task_id += 1000
        return task_id, name, args, kwargs

    checkworker.pickle = types.SimpleNamespace(
        loads=loads, dumps=pickle.dumps, HIGHEST_PROTOCOL=pickle.HIGHEST_PROTOCOL)
    checkworker.TASKS["check"] = check
    checkworker.main()
    """
)


def fake(action: str, marker: str) -> list[str]:
    return [sys.executable, "-c", FAKE, action, marker]


def jpeg(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (seed * 40 % 256, 90, 200)).save(buf, "JPEG")
    return buf.getvalue()


def alive(pid: int) -> bool:
    """Running (a zombie that no one reaped yet is dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                found.append(int(d.name))
    return found


def workers_of(pid: int) -> list[int]:
    """Live check workers started by process ``pid``."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmd = (d / "cmdline").read_bytes()
            except (OSError, ValueError):
                continue
            if ppid == pid and b"checkworker" in cmd and alive(int(d.name)):
                found.append(int(d.name))
    return found


def half_written(root: Path) -> list[Path]:
    """Thumbnails still under their temporary name."""
    return list((root / THUMBS).rglob("*.part"))


def wait_until(cond: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


async def test_workers_answer_as_the_thread_does_and_make_thumbnails(tmp_path: Path) -> None:
    files = []
    for i in range(6):
        p = tmp_path / f"{i}.jpg.part"
        p.write_bytes(jpeg(i))
        files.append(p)
    async with CheckPool(2) as pool:
        got = await asyncio.gather(
            *(pool.check(p, "jpeg", durable=True, thumbs=tmp_path) for p in files)
        )
        with pytest.raises(DownloadError) as wrong:
            await pool.check(files[0], "png", durable=False)
        assert pool.started == 2
    assert wrong.value.reason == "wrong_format" and not wrong.value.retryable
    for p, c in zip(files, got, strict=True):
        assert c == dataclasses.replace(check_file(str(p), "jpeg", durable=False), thumbnail=True)
        assert c.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
        assert (tmp_path / thumb_name(c.sha256)).is_file() and c.thumbnail
    assert not half_written(tmp_path)


async def test_each_check_gets_its_own_answer_even_sent_while_a_worker_starts(
    tmp_path: Path,
) -> None:
    """Answers are matched to checks by the order of the frames on the worker's pipe. Checks
    sent one loop turn apart while the worker is still connecting (a run's first downloads)
    must reach it in the order they were queued, or one image would be recorded with another
    image's checksum and size."""
    files = []
    for i in range(24):
        p = tmp_path / f"{i}.jpg"
        p.write_bytes(jpeg(i, size=(64 + i, 48)))
        files.append(p)
    async with CheckPool(1) as pool:
        pending = []
        for p in files:
            pending.append(asyncio.ensure_future(pool.check(p, "jpeg", durable=False)))
            await asyncio.sleep(0)  # one turn of the loop: the worker's pipes connect meanwhile
        got = await asyncio.gather(*pending)
    for p, c in zip(files, got, strict=True):
        assert c.sha256 == hashlib.sha256(p.read_bytes()).hexdigest(), p.name


async def test_an_answer_for_another_task_is_never_taken(tmp_path: Path) -> None:
    """Whatever the cause, an answer that names another task ends that worker: the check it
    answered for fails for a recorded reason, and the others are answered by a new worker."""
    names = ["a.jpg", "swapped.jpg", "c.jpg", "d.jpg"]
    for i, n in enumerate(names):
        (tmp_path / n).write_bytes(jpeg(i))
    async with CheckPool(1, command=fake("swap", "swapped")) as pool:
        got = await asyncio.gather(
            *(pool.check(tmp_path / n, "jpeg", durable=False) for n in names),
            return_exceptions=True,
        )
        assert pool.crashes == 1
    assert isinstance(got[1], DownloadError) and got[1].reason == "check_crashed"
    for n, c in zip(names, got, strict=True):
        if n != "swapped.jpg":
            assert isinstance(c, Checked), c
            assert c.sha256 == hashlib.sha256((tmp_path / n).read_bytes()).hexdigest()


async def test_a_second_worker_starts_only_for_a_backlog(tmp_path: Path) -> None:
    # A run that downloads a few images a second must not pay ~70 ms of CPU for a worker
    # it leaves idle; a burst must still spread over the machine's cores.
    (tmp_path / "a.jpg").write_bytes(jpeg(1))
    async with CheckPool(2) as pool:
        for _ in range(GROW_AT + 2):
            await pool.check(tmp_path / "a.jpg", "jpeg", durable=False)
        assert pool.started == 1
        burst = [pool.check(tmp_path / "a.jpg", "jpeg", durable=False) for _ in range(12)]
        await asyncio.gather(*burst)
        assert pool.started == 2


@linux_only
async def test_a_normal_close_ends_and_reaps_every_worker(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(jpeg(1))
    pool = CheckPool(2)
    # More checks at once than one worker queues (GROW_AT) before a second one starts.
    await asyncio.gather(*(pool.check(tmp_path / "a.jpg", None, durable=False) for _ in range(8)))
    pids = pool.pids
    assert len(pids) == 2 and all(alive(p) for p in pids)
    await pool.close()
    assert not any(alive(p) for p in pids)
    assert workers_of(os.getpid()) == []  # reaped: not even a zombie is left


async def test_a_crash_fails_only_the_check_it_was_running(tmp_path: Path) -> None:
    names = [f"{i}.jpg" for i in range(5)]
    names[0] = "poison.jpg"  # first in line: the others wait behind it in the one worker
    for i, n in enumerate(names):
        (tmp_path / n).write_bytes(jpeg(i))
    async with CheckPool(1, command=fake("crash", "poison")) as pool:
        got = await asyncio.gather(
            *(pool.check(tmp_path / n, "jpeg", durable=False) for n in names),
            return_exceptions=True,
        )
        assert pool.crashes == 1 and pool.started == 2  # a new worker took over the rest
    err = got[0]
    assert isinstance(err, DownloadError) and err.reason == "check_crashed"
    assert "SIGKILL" in str(err) and not err.retryable
    assert all(not isinstance(g, BaseException) for g in got[1:])


async def test_a_crashing_worker_fails_that_job_for_a_recorded_reason(tmp_path: Path) -> None:
    rig = Rig(tmp_path, 6)
    poisoned = min(s.job_id for s in plan(rig.manifest))[:16]  # file names hold 16 digits
    async with CheckPool(1, command=fake("crash", poisoned)) as pool:
        res = await rig.run(concurrency=3, checks=pool)
        assert pool.crashes == 3  # the first try and the two reads of a fresh result
    assert res.error is None
    assert rig.states() == {S.DOWNLOADED: 5, S.FAILED: 1}
    (failure,) = read_failures(rig.out)
    assert failure["job_id"].startswith(poisoned)
    assert failure["class"] == "download_check_crashed"
    assert "died (signal SIGKILL)" in failure["message"]
    rows = read_index(rig.out)
    assert len(rows) == 5
    for r in rows:  # the other jobs' thumbnails were made by the workers as they landed
        assert (rig.out / thumb_name(r["sha256"])).is_file()
    rig.check_folder()


@linux_only
def test_kill_9_of_the_parent_ends_its_workers_even_busy_ones(tmp_path: Path) -> None:
    (tmp_path / "idle.jpg").write_bytes(jpeg(1))
    (tmp_path / "hang.jpg").write_bytes(jpeg(2))
    code = textwrap.dedent(
        f"""
        import asyncio, sys
        sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from batchgen.outputs.workers import GROW_AT, CheckPool

        async def main():
            pool = CheckPool(2, command={fake("hang", "hang")!r})
            hang, idle = Path({str(tmp_path / "hang.jpg")!r}), Path({str(tmp_path / "idle.jpg")!r})
            # GROW_AT checks wait in the first worker, behind one that hangs: the next check
            # starts another worker
            hanging = [asyncio.ensure_future(pool.check(p, None, durable=False))
                       for p in [hang] + [idle] * (GROW_AT - 1)]
            await asyncio.sleep(0)
            await pool.check(idle, None, durable=False)
            await asyncio.sleep(0.3)
            print(" ".join(map(str, pool.pids)), flush=True)
            await asyncio.gather(*hanging)

        asyncio.run(main())
        """
    )
    cmd = [sys.executable, "-c", code]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as parent:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)  # one idle, one busy a minute
        parent.kill()
    wait_until(lambda: not any(alive(p) for p in pids), timeout=5)


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
        # group here, so the test runner is spared (the workers have groups of their own).
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
    assert group_members(proc.pid) == []


@linux_only
@pytest.mark.slow
def test_kill_9_of_a_run_leaves_no_worker_and_no_file_in_place(tmp_path: Path) -> None:
    m = write_manifest(tmp_path, 30)
    out = tmp_path / "out"
    with emulator_thread(time_scale=0.05) as url:
        cmd = command(m, url, out, "--concurrency", "6")
        proc = start_run(cmd, stderr=subprocess.DEVNULL)
        workers = workers_of(proc.pid)
        assert workers, "the run ended before a worker started"
        proc.kill()
        proc.wait()
        wait_until(lambda: not any(alive(p) for p in workers), timeout=5)
        done = subprocess.run(cmd, env=env(), cwd=REPO, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    assert states(out) == {S.DOWNLOADED: 30}
    assert not list(out.rglob("*.part"))
    for r in read_index(out):
        assert hashlib.sha256((out / r["file_name"]).read_bytes()).hexdigest() == r["sha256"]
