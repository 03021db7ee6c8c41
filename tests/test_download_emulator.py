"""Downloads from the project's emulator with its media faults (truncate, slow_media, hostile).

Jobs are run through the queue client the way the scheduler does (submit, result), then every
image is downloaded and either indexed or recorded as a failure. Whatever the faults, the
output folder must hold only complete files whose checksums match their rows, no ``.part``, and
one failure row for every image that did not land.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchgen.emulator import EmulatorConfig, create_app
from batchgen.emulator.server import serve
from batchgen.errors import DownloadError, QueueError
from batchgen.fal import Endpoints, QueueClient
from batchgen.outputs.download import download_image
from batchgen.outputs.index import (
    FAILURES,
    append_failure,
    append_rows,
    failure_row,
    index_row,
    read_index,
    read_rows,
)
from batchgen.planning.jobs import JobSpec, job_id
from batchgen.planning.paths import image_path, template_fields
from batchgen.retry import MEDIA, RetryPolicy, ZeroWait

KEY = "key-id:secret"
EP = "openai/gpt-image-2"


async def no_wait(_: float) -> None:
    return None


def specs(n: int) -> list[JobSpec]:
    out = []
    for i in range(n):
        inp = {
            "prompt": f"test image {i}",
            "quality": "low",
            "image_size": "square",
            "num_images": 1 + i % 2,
            "output_format": ("png", "jpeg", "webp")[i % 3],
        }
        out.append(
            JobSpec(
                job_id=job_id(EP, inp, 0),
                endpoint=EP,
                input=inp,
                prompt_id=f"p{i % 4}",
                prompt=str(inp["prompt"]),
            )
        )
    return out


async def run_jobs(
    http: httpx.AsyncClient, base: str, jobs: list[JobSpec]
) -> list[tuple[JobSpec, int, str]]:
    """(spec, image index, url) of every image of every job the queue completed."""
    q = QueueClient(
        http,
        endpoints=Endpoints.single(base),
        key=KEY,
        sleep=ZeroWait(),
        retry=RetryPolicy(attempts=6),
    )
    urls = []
    for spec in jobs:
        try:  # queue faults are the scheduler's business; here only downloads are checked
            handle = await q.submit(spec.endpoint, spec.input)
            await q.status(handle)
            result = await q.result(handle)
        except QueueError:
            continue
        urls += [(spec, n, img["url"]) for n, img in enumerate(result["images"])]
    return urls


async def download_all(
    http: httpx.AsyncClient, out: Path, images: list[tuple[JobSpec, int, str]], attempts: int = 3
) -> None:
    sem = asyncio.Semaphore(8)

    async def one(spec: JobSpec, n: int, url: str) -> None:
        dest = image_path(out, spec.output_template, template_fields(spec, n))
        async with sem:
            try:
                d = await download_image(
                    http,
                    url,
                    dest,
                    max_bytes=50 << 20,
                    retry=replace(MEDIA, attempts=attempts),
                    expected_format=str(spec.input["output_format"]),
                    sleep=no_wait,
                )
            except DownloadError as exc:
                append_failure(
                    out,
                    failure_row(spec, error_class=exc.reason, message=str(exc), attempts=attempts)
                    | {"image_index": n},
                )
                return
        append_rows(out, [index_row(spec, n, d, out_dir=out, manifest_sha256="m")])

    await asyncio.gather(*(one(*img) for img in images))


def check_output(root: Path, out: Path, expected_images: int) -> tuple[int, int]:
    """The invariants; returns (rows, failures)."""
    rows, failed = read_index(out), read_failures_all(out)
    assert not list(root.rglob("*.part"))
    on_disk = {p.relative_to(out).as_posix() for p in (out / "images").rglob("*") if p.is_file()}
    assert on_disk == {r["file_name"] for r in rows}
    for r in rows:
        assert hashlib.sha256((out / r["file_name"]).read_bytes()).hexdigest() == r["sha256"]
    assert len({(f["job_id"], f["image_index"]) for f in failed}) == len(failed)
    assert len(rows) + len(failed) == expected_images
    assert all(p == out or p.is_relative_to(out) for p in root.rglob("*"))
    return len(rows), len(failed)


def read_failures_all(out: Path) -> list[dict[str, Any]]:
    """Every failure row: one per image here, where ``read_failures`` keeps one per job."""
    return list(read_rows(out / FAILURES))


@pytest.fixture
async def emulator_http() -> AsyncIterator[Any]:
    clients: list[httpx.AsyncClient] = []

    def make(**config: Any) -> tuple[httpx.AsyncClient, Any]:
        config.setdefault("time_scale", 0.0)
        app = create_app(EmulatorConfig(**config))
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
        clients.append(http)
        return http, app

    yield make
    for c in clients:
        await c.aclose()


async def test_truncated_media_never_leaves_a_partial_file(
    emulator_http: Any, tmp_path: Path
) -> None:
    http, _ = emulator_http(faults="truncate=0.6", seed=3)
    out = tmp_path / "out"
    images = await run_jobs(http, "http://emulator", specs(12))
    assert len(images) == 18
    await download_all(http, out, images)
    rows, failures = check_output(tmp_path, out, 18)
    stats = (await http.get("http://emulator/_emulator/stats")).json()
    assert stats["media_truncated"] > 0  # the fault really happened
    assert rows > 0 and failures > 0  # some images got through on a retry, some never did
    assert {f["class"] for f in read_failures_all(out)} == {"truncated"}


async def test_slow_media_arrives_whole(emulator_http: Any, tmp_path: Path) -> None:
    http, _ = emulator_http(faults="slow_media=1", slow_media_s=0.2, seed=1)
    out = tmp_path / "out"
    images = await run_jobs(http, "http://emulator", specs(4))
    await download_all(http, out, images)
    assert check_output(tmp_path, out, len(images)) == (len(images), 0)


async def test_hostile_profile(emulator_http: Any, tmp_path: Path) -> None:
    http, _ = emulator_http(faults="hostile", slow_media_s=0.05, seed=7)
    out = tmp_path / "out"
    images = await run_jobs(http, "http://emulator", specs(24))
    assert images
    await download_all(http, out, images, attempts=2)
    rows, _ = check_output(tmp_path, out, len(images))
    stats = (await http.get("http://emulator/_emulator/stats")).json()
    assert rows > 0 and stats["media_truncated"] + stats["media_slow"] > 0


@pytest.mark.slow
async def test_truncation_over_a_real_socket(tmp_path: Path) -> None:
    out = tmp_path / "out"
    async with (
        serve(EmulatorConfig(time_scale=0.0, faults="truncate=0.5", seed=5)) as base,
        httpx.AsyncClient() as http,
    ):
        images = await run_jobs(http, base, specs(6))
        await download_all(http, out, images)
    rows, _ = check_output(tmp_path, out, len(images))
    assert rows > 0
