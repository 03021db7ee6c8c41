"""Downloads against a small in-process image server serving real bytes, and one real socket.

Every refusal is checked for its recorded reason, for leaving nothing in place (no final file,
no ``.part``), and for writing nothing outside the output folder.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import struct
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from batchgen.errors import DownloadError
from batchgen.outputs.checks import READ_BLOCK
from batchgen.outputs.download import (
    DEFAULT_MAX_BYTES,
    Downloaded,
    download_image,
    part_path,
    sweep_parts,
)
from batchgen.outputs.index import append_failure, failure_row, read_failures
from batchgen.planning.jobs import JobSpec, job_id
from batchgen.planning.paths import image_path, template_fields
from batchgen.retry import MEDIA


def make_image(fmt: str = "PNG", size: tuple[int, int] = (96, 64)) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise(size, 40).convert("RGB").save(buf, fmt)
    return buf.getvalue()


PNG, JPEG, WEBP = make_image("PNG"), make_image("JPEG"), make_image("WEBP")
# Bigger than several write blocks, so blocks are hashed and written while others arrive.
BIG = make_image("PNG", (1100, 1000))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge canvas: what a decompression bomb looks like to a reader."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class ImageServer:
    """Routes for each way a media host can behave; counts hits and remembers headers."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.headers: list[dict[str, str]] = []
        self.flaky_failures = 2
        routes = [
            Route("/img/{name}", self.image),
            Route("/redirect/{n:int}", self.redirect),
            Route("/loop/{side}", self.loop),
            Route("/to-file", lambda r: RedirectResponse("file:///etc/passwd")),
            Route("/html", lambda r: Response("<html>hi</html>", media_type="text/html")),
            Route("/garbage", lambda r: Response(b"\x89PNG not really", media_type="image/png")),
            Route("/big", self.big),
            Route("/big-unsized", self.big_unsized),
            Route("/large.png", lambda r: Response(BIG, media_type="image/png")),
            Route("/large-unsized", self.large_unsized),
            Route("/short", self.short),
            Route("/flaky", self.flaky),
            Route("/status/{code:int}", lambda r: Response(b"no", r.path_params["code"])),
            Route(
                "/bomb", lambda r: Response(png_header_only(60000, 60000), media_type="image/png")
            ),
        ]
        self.app = Starlette(routes=routes)

    def _hit(self, request: Request) -> None:
        self.hits[request.url.path] += 1
        self.headers.append(dict(request.headers))

    async def image(self, request: Request) -> Response:
        self._hit(request)
        name = request.path_params["name"]
        body, mime = {
            "a.png": (PNG, "image/png"),
            "a.jpg": (JPEG, "image/jpeg"),
            "a.webp": (WEBP, "image/webp"),
            "lying.png": (JPEG, "image/png"),
            "untyped": (PNG, ""),
            # Cut files served whole: the lengths agree, only decoding can tell.
            "cut.png": (BIG[: len(BIG) // 2], "image/png"),
            "cut.jpg": (make_image("JPEG", (640, 480))[:3000], "image/jpeg"),
            "cut.webp": (WEBP[: len(WEBP) // 2], "image/webp"),
        }[name]
        return Response(body, headers={"content-type": mime} if mime else {})

    async def redirect(self, request: Request) -> Response:
        n = request.path_params["n"]
        return RedirectResponse(f"/redirect/{n - 1}" if n > 0 else "/img/a.png")

    async def loop(self, request: Request) -> Response:
        return RedirectResponse("/loop/b" if request.path_params["side"] == "a" else "/loop/a")

    async def big(self, request: Request) -> Response:
        return Response(PNG + b"\0" * 5000, media_type="image/png")

    async def big_unsized(self, request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"\0" * 1000

        return StreamingResponse(body(), media_type="image/png")

    async def large_unsized(self, request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            for i in range(0, len(BIG), 65536):
                yield BIG[i : i + 65536]

        return StreamingResponse(body(), media_type="image/png")

    async def short(self, request: Request) -> Response:
        # Declares the whole image and sends half of it, as a CDN that drops the connection.
        self._hit(request)
        return Response(
            PNG[: len(PNG) // 2],
            headers={"content-length": str(len(PNG)), "content-type": "image/png"},
        )

    async def flaky(self, request: Request) -> Response:
        self._hit(request)
        if self.hits["/flaky"] <= self.flaky_failures:
            return Response(b"busy", 503)
        return Response(PNG, media_type="image/png")


@pytest.fixture
def server() -> ImageServer:
    return ImageServer()


@pytest.fixture
async def http(server: ImageServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(server.app),
        base_url="http://media.test",
        headers={"Authorization": "Key secret-fal-key"},  # as the shared queue client has
    ) as client:
        yield client


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def nothing_at_etc_x() -> bool:
    return not Path("/etc/x").exists()


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


def dest_in(out: Path, name: str = "p/x.png") -> Path:
    return image_path(out, name, {})


async def fetch(http: httpx.AsyncClient, url: str, dest: Path, **kw: Any) -> Downloaded:
    kw.setdefault("max_bytes", DEFAULT_MAX_BYTES)
    kw.setdefault("expected_format", "png")
    kw.setdefault("sleep", Sleeps())
    return await download_image(http, url, dest, **kw)


@pytest.mark.parametrize(
    ("url", "fmt", "mime"),
    [
        ("/img/a.png", "png", "image/png"),
        ("/img/a.jpg", "jpeg", "image/jpeg"),
        ("/img/a.webp", "webp", "image/webp"),
        ("/img/untyped", None, "image/png"),
    ],
)
async def test_downloads_verified_image(
    http: httpx.AsyncClient, out: Path, url: str, fmt: str | None, mime: str
) -> None:
    dest = dest_in(out, "p/x.img")
    d = await fetch(http, "http://media.test" + url, dest, expected_format=fmt)
    data = dest.read_bytes()
    assert d.path == dest and d.bytes == len(data)
    assert d.sha256 == hashlib.sha256(data).hexdigest()
    assert (d.width, d.height, d.content_type) == (96, 64, mime)
    assert files_under(out) == {dest}


async def test_large_image_streams_in_blocks(http: httpx.AsyncClient, out: Path) -> None:
    assert len(BIG) > 2 * READ_BLOCK
    for url in ("/large.png", "/large-unsized"):
        dest = dest_in(out, f"p{url.replace('.', '-')}.png")
        d = await fetch(http, "http://media.test" + url, dest)
        assert (
            d.sha256
            == hashlib.sha256(BIG).hexdigest()
            == hashlib.sha256(dest.read_bytes()).hexdigest()
        )
        assert (d.width, d.height) == (1100, 1000)
    # Over the cap mid-stream while a block is still being written: nothing is left behind.
    with pytest.raises(DownloadError, match="cap"):
        await fetch(
            http,
            "http://media.test/large-unsized",
            dest_in(out, "q/z.png"),
            max_bytes=len(BIG) - 100_000,
        )
    assert not (out / "images" / "q").exists() or not any((out / "images" / "q").iterdir())


async def test_fal_key_never_reaches_the_image_host(
    http: httpx.AsyncClient, server: ImageServer, out: Path
) -> None:
    await fetch(http, "http://media.test/img/a.png", dest_in(out))
    assert server.headers and all("authorization" not in h for h in server.headers)


async def test_follows_up_to_five_redirects(http: httpx.AsyncClient, out: Path) -> None:
    d = await fetch(http, "http://media.test/redirect/4", dest_in(out))
    assert d.sha256 == hashlib.sha256(PNG).hexdigest()


@pytest.mark.parametrize(
    ("url", "reason", "kw"),
    [
        ("file:///etc/passwd", "bad_url", {}),
        ("ftp://media.test/a.png", "bad_url", {}),
        ("/img/a.png", "bad_url", {}),
        ("http://media.test/to-file", "bad_redirect", {}),
        # httpx does not tell a loop from a long chain: both stop at the redirect limit.
        ("http://media.test/loop/a", "too_many_redirects", {}),
        ("http://media.test/redirect/5", "too_many_redirects", {}),
        ("http://media.test/html", "wrong_type", {}),
        ("http://media.test/garbage", "not_image", {}),
        ("http://media.test/img/cut.png", "not_image", {}),
        ("http://media.test/img/cut.jpg", "not_image", {"expected_format": "jpeg"}),
        ("http://media.test/img/cut.webp", "not_image", {"expected_format": "webp"}),
        ("http://media.test/img/lying.png", "wrong_format", {}),
        ("http://media.test/img/a.jpg", "wrong_type", {}),
        ("http://media.test/big", "too_large", {"max_bytes": len(PNG) + 100}),
        ("http://media.test/big-unsized", "too_large", {"max_bytes": 5000}),
        ("http://media.test/bomb", "too_large", {}),
        ("http://media.test/status/404", "http_404", {}),
        ("data:text/html;base64,PGh0bWw+", "wrong_type", {}),
        ("data:image/png;base64,!!!not-base64", "bad_url", {}),
        (
            "data:image/png;base64," + base64.b64encode(b"\0" * 9000).decode(),
            "too_large",
            {"max_bytes": 1000},
        ),
    ],
)
async def test_hostile_or_broken_sources_are_refused_with_a_reason(
    http: httpx.AsyncClient, tmp_path: Path, out: Path, url: str, reason: str, kw: dict[str, Any]
) -> None:
    dest = dest_in(out)
    sleeps = Sleeps()
    with pytest.raises(DownloadError) as info:
        await fetch(http, url, dest, sleep=sleeps, **kw)
    assert info.value.reason == reason
    assert not info.value.retryable and sleeps.calls == []  # refused once, never retried
    spec = JobSpec(job_id="a" * 64, endpoint="openai/gpt-image-2", input={"prompt": "p"})
    append_failure(
        out, failure_row(spec, error_class=info.value.reason, message=str(info.value), attempts=1)
    )
    assert [f["class"] for f in read_failures(out)] == [reason]
    # Nothing in place, no .part, and nothing outside the output folder.
    assert files_under(tmp_path) == {out / "failures.jsonl"}
    assert nothing_at_etc_x()


async def test_server_file_name_never_names_the_file(out: Path) -> None:
    """fal's ``file_name`` is ignored: the name comes from the template and the job only."""
    result = {
        "images": [
            {
                "url": "data:image/png;base64," + base64.b64encode(PNG).decode(),
                "file_name": "../../etc/x",
                "content_type": "image/png",
            }
        ]
    }
    inp = {"prompt": "p", "output_format": "png"}
    spec = JobSpec(
        job_id=job_id("openai/gpt-image-2", inp, 0),
        endpoint="openai/gpt-image-2",
        input=inp,
        prompt_id="../../etc/x",
    )
    fields = template_fields(spec, 0)
    assert "file_name" not in fields
    dest = image_path(out, spec.output_template, fields)
    async with httpx.AsyncClient() as client:
        d = await fetch(client, result["images"][0]["url"], dest)
    assert d.path.is_relative_to((out / "images").resolve())
    assert files_under(out.parent) == {d.path}
    assert nothing_at_etc_x()


async def test_data_uri_from_sync_mode(out: Path) -> None:
    async with httpx.AsyncClient() as client:
        url = "data:image/webp;base64," + base64.b64encode(WEBP).decode()
        d = await fetch(client, url, dest_in(out, "x.webp"), expected_format="webp")
    assert d.path.read_bytes() == WEBP and d.content_type == "image/webp"


async def test_truncated_body_is_retried_and_never_left_in_place(
    http: httpx.AsyncClient, server: ImageServer, out: Path
) -> None:
    dest = dest_in(out)
    sleeps = Sleeps()
    with pytest.raises(DownloadError) as info:
        await fetch(
            http, "http://media.test/short", dest, sleep=sleeps, retry=MEDIA.jittered(lambda: 1.0)
        )
    assert info.value.reason == "truncated" and info.value.retryable
    assert server.hits["/short"] == 3 and sleeps.calls == [0.5, 1.0]
    assert files_under(out) == set()


async def test_5xx_is_retried_then_succeeds(
    http: httpx.AsyncClient, server: ImageServer, out: Path
) -> None:
    sleeps = Sleeps()
    d = await fetch(http, "http://media.test/flaky", dest_in(out), sleep=sleeps, retry=MEDIA)
    assert server.hits["/flaky"] == 3 and len(sleeps.calls) == 2
    assert d.path.read_bytes() == PNG


async def test_5xx_past_the_attempts_fails_retryable(
    http: httpx.AsyncClient, server: ImageServer, out: Path
) -> None:
    server.flaky_failures = 10
    with pytest.raises(DownloadError) as info:
        await fetch(http, "http://media.test/flaky", dest_in(out), retry=replace(MEDIA, attempts=2))
    assert (info.value.reason, info.value.retryable) == ("http_503", True)
    assert server.hits["/flaky"] == 2


async def test_transport_error_is_retried(out: Path) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, content=PNG, headers={"content-type": "image/png"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        d = await fetch(client, "https://cdn.test/a.png", dest_in(out))
    assert calls == 2 and d.bytes == len(PNG)


async def test_existing_file_with_right_checksum_is_not_fetched_again(
    http: httpx.AsyncClient, server: ImageServer, out: Path
) -> None:
    dest = dest_in(out)
    first = await fetch(http, "http://media.test/img/a.png", dest)
    again = await fetch(http, "http://media.test/img/a.png", dest, expected_sha256=first.sha256)
    assert again == first and server.hits["/img/a.png"] == 1
    dest.write_bytes(b"changed")  # a wrong checksum is fetched and replaced
    fixed = await fetch(http, "http://media.test/img/a.png", dest, expected_sha256=first.sha256)
    assert fixed == first and server.hits["/img/a.png"] == 2


async def test_stale_part_is_replaced(http: httpx.AsyncClient, out: Path) -> None:
    dest = dest_in(out)
    dest.parent.mkdir(parents=True)
    part_path(dest).write_bytes(b"left by a crash")
    (dest.parent / "other.png.part").write_bytes(b"another")
    await fetch(http, "http://media.test/img/a.png", dest)
    assert not part_path(dest).exists()
    assert sweep_parts(out) == 1 and files_under(out) == {dest}


@pytest.mark.parametrize("durable", [True, False])
async def test_concurrent_downloads_land_whole(
    http: httpx.AsyncClient, out: Path, durable: bool
) -> None:
    dests = [dest_in(out, f"p/{i}.png") for i in range(20)]
    got = await asyncio.gather(
        *(fetch(http, "http://media.test/img/a.png", d, durable=durable) for d in dests)
    )
    assert {d.sha256 for d in got} == {hashlib.sha256(PNG).hexdigest()}
    assert files_under(out) == set(dests)


@pytest.fixture
async def loopback(server: ImageServer) -> AsyncIterator[str]:
    config = uvicorn.Config(server.app, host="127.0.0.1", port=0, log_level="error", lifespan="off")
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    for _ in range(500):  # uvicorn has no "started" event to await
        if srv.started:
            break
        await asyncio.sleep(0.01)
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    await task


@pytest.mark.slow
async def test_over_a_real_socket(loopback: str, server: ImageServer, out: Path) -> None:
    on_retry: Callable[[float], Any] = Sleeps()
    async with httpx.AsyncClient() as client:
        d = await fetch(client, f"{loopback}/redirect/2", dest_in(out), sleep=on_retry)
        assert d.sha256 == hashlib.sha256(PNG).hexdigest()
        with pytest.raises(DownloadError) as info:  # the server drops the connection mid-body
            await fetch(
                client,
                f"{loopback}/short",
                dest_in(out, "q/y.png"),
                retry=replace(MEDIA, attempts=2),
            )
    assert info.value.reason == "truncated" and server.hits["/short"] == 2
    assert files_under(out) == {d.path}
