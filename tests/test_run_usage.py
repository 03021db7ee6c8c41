"""A usage mistake costs nothing and leaves nothing: `batchgen run` checks every option, the
environment and the output folder's place before it makes the folder (exit 2, one line on
stderr, no folder, no traceback); a run nobody can be asked about is refused above
--confirm-over; a run without a key that may be billed names FAL_KEY first."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from test_run_support import emulator_thread, stats, write_manifest

from batchgen.cli import main

REPO = Path(__file__).resolve().parents[1]
DEAD = "http://127.0.0.1:9"  # the discard port: nothing answers there


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "FAL_KEY",
        "FAL_KEY_ID",
        "FAL_KEY_SECRET",
        "BATCHGEN_ENDPOINT",
        "BATCHGEN_NOTIFY_URL",
        "OPENAI_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # a run without --out would make outputs/<name> here


E = ["--emulate"]
# (why, flags, environment): each must be refused before the folder is made.
BAD: list[tuple[str, list[str], dict[str, str]]] = [
    ("unknown fault", [*E, "--faults", "kaboom=0.3"], {}),
    ("fault probability", [*E, "--faults", "flaky,content_policy=1.5"], {}),
    ("faults without --emulate", ["--faults", "flaky"], {"FAL_KEY": "k"}),
    ("listen address", [*E, "--watch", "webhook", "--webhook-listen", "nope"], {}),
    ("listen without webhook", [*E, "--webhook-listen", "127.0.0.1:0"], {}),
    ("webhook url", [*E, "--watch", "webhook", "--webhook-url", "nope"], {}),
    ("webhook against fal", ["--watch", "webhook"], {"FAL_KEY": "k"}),
    ("watch", [*E, "--watch", "sometimes"], {}),
    ("concurrency 0", [*E, "--concurrency", "0"], {}),
    ("concurrency text", [*E, "--concurrency", "many"], {}),
    ("max-cost negative", [*E, "--max-cost", "-1"], {}),
    ("max-cost nan", [*E, "--max-cost", "nan"], {}),
    ("max-attempts", [*E, "--max-attempts", "0"], {}),
    ("deadline", [*E, "--deadline", "0"], {}),
    ("download-concurrency", [*E, "--download-concurrency", "0"], {}),
    ("max-image-bytes", [*E, "--max-image-bytes", "0"], {}),
    ("time-scale", [*E, "--time-scale", "-1"], {}),
    ("result-ttl", [*E, "--result-ttl", "0"], {}),
    ("seed", [*E, "--seed", "x"], {}),
    ("priority", [*E, "--priority", "high"], {}),
    ("start-timeout short", [*E, "--start-timeout", "0.1"], {}),
    ("start-timeout past deadline", [*E, "--start-timeout", "5000"], {}),
    ("media-expiry", [*E, "--media-expiry", "10"], {}),
    ("stop-at", [*E, "--stop-at", "25:00"], {}),
    ("notify", [*E, "--notify", "ftp://hook"], {}),
    ("on-exit unknown", [*E, "--on-exit", "no-such-command-batchgen"], {}),
    ("on-exit unsplittable", [*E, "--on-exit", "'open"], {}),
    ("confirm-over", [*E, "--confirm-over", "-1"], {}),
    ("abbreviation", ["--emulat"], {}),
    ("reconcile a rehearsal", [*E, "--reconcile"], {}),
    ("endpoint scheme", ["--endpoint", "ftp://x"], {}),
    ("endpoint credentials", ["--endpoint", "http://u:p@127.0.0.1:9"], {}),
    ("two servers", [*E, "--endpoint", DEAD], {}),
    ("BATCHGEN_ENDPOINT", [], {"BATCHGEN_ENDPOINT": "nope", "FAL_KEY": "k"}),
    ("BATCHGEN_NOTIFY_URL", E, {"BATCHGEN_NOTIFY_URL": "nope"}),
    ("half a key", [], {"FAL_KEY_ID": "id"}),
    ("no key for fal", [], {}),
    ("no key, a server that is no emulator", ["--endpoint", DEAD], {}),
    ("no key, BATCHGEN_ENDPOINT no emulator", [], {"BATCHGEN_ENDPOINT": DEAD}),
]


@pytest.mark.parametrize(("why", "flags", "environ"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_option_is_refused_before_the_folder_is_made(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    why: str,
    flags: list[str],
    environ: dict[str, str],
) -> None:
    m = write_manifest(tmp_path / "m", 2)
    out = tmp_path / "out"
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert main(["run", str(m), "--out", str(out), *flags]) == 2, why
    captured = capsys.readouterr()
    assert not out.exists() and not (tmp_path / "outputs").exists(), why
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err


@pytest.mark.parametrize("listen", ["taken", "no.such.host.invalid:0"])
def test_a_webhook_address_that_cannot_be_bound_is_refused_before_the_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], listen: str
) -> None:
    m = write_manifest(tmp_path / "m", 2)
    out = tmp_path / "out"
    with socket.create_server(("127.0.0.1", 0)) as busy:
        if listen == "taken":
            listen = f"127.0.0.1:{busy.getsockname()[1]}"
        argv = ["run", str(m), "--emulate", "--watch", "webhook", "--webhook-listen", listen]
        assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--webhook-listen cannot listen on {listen}" in err
    assert not out.exists()


def test_a_byok_manifest_without_its_key_is_refused_before_the_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["run", str(REPO / "manifests/byok.yaml"), "--emulate", "--out", str(out)]) == 2
    assert "OPENAI_API_KEY" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("place", ["file", "under a file"])
def test_an_out_that_cannot_be_a_folder_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], place: str
) -> None:
    m = write_manifest(tmp_path / "m", 2)
    taken = tmp_path / "taken"
    taken.write_text("keep me\n")
    out = taken if place == "file" else taken / "sub" / "out"
    assert main(["run", str(m), "--emulate", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "is a file" in err
    assert taken.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "taken"]


# -- no unattended surprise spend ---------------------------------------------------------


def test_a_run_over_the_threshold_without_a_terminal_is_refused_naming_the_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAL_KEY", "test-key")
    m = write_manifest(tmp_path, 3)
    out = tmp_path / "out"
    with emulator_thread(time_scale=0, announce=False) as url:  # a server that bills
        argv = ["run", str(m), "--endpoint", url, "--out", str(out), "--quiet"]
        assert main([*argv, "--confirm-over", "0.01"]) == 2  # pytest's stdin: no terminal
        assert stats(url)["submits_accepted"] == 0
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert "~$0.03 is over --confirm-over $0.01" in err
        assert "add --yes" in err and "--max-cost USD" in err
        assert main([*argv, "--confirm-over", "0.01", "--max-cost", "1"]) == 0
        assert "capped by --max-cost $1" in capsys.readouterr().err
        assert stats(url)["submits_accepted"] == 3


def test_yes_goes_on_without_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAL_KEY", "test-key")
    m = write_manifest(tmp_path, 3)
    with emulator_thread(time_scale=0, announce=False) as url:
        argv = ["run", str(m), "--endpoint", url, "--out", str(tmp_path / "out"), "--quiet"]
        assert main([*argv, "--confirm-over", "0.01", "--yes"]) == 0
        assert stats(url)["submits_accepted"] == 3


@pytest.mark.parametrize("where", ["--emulate", "batchgen emulator"])
def test_a_rehearsal_is_never_refused_for_its_cost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    m = write_manifest(tmp_path, 3)
    out = tmp_path / "out"
    base = ["run", str(m), "--out", str(out), "--quiet", "--confirm-over", "0.01"]
    if where == "--emulate":
        assert main([*base, "--emulate", "--time-scale", "0"]) == 0
        return
    with emulator_thread(time_scale=0) as url:  # announces itself: a rehearsal, no key
        assert main([*base, "--endpoint", url]) == 0
        assert stats(url)["submits_accepted"] == 3


# -- a key before a run that may bill -----------------------------------------------------


def test_an_endpoint_without_a_key_that_is_no_emulator_names_fal_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = write_manifest(tmp_path, 2)
    out = tmp_path / "out"
    with emulator_thread(time_scale=0, announce=False) as url:  # to this run, a real server
        assert main(["run", str(m), "--endpoint", url, "--out", str(out), "--yes"]) == 2
        assert stats(url)["submits_accepted"] == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no fal key: set FAL_KEY" in err and url in err
    assert not out.exists()


def test_an_endpoint_that_is_a_batchgen_emulator_needs_no_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = write_manifest(tmp_path, 2)
    with emulator_thread(time_scale=0) as url:
        assert main(["run", str(m), "--endpoint", url, "--out", str(tmp_path / "out")]) == 0
        assert stats(url)["submits_accepted"] == 2


def test_the_python_api_checks_the_folder_and_the_key_before_making_it(
    tmp_path: Path,
) -> None:
    import batchgen
    from batchgen.errors import UsageError

    m = write_manifest(tmp_path / "m", 2)
    taken = tmp_path / "taken"
    taken.write_text("keep me\n")
    with pytest.raises(UsageError, match="is a file"):
        batchgen.run_sync(m, out=taken / "out", emulate=True, environ={})
    with pytest.raises(UsageError, match="no fal key"):
        batchgen.run_sync(m, out=tmp_path / "out", endpoint=DEAD, environ={})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "taken"]
