"""The gallery never shows what is gone: a real run that replaces a rehearsal removes its
placeholder images, and a kill at any moment after leaves an index.html whose cards all point
to files on disk (running/recovery.py, replace_placeholders)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_gallery_support import gallery_records
from test_run_signals import REPO, env, wait_for_in_flight
from test_run_support import emulator_thread, write_manifest

from batchgen.cli import main

pytestmark = pytest.mark.slow


def cards(out: Path) -> list[str]:
    """The file of every card the page shows (its count is in its header)."""
    page = (out / "index.html").read_text(encoding="utf-8")
    m = re.search(r"<b>([\d,]+)</b> images", page)
    assert m, page
    shown = int(m[1].replace(",", ""))
    return [str(r[0]) for r in gallery_records(out)[:shown]]


def test_a_real_run_killed_after_replacing_a_rehearsal_leaves_no_card_of_a_removed_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "BATCHGEN_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    m = write_manifest(tmp_path, 30)
    out = tmp_path / "out"
    rehearsal = ["run", str(m), "--emulate", "--out", str(out), "--quiet", "--time-scale", "0"]
    assert main(rehearsal) == 0
    assert len(cards(out)) == 30  # the rehearsal's gallery: 30 placeholders
    # The emulator not saying it is one: to the run, a real server (FAL_KEY needed).
    with emulator_thread(time_scale=0.2, announce=False) as url:
        cmd = [sys.executable, "-m", "batchgen", "run", str(m), "--endpoint", url]
        cmd += ["--out", str(out), "--quiet", "--concurrency", "2"]
        proc = subprocess.Popen(
            cmd, env=env() | {"FAL_KEY": "test-key"}, cwd=REPO, stderr=subprocess.PIPE
        )
        try:
            wait_for_in_flight(out, proc)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
    shown = cards(out)
    missing = [f for f in shown if not (out / f).is_file()]
    assert not missing, f"{len(missing)} of {len(shown)} cards point to removed images"
    assert len(shown) < 30  # the page says what is left, not the rehearsal's count
