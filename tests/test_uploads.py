"""`uploads.Uploads`: local files resolved at submit time, against the emulator's storage."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from batchgen.emulator import EmulatorConfig, create_app
from batchgen.fal import Endpoints, QueueClient
from batchgen.fal.uploads import UPLOAD_MAX_AGE, UploadError, Uploads, local_references
from batchgen.journal.writer import JOURNAL_NAME, Journal
from batchgen.manifest import load_manifest, plan
from batchgen.planning.gptimage import EDIT
from batchgen.planning.jobs import JobSpec
from batchgen.retry import Action, RetryPolicy, ZeroWait

BASE = "http://emulator"


def png(path: Path, colour: tuple[int, int, int]) -> bytes:
    Image.new("RGB", (40, 30), colour).save(path, format="PNG")
    return path.read_bytes()


@dataclass
class World:
    folder: Path
    app: Any
    journal: Journal
    client: QueueClient
    http: httpx.AsyncClient

    def uploads(self, **kw: Any) -> Uploads:
        return Uploads(self.journal, self.client, folder=self.folder, **kw)

    def specs(self, body: str) -> list[JobSpec]:
        path = self.folder / "m.yaml"
        path.write_text(f"model: {EDIT}\n{body}")
        return list(plan(load_manifest(path)))

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.app.state.emulator.stats()
        return stats


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    app = create_app(EmulatorConfig(time_scale=0))
    journal = Journal.open(
        tmp_path / "out" / JOURNAL_NAME, manifest_sha256="0" * 64, version="t", settings={}
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as http:
        client = QueueClient(
            http,
            endpoints=Endpoints.single(BASE),
            key="k",
            sleep=ZeroWait(),
            retry=RetryPolicy(rng=lambda: 0.0),
        )
        try:
            yield World(tmp_path, app, journal, client, http)
        finally:
            journal.close()


def test_local_references_lists_paths_only() -> None:
    request = {
        "image_urls": ["a.png", "https://x.test/b.png", "data:image/png;base64,AA==", "c/d.png"],
        "mask_url": "m.png",
        "prompt": "not a file.png",
    }
    assert local_references(request) == ["a.png", "c/d.png", "m.png"]
    assert local_references({"prompt": "x"}) == []


async def test_text_to_image_input_is_sent_as_is(world: World) -> None:
    spec = JobSpec(job_id="0" * 64, endpoint="openai/gpt-image-2", input={"prompt": "x"})
    assert await world.uploads().resolve(spec) is spec.input
    assert world.stats()["uploads"] == 0


async def test_files_become_hosted_urls_uploaded_once_per_content(world: World) -> None:
    room = png(world.folder / "room.png", (10, 20, 30))
    png(world.folder / "mask.png", (0, 0, 0))
    specs = world.specs(
        "matrix: {quality: [low, medium, high]}\n"
        "prompts:\n  - {prompt: x, image_urls: [room.png, https://x.test/keep.png], "
        "mask_url: mask.png}\n"
    )
    up = world.uploads()
    # Three jobs need the same two files at the same moment: each file goes up once.
    bodies = await asyncio.gather(*(up.resolve(s) for s in specs))
    assert world.stats()["uploads"] == 2 and up.uploaded == 2
    urls = {b["image_urls"][0] for b in bodies}
    assert len(urls) == 1
    (url,) = urls
    assert url.startswith(f"{BASE}/files/") and url.endswith("/room.png")
    assert all(b["image_urls"][1] == "https://x.test/keep.png" for b in bodies)
    assert all(b["mask_url"].startswith(f"{BASE}/files/") for b in bodies)
    assert specs[0].input["image_urls"][0] == "room.png"  # the spec itself is untouched
    # The hosted file is the local file, and the journal keeps its URL by sha256.
    assert (await world.http.get(url)).content == room
    kept = world.journal.upload_get(hashlib.sha256(room).hexdigest())
    assert kept is not None and kept.url == url and kept.bytes == len(room)
    assert kept.content_type == "image/png"
    assert [e[2] for e in world.journal.events() if e[2] == "upload"] == ["upload"] * 2

    # Another run (a new resolver, the same journal) uploads nothing: the file need not exist.
    (world.folder / "room.png").unlink()
    again = await world.uploads().resolve(specs[0])
    assert again["image_urls"][0] == url and world.stats()["uploads"] == 2


async def test_an_old_upload_is_done_again(world: World) -> None:
    png(world.folder / "a.png", (1, 1, 1))
    (spec,) = world.specs("prompts:\n  - {prompt: x, image_urls: [a.png]}\n")
    first = await world.uploads().resolve(spec)
    later = world.uploads(wall=lambda: time.time() + UPLOAD_MAX_AGE + 60)
    second = await later.resolve(spec)
    assert first["image_urls"] != second["image_urls"] and world.stats()["uploads"] == 2


async def test_reuse_off_ignores_urls_from_earlier_runs(world: World) -> None:
    png(world.folder / "a.png", (1, 1, 1))
    (spec,) = world.specs("prompts:\n  - {prompt: x, image_urls: [a.png]}\n")
    await world.uploads().resolve(spec)
    fresh = world.uploads(reuse=False)  # --emulate: the last run's server is gone
    await fresh.resolve(spec)
    await fresh.resolve(spec)  # ...but its own upload is reused within the run
    assert world.stats()["uploads"] == 2


async def test_inline_sends_data_uris_and_uploads_nothing(world: World) -> None:
    data = png(world.folder / "a.png", (3, 4, 5))
    (spec,) = world.specs("prompts:\n  - {prompt: x, image_urls: [a.png]}\n")
    body = await world.uploads(inline=True).resolve(spec)
    assert body["image_urls"] == [f"data:image/png;base64,{base64.b64encode(data).decode()}"]
    assert world.stats()["uploads"] == 0


async def test_a_file_changed_or_gone_since_planning_fails_the_job(world: World) -> None:
    png(world.folder / "a.png", (1, 1, 1))
    (spec,) = world.specs("prompts:\n  - {prompt: x, image_urls: [a.png]}\n")
    png(world.folder / "a.png", (2, 2, 2))
    with pytest.raises(UploadError) as info:
        await world.uploads().resolve(spec)
    o = info.value.outcome
    assert (o.action, o.reason) == (Action.FINAL, "reference_changed")
    assert "a.png changed since this job was planned" in o.message
    (world.folder / "a.png").unlink()
    with pytest.raises(UploadError) as info:
        await world.uploads(inline=True).resolve(spec)
    assert info.value.outcome.reason == "reference_missing"
    assert world.stats()["uploads"] == 0


async def test_a_failed_upload_is_an_upload_outcome_never_a_submit_one(tmp_path: Path) -> None:
    app = create_app(EmulatorConfig(time_scale=0, faults="upload500=1"))
    journal = Journal.open(
        tmp_path / JOURNAL_NAME, manifest_sha256="0" * 64, version="t", settings={}
    )
    png(tmp_path / "a.png", (1, 1, 1))
    (tmp_path / "m.yaml").write_text(
        f"model: {EDIT}\nprompts: [{{prompt: x, image_urls: [a.png]}}]\n"
    )
    (spec,) = plan(load_manifest(tmp_path / "m.yaml"))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
            client = QueueClient(
                http,
                endpoints=Endpoints.single(BASE),
                key="k",
                sleep=ZeroWait(),
                retry=RetryPolicy(rng=lambda: 0.0),
            )
            with pytest.raises(UploadError) as info:
                await Uploads(journal, client, folder=tmp_path).resolve(spec)
    finally:
        journal.close()
    o = info.value.outcome
    # A 500 from storage is worth another try later; it can never have billed anything.
    assert (o.action, o.reason) == (Action.RETRY, "upload_http_500")
    assert o.message.startswith("uploading a.png: ")
    assert app.state.emulator.stats()["uploads_failed"] >= 2  # the CDN and the fallback


async def test_a_job_planned_without_content_ids_is_resolved_by_its_bytes(world: World) -> None:
    data = png(world.folder / "a.png", (7, 7, 7))
    spec = JobSpec(job_id="1" * 64, endpoint=EDIT, input={"prompt": "x", "image_urls": ["a.png"]})
    body = await world.uploads().resolve(spec)  # a journal row from before JobSpec.files
    assert body["image_urls"][0].startswith(f"{BASE}/files/")
    assert world.journal.upload_get(hashlib.sha256(data).hexdigest()) is not None
