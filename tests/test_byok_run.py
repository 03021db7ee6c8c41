"""BYOK end to end through `main(argv)` and the emulator: the OpenAI key reaches fal's request
body and nothing else, the usage becomes token counts and a real cost, and a missing key stops
the run before anything happens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_run_support import emulator_thread, states, stats

from batchgen.cli import main
from batchgen.outputs.index import read_failures, read_index
from batchgen.planning.jobs import JobState
from batchgen.planning.pricing import token_cost

S = JobState
KEY = "sk-proj-Byok0123456789-must-never-be-written"
BAD_KEY = "wrong-Byok0123456789-must-never-be-written"  # the emulator quotes it back in a 422


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "BATCHGEN_ENDPOINT", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def byok_yaml(folder: Path) -> Path:
    path = folder / "byok.yaml"
    path.write_text(
        "name: byok\n"
        "byok: true\n"
        "defaults: {quality: low, image_size: landscape_4_3, output_format: jpeg}\n"
        "matrix: {num_images: [1, 2]}\n"
        "prompts: [a red fox, a blue heron]\n"
    )
    return path


def assert_nowhere(secret: str, out: Path, index: str, *texts: str) -> None:
    """The secret is in no file under ``out`` (the journal's bytes included) and no text."""
    files = [f for f in out.rglob("*") if f.is_file()]
    names = {f.name for f in files}
    assert {"journal.sqlite", "run.log", index, "index.html"} <= names, names
    assert any(n.startswith("manifest.") for n in names)
    for f in files:
        assert secret.encode() not in f.read_bytes(), f
    for text in texts:
        assert secret not in text


def test_byok_run_sends_the_key_and_writes_it_nowhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    m, out = byok_yaml(tmp_path), tmp_path / "out"
    code = main(["run", str(m), "--emulate", "--out", str(out), "--quiet", "--time-scale", "0"])
    assert code == 0
    assert states(out) == {S.DOWNLOADED: 4}
    err = capsys.readouterr().err
    assert_nowhere(KEY, out, "metadata.jsonl", err)

    rows = read_index(out)
    assert len(rows) == 6
    for row in rows:
        # the emulator answers usage only to requests that carried the key: it was sent
        usage = row["usage"]
        assert usage["output_tokens"] > 0 and usage["input_tokens_details"]["text_tokens"] > 0
        images = sum(1 for r in rows if r["job_id"] == row["job_id"])  # the job's share
        assert row["cost_actual"] == pytest.approx(token_cost(usage) / images, abs=1e-8)
    total = sum(r["cost_actual"] for r in rows)
    assert f"actual cost from usage ${total:.2f} (6 images with usage, 4 jobs" in err
    assert "on fal ~$0.06 this run" in err  # 6 low images at $0.01, billed nowhere

    # `batchgen status` reports the same real cost, in text and JSON
    assert main(["status", str(out)]) == 0
    assert f"actual cost from usage ${total:.2f} (6 images with usage, 4 jobs)" in (
        capsys.readouterr().out
    )
    assert main(["status", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["actual"]["jobs"] == 4 and doc["actual"]["usd"] == pytest.approx(total)


@pytest.mark.parametrize("kind", ["refused key", "echoed input"])
def test_a_422_that_echoes_the_key_is_scrubbed_before_it_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    if kind == "refused key":
        # The emulator's 422 quotes the key in its message and echoes the body as `input`.
        secret, m = BAD_KEY, byok_yaml(tmp_path)
        expected = 4
    else:
        # A BYOK endpoint id: its input is not checked at plan time; the emulator checks it by
        # the base model's rules and echoes the whole body (the good key in it) in the 422.
        secret, m = KEY, tmp_path / "byok.jsonl"
        line = {"endpoint": "openai/gpt-image-2/byok", "input": {"prompt": "a", "quality": "x"}}
        m.write_text(json.dumps(line) + "\n")
        expected = 1
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    out = tmp_path / "out"
    code = main(["run", str(m), "--emulate", "--out", str(out), "--quiet", "--time-scale", "0"])
    assert code == 1
    assert states(out) == {S.FAILED: expected}
    err = capsys.readouterr().err
    assert_nowhere(secret, out, "failures.jsonl", err)
    failures = read_failures(out)
    assert len(failures) == expected
    assert {f["class"] for f in failures} == {"validation"}
    if kind == "refused key":
        assert "Incorrect API key provided: ***" in failures[0]["message"]
    else:
        assert "quality" in failures[0]["message"]


def test_a_missing_key_stops_the_run_before_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAL_KEY", "fal-id:fal-secret-value")
    m, out = byok_yaml(tmp_path), tmp_path / "out"
    with emulator_thread(time_scale=0.0) as url:
        assert main(["run", str(m), "--endpoint", url, "--out", str(out)]) == 2
        s = stats(url)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "OPENAI_API_KEY is not set" in err
    assert "Traceback" not in err
    assert not out.exists()  # the output folder is not even created
    assert s["submit_attempts"] == 0


def test_plan_warns_about_a_missing_key_and_still_plans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    m = byok_yaml(tmp_path)
    assert main(["plan", str(m)]) == 0
    captured = capsys.readouterr()
    assert "jobs       4" in captured.out and "it is NOT set" in captured.out
    assert "warning:" in captured.err and "OPENAI_API_KEY is not set" in captured.err

    assert main(["plan", str(m), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["byok"]["openai_key_set"] is False and doc["byok"]["problem"]

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert main(["plan", str(m), "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["byok"] == {"enabled": True, "openai_key_set": True, "problem": None}
    assert KEY not in captured.out + captured.err and not captured.err
