"""One writer per folder, across processes: a second run on a folder would submit (and pay
for) every job again, so it is refused while the first lives, and the lock dies with it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_journal_support import open_journal

from batchgen.errors import JournalError
from batchgen.journal.writer import writer_pid

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

HOLDER = textwrap.dedent(
    """
    import sys
    sys.path[:0] = [{root!r}, {tests!r}]
    from pathlib import Path
    from test_journal_support import open_journal

    j = open_journal(Path({path!r}))
    print("holding", flush=True)
    sys.stdin.read()  # until the parent lets go, or kills this process
    j.close()
    """
)

# A platform with neither flock nor Windows' locking: the run must refuse, not go unguarded.
NO_LOCK = textwrap.dedent(
    """
    import sys
    sys.modules["fcntl"] = None  # import fcntl now fails, as where it does not exist
    sys.path[:0] = [{root!r}, {tests!r}]
    from pathlib import Path
    from batchgen.errors import JournalError
    from test_journal_support import open_journal

    try:
        first = open_journal(Path({path!r}))
        second = open_journal(Path({path!r}))  # two writers: every job submitted twice
    except JournalError as exc:
        print(exc)
        sys.exit(3)
    """
)


def child(template: str, path: Path) -> list[str]:
    code = template.format(root=str(ROOT), tests=str(ROOT / "tests"), path=str(path))
    return [sys.executable, "-c", code]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "out" / "journal.sqlite"


def test_a_second_process_is_refused_until_the_first_is_killed(path: Path) -> None:
    with subprocess.Popen(
        child(HOLDER, path), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "holding\n"
            for _ in range(3):  # `batchgen status` probing the folder leaves the lock in place
                assert writer_pid(path) == proc.pid
            with pytest.raises(JournalError, match=rf"another batchgen process \(pid {proc.pid}\)"):
                open_journal(path)
        finally:
            proc.kill()  # kill -9: no close, no cleanup
            proc.wait(10)
    assert writer_pid(path) is None  # the OS released the lock with the process
    with open_journal(path):
        pass


def test_a_run_that_ended_lets_the_next_one_in(path: Path) -> None:
    with subprocess.Popen(
        child(HOLDER, path), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None and proc.stdout.readline() == "holding\n"
        proc.communicate("", timeout=20)  # stdin closed: the holder closes its journal, exits
    assert proc.returncode == 0
    assert writer_pid(path) is None
    with open_journal(path):
        assert writer_pid(path) is not None


def test_without_a_lock_on_the_platform_a_run_is_refused(path: Path) -> None:
    done = subprocess.run(child(NO_LOCK, path), capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"cannot lock {path.parent} against a second run on this platform" in done.stdout
