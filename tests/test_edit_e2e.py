"""Edit jobs with local files, end to end through the emulator: uploads happen once across
runs, patterns make one job per file, the outputs show their references, the index records
them, and a file that cannot be sent fails only its own job."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from test_gallery_support import gallery_records
from test_run_support import emulator_thread, states, stats
from test_scheduler_support import Rig

from batchgen.cli import main
from batchgen.emulator.images import inset_box
from batchgen.emulator.references import auto_size
from batchgen.journal.writer import JOURNAL_NAME, Journal
from batchgen.manifest import load_manifest
from batchgen.outputs.index import read_failures, read_index
from batchgen.outputs.rebuild import CompletedJob, rebuild_from_rows
from batchgen.planning.gptimage import EDIT
from batchgen.planning.jobs import JobState
from batchgen.running.scheduler import Scheduler

S = JobState
EXAMPLES = Path(__file__).resolve().parent.parent / "manifests"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "BATCHGEN_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FAL_KEY", "test-key")


def solid_png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="PNG")


def inset_colour(path: Path) -> tuple[int, int, int]:
    """The colour of the emulator's inset (bottom right) of an output image."""
    img = Image.open(path).convert("RGB")
    _, _, right, bottom = inset_box(*img.size)
    pixel: tuple[int, int, int] = img.getpixel((right - 4, bottom - 4))
    return pixel


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(manifest: Path, out: Path, url: str, *extra: str) -> int:
    return main(["run", str(manifest), "--endpoint", url, "--out", str(out), "--quiet", *extra])


def test_edit_manifest_uploads_each_file_once_across_runs(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(EXAMPLES / "refs", folder / "refs")
    manifest = folder / "edit.yaml"
    shutil.copy(EXAMPLES / "edit.yaml", manifest)
    out = tmp_path / "out"
    with emulator_thread(time_scale=0) as url:
        assert run(manifest, out, url) == 0
        assert states(out) == {S.DOWNLOADED: 5}
        assert stats(url)["uploads"] == 3  # room, swatch, mask: once each, for 5 jobs
        assert stats(url)["references_refused"] == 0

        # The index says which files each edit used; the outputs show the first one.
        rows = {r["prompt_id"] + str(len(r["references"])): r for r in read_index(out)}
        room = {"path": "refs/room.png", "url": None, "sha256": sha(folder / "refs/room.png")}
        swatch = {"path": "refs/swatch.png", "url": None, "sha256": sha(folder / "refs/swatch.png")}
        assert rows["scandi2"]["references"] == [room, swatch]
        assert rows["scandi1"]["references"] == [room] and rows["scandi1"]["mask"] is None
        assert rows["masked1"]["mask"] == {
            "path": "refs/mask.png",
            "url": None,
            "sha256": sha(folder / "refs/mask.png"),
        }
        with Image.open(folder / "refs/room.png") as ref:
            expected_size = auto_size(*ref.size)  # image_size: auto takes the room's aspect
        assert {(r["width"], r["height"]) for r in rows.values()} == {expected_size}
        with Journal.open_readonly(out / JOURNAL_NAME) as j:
            sent = [row.spec.input for row in j.iter_jobs(S.DOWNLOADED)]
        assert all(i["image_urls"][0] == "refs/room.png" for i in sent)  # journal keeps paths
        labels = {ref[0] for card in gallery_records(out) for ref in card[11]}
        assert {"ref: room.png", "ref: swatch.png", "mask: mask.png"} <= labels

        # A second run with one more prompt: its job reuses the uploads kept in the journal.
        manifest.write_text(manifest.read_text() + '  - id: dusk\n    prompt: "at dusk"\n')
        assert run(manifest, out, url) == 0
        assert states(out) == {S.DOWNLOADED: 7}
        assert stats(url)["uploads"] == 3
        assert stats(url)["submits_accepted"] == 7

        # An edited reference is new content: its jobs are new, and it is uploaded anew.
        solid_png(folder / "refs/swatch.png", (250, 0, 250))
        assert run(manifest, out, url) == 0
        assert stats(url)["uploads"] == 4
        assert stats(url)["submits_accepted"] == 7 + 3  # the three jobs that use the swatch
        with Journal.open_readonly(out / JOURNAL_NAME) as j:
            assert j.counts()[S.DOWNLOADED] == 7  # the manifest's jobs, all done
    new = [
        r
        for r in read_index(out)
        if r["references"][-1]["sha256"] == sha(folder / "refs/swatch.png")
    ]
    assert len(new) == 3


def test_glob_manifest_makes_one_job_per_file_and_each_shows_its_own(tmp_path: Path) -> None:
    colours = {"mug": (200, 40, 40), "lamp": (40, 200, 40), "vase": (40, 40, 200)}
    for name, colour in colours.items():
        solid_png(tmp_path / "products" / f"{name}.png", colour, size=(90, 30))
    manifest = tmp_path / "products.yaml"
    manifest.write_text(
        f"name: products\nmodel: {EDIT}\n"
        "defaults: {quality: low, image_urls: [products/*.png]}\n"
        "prompts: [on a white background, on a kitchen counter]\n"
    )
    out = tmp_path / "out"
    with emulator_thread(time_scale=0) as url:
        assert run(manifest, out, url) == 0
        assert stats(url)["uploads"] == 3
    rows = read_index(out)
    assert len(rows) == 6
    for r in rows:
        (ref,) = r["references"]
        name = Path(ref["path"]).stem
        assert ref["sha256"] == sha(tmp_path / ref["path"])
        assert inset_colour(out / r["file_name"]) == colours[name]  # an edit of that file
        assert (r["width"], r["height"]) == auto_size(90, 30)  # 3:1, within the model's rules
    assert sorted(Path(r["references"][0]["path"]).stem for r in rows) == sorted(
        [*colours, *colours]
    )

    # A new photo in the folder is picked up by the next run: two new jobs, one upload.
    solid_png(tmp_path / "products" / "bowl.png", (10, 10, 10))
    with emulator_thread(time_scale=0) as url:
        assert run(manifest, out, url) == 0
        assert stats(url)["submits_accepted"] == 2
    assert states(out) == {S.DOWNLOADED: 8}


def test_the_example_products_manifest_runs_twice_with_emulate(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES / "products", tmp_path / "products")
    manifest = tmp_path / "products.yaml"
    shutil.copy(EXAMPLES / "products.yaml", manifest)
    out = tmp_path / "out"
    args = ["run", str(manifest), "--emulate", "--out", str(out), "--quiet", "--time-scale", "0"]
    assert main(args) == 0
    assert states(out) == {S.DOWNLOADED: 6}
    # --emulate starts a new emulator each time: the earlier run's storage is gone, so the
    # new jobs of a second run must not be handed URLs from the journal (they would be 422s).
    manifest.write_text(manifest.read_text() + "  - id: night\n    prompt: at night\n")
    assert main(args) == 0
    assert states(out) == {S.DOWNLOADED: 9}


def test_inline_uploads_send_data_uris_and_store_nothing(tmp_path: Path) -> None:
    solid_png(tmp_path / "a.png", (1, 100, 200))
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"model: {EDIT}\nprompts: [{{prompt: x, image_urls: [a.png]}}]\n")
    out = tmp_path / "out"
    with emulator_thread(time_scale=0) as url:
        assert run(manifest, out, url, "--inline-uploads") == 0
        assert stats(url)["uploads"] == 0
    (row,) = read_index(out)
    assert inset_colour(out / row["file_name"]) == (1, 100, 200)
    with Journal.open_readonly(out / JOURNAL_NAME) as j:
        assert j.upload_get(sha(tmp_path / "a.png")) is None


async def test_a_failed_upload_fails_that_job_and_the_run_goes_on(tmp_path: Path) -> None:
    rig = Rig(tmp_path, 1, emulator={"faults": "upload500=1"})
    solid_png(tmp_path / "a.png", (5, 5, 5))
    path = tmp_path / "mixed.jsonl"
    lines = [
        {"id": "edit", "endpoint": EDIT, "input": {"prompt": "x", "image_urls": ["a.png"]}},
        {"id": "plain", "input": {"prompt": "a fox", "quality": "low"}},
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    rig.manifest = load_manifest(path)
    result = await rig.run(concurrency=2)
    assert result.error is None
    assert rig.states() == {S.DOWNLOADED: 1, S.FAILED: 1}
    (failure,) = read_failures(rig.out)
    assert failure["prompt_id"] == "edit" and failure["class"] == "upload_http_500"
    assert failure["message"].startswith("uploading a.png: ")
    assert rig.stats()["submits_accepted"] == 1  # the edit was never submitted


async def test_a_file_gone_before_its_submit_fails_that_job_only(tmp_path: Path) -> None:
    rig = Rig(tmp_path, 1)
    solid_png(tmp_path / "a.png", (5, 5, 5))
    solid_png(tmp_path / "b.png", (6, 6, 6))
    path = tmp_path / "e.yaml"
    path.write_text(f"model: {EDIT}\nmatrix: {{image_urls: [[a.png], [b.png]]}}\nprompts: [x]\n")
    rig.manifest = load_manifest(path)
    (tmp_path / "b.png").unlink()  # after planning, before the run
    await rig.run()
    assert rig.states() == {S.DOWNLOADED: 1, S.FAILED: 1}
    (failure,) = read_failures(rig.out)
    assert failure["class"] == "reference_missing"


def test_rebuilt_index_keeps_references(tmp_path: Path) -> None:
    solid_png(tmp_path / "a.png", (1, 2, 3))
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"model: {EDIT}\nprompts: [{{prompt: x, image_urls: [a.png]}}]\n")
    out = tmp_path / "out"
    args = ["run", str(manifest), "--emulate", "--out", str(out), "--quiet", "--time-scale", "0"]
    assert main(args) == 0
    before = read_index(out)
    with Journal.open_readonly(out / JOURNAL_NAME) as j:
        done = [CompletedJob(r.spec, r.spec.num_images) for r in j.iter_jobs(S.DOWNLOADED)]
    rebuild_from_rows(out, done, manifest_sha256=before[0]["manifest_sha256"])
    (after,) = read_index(out)
    assert (
        after["references"]
        == before[0]["references"]
        == [{"path": "a.png", "url": None, "sha256": sha(tmp_path / "a.png")}]
    )
    assert after["mask"] is None


class HangingStorage(httpx.AsyncBaseTransport):
    """The emulator, except that storage never answers: the run is stopped at once while a
    job is still uploading its reference, before any POST of that job."""

    def __init__(self, app: Any) -> None:
        self._inner = httpx.ASGITransport(app=app)
        self.sched: Scheduler | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if "/storage/" in request.url.path or "/files/upload" in request.url.path:
            assert self.sched is not None
            self.sched.stop(now=True)  # the second Ctrl-C, while the upload is in flight
            await asyncio.Event().wait()  # cancelled by the stop
        return await self._inner.handle_async_request(request)


async def test_stopped_while_uploading_is_not_a_possible_duplicate(tmp_path: Path) -> None:
    rig = Rig(tmp_path, 1)
    solid_png(tmp_path / "a.png", (5, 5, 5))
    path = tmp_path / "e.yaml"
    path.write_text(f"model: {EDIT}\nprompts: [{{prompt: x, image_urls: [a.png]}}]\n")
    rig.manifest = load_manifest(path)
    transport = HangingStorage(rig.app)

    def control(sched: Scheduler, event: Any) -> None:
        transport.sched = sched

    await rig.run(transport=transport, control=control)
    assert rig.states() == {S.PENDING: 1}  # nothing was submitted: back in line, not UNKNOWN
    assert rig.stats()["submits_accepted"] == 0
    with rig.journal() as j:
        assert j.tallies().possible_duplicates == 0

    result = await rig.run()  # the next run submits it once
    assert result.error is None and rig.states() == {S.DOWNLOADED: 1}
    assert rig.stats()["submits_accepted"] == 1
