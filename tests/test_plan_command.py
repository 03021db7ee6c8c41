"""`batchgen plan`: the summary a user reads before spending money, as text and as JSON."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from batchgen.cli import main
from batchgen.manifest import load_manifest, plan
from batchgen.planning.summary import summarize

EXAMPLES = Path(__file__).resolve().parent.parent / "manifests"


def run_plan(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["plan", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def plan_json(capsys: pytest.CaptureFixture[str], path: Path) -> dict[str, Any]:
    code, out, err = run_plan(capsys, str(path), "--json")
    assert (code, err) == (0, "")
    doc: dict[str, Any] = json.loads(out)
    return doc


def test_demo_plan_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_plan(capsys, str(EXAMPLES / "demo.yaml"))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[1] == "jobs       12"
    assert lines[2] == "images     12"
    assert lines[3].startswith("cost       ~$0.12  (an estimate")
    assert re.search(r"^  openai/gpt-image-2 +12 jobs +12 images +~\$0\.12$", out, re.M)
    assert re.search(r"^  low +12 jobs +12 images +~\$0\.12$", out, re.M)
    samples = [line.split() for line in lines if line.startswith("  ") and "images/" in line]
    assert len(samples) == 5
    for job16, path in samples:
        assert path.startswith("images/") and path.endswith(f"/{job16}_0.jpg")


def test_json_has_the_same_figures_as_the_summary(capsys: pytest.CaptureFixture[str]) -> None:
    doc = plan_json(capsys, EXAMPLES / "everything.yaml")
    manifest = load_manifest(EXAMPLES / "everything.yaml")
    summary = summarize(manifest, plan(manifest))
    assert doc["jobs"] == summary.jobs == 80
    assert doc["images"] == summary.images == 88
    assert doc["cost"]["estimate"] is True
    assert doc["cost"]["usd"] == pytest.approx(summary.cost_usd)
    for key in ("by_endpoint", "by_size", "by_quality"):
        groups = doc[key].values()
        assert sum(g["jobs"] for g in groups) == doc["jobs"]
        assert sum(g["images"] for g in groups) == doc["images"]
        assert sum(g["cost_usd"] for g in groups) == pytest.approx(doc["cost"]["usd"])
    assert doc["by_quality"]["high"] == {"jobs": 8, "images": 8, "cost_usd": pytest.approx(1.56)}
    assert 3 <= len(doc["samples"]) <= 5
    assert {s["prompt_id"] for s in doc["samples"]} == {
        "a-tram-street-in-place-in",
        "market",
        "poster",
        "harbour",
        "cafe",
    }
    market = next(s for s in doc["samples"] if s["prompt_id"] == "market")
    assert market["output_path"] == f"images/market/high/{market['job_id'][:16]}_0.webp"


def test_cost_is_the_sum_of_per_job_estimates(capsys: pytest.CaptureFixture[str]) -> None:
    from batchgen.manifest import plan
    from batchgen.planning.pricing import estimate_cost

    m = load_manifest(EXAMPLES / "everything.yaml")
    total = sum(estimate_cost(s, m.pricing) for s in plan(m))
    assert plan_json(capsys, EXAMPLES / "everything.yaml")["cost"]["usd"] == pytest.approx(total)


def test_duplicates_and_notices_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "d.yaml"
    path.write_text(
        "model: openai/gpt-image-2/edit\n"
        "defaults: {image_urls: ['https://x.test/a.png']}\n"
        "matrix: {quality: [low, low]}\n"
        "prompts: [make it blue]\n"
    )
    doc = plan_json(capsys, path)
    assert (doc["jobs"], doc["duplicates"]) == (1, 1)
    assert doc["cost"]["priced_by"] == {"assumed": 1}
    assert doc["notices"] == [
        f"1 duplicate job(s) collapsed: identical requests (first at {path}:4)",
        "1 job(s) with size auto are priced as 1024x1024",
    ]
    code, out, _ = run_plan(capsys, str(path))
    assert code == 0
    assert "jobs       1  (1 duplicate(s) collapsed)" in out
    assert "  - 1 job(s) with size auto are priced as 1024x1024" in out


def test_unknown_endpoint_is_counted_but_not_priced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "f.jsonl"
    path.write_text('{"endpoint": "fal-ai/flux/dev", "input": {"prompt": "a", "seed": 1}}\n')
    doc = plan_json(capsys, path)
    assert doc["jobs"] == 1 and doc["cost"]["usd"] == 0
    assert doc["by_size"] == {"-": {"jobs": 1, "images": 1, "cost_usd": 0.0}}
    assert any("no known price" in n for n in doc["notices"])
    assert any("fal-ai/flux/dev is not one batchgen knows" in n for n in doc["notices"])


def test_bad_manifest_exits_2_with_json_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("prompts: [a]\nrepeat: -1\n")
    code, out, err = run_plan(capsys, str(path), "--json")
    assert (code, out) == (2, "")
    assert err.startswith("batchgen: 1 problem in the manifest:\n")
    assert f"{path}:2: repeat:" in err


def test_plan_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("prompts: [a fox]\n")
    assert run_plan(capsys, str(path))[0] == 0
    assert [p.name for p in tmp_path.iterdir()] == ["m.yaml"]


@pytest.mark.slow
def test_a_closed_pipe_ends_quietly() -> None:
    # `batchgen plan big.yaml | head`: the reader goes away; no traceback, a shell's SIGPIPE code.
    manifest = Path(__file__).parents[1] / "manifests" / "everything.yaml"
    read, write = os.pipe()
    os.close(read)  # nobody will ever read: the first write fails with EPIPE
    with os.fdopen(write, "wb") as out:
        done = subprocess.run(
            [sys.executable, "-m", "batchgen", "plan", str(manifest), "--json"],
            stdout=out,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    assert done.returncode == 141
    assert b"Traceback" not in done.stderr and b"BrokenPipe" not in done.stderr
