"""Edit requests on the emulator: references must be fetchable (data URIs or its own URLs),
and the output shows the first one, so an edit is told apart from a text-to-image job."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
import pytest
from conftest import MakeClient
from emu_helpers import stats, submit
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from batchgen.emulator.images import inset_box
from batchgen.emulator.references import auto_size
from batchgen.planning import gptimage

EDIT_PATH = "/openai/gpt-image-2/edit"
GREEN = (0, 200, 0)


def png_bytes(colour: tuple[int, int, int] = GREEN, size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


async def upload(client: httpx.AsyncClient, data: bytes) -> str:
    r = await client.post("/files/upload", content=data, headers={"content-type": "image/png"})
    url: str = r.json()["access_url"]
    return url


async def result(client: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    h = await submit(client, {"prompt": "restyle", "quality": "low", **body}, EDIT_PATH)
    return await client.get(h["response_url"])


async def first_image(client: httpx.AsyncClient, r: httpx.Response) -> Image.Image:
    assert r.status_code == 200, r.text
    data = (await client.get(r.json()["images"][0]["url"])).content
    return Image.open(io.BytesIO(data)).convert("RGB")


def inset_pixel(img: Image.Image) -> tuple[int, int, int]:
    _, _, right, bottom = inset_box(*img.size)
    # The thumbnail keeps its aspect inside the box, anchored bottom right: sample near there.
    pixel: tuple[int, int, int] = img.getpixel((right - 4, bottom - 4))
    return pixel


async def test_uploaded_file_and_data_uri_are_accepted_and_shown(make_client: MakeClient) -> None:
    client, _ = await make_client(time_scale=0)
    url = await upload(client, png_bytes())
    img = await first_image(client, await result(client, {"image_urls": [url]}))
    assert inset_pixel(img) == GREEN
    blue = base64.b64encode(png_bytes((0, 0, 220))).decode()
    r = await result(client, {"image_urls": [f"data:image/png;base64,{blue}", url]})
    assert inset_pixel(await first_image(client, r)) == (0, 0, 220)  # the first one shows


async def test_text_to_image_output_has_no_inset(make_client: MakeClient) -> None:
    client, _ = await make_client(time_scale=0)
    h = await submit(client, {"prompt": "restyle", "quality": "low", "image_size": "square_hd"})
    img = await first_image(client, await client.get(h["response_url"]))
    assert inset_pixel(img) == img.getpixel((img.width - 2, img.height - 2))


async def test_an_image_the_emulator_made_can_be_edited(make_client: MakeClient) -> None:
    client, _ = await make_client(time_scale=0)
    h = await submit(client, {"prompt": "base", "quality": "low", "image_size": "square_hd"})
    made = (await client.get(h["response_url"])).json()["images"][0]["url"]
    assert (await result(client, {"image_urls": [made]})).status_code == 200


@pytest.mark.parametrize(
    ("field", "value", "loc"),
    [
        ("image_urls", ["refs/room.png"], ["body", "image_urls", "0"]),  # a local path
        ("image_urls", ["https://elsewhere.test/a.png"], ["body", "image_urls", "0"]),
        ("image_urls", ["http://emulator/files/nope/a.png"], ["body", "image_urls", "0"]),
        ("image_urls", ["data:image/png;base64,%%%"], ["body", "image_urls", "0"]),
        ("mask_url", "mask.png", ["body", "mask_url"]),
    ],
)
async def test_references_it_cannot_fetch_are_a_422_detail_list(
    make_client: MakeClient, field: str, value: Any, loc: list[str]
) -> None:
    client, _ = await make_client(time_scale=0)
    body: dict[str, Any] = {"image_urls": [await upload(client, png_bytes())], field: value}
    r = await result(client, body)
    assert r.status_code == 422
    (item,) = r.json()["detail"]
    assert item["loc"] == loc and item["type"] == "value_error"
    assert "upload local files first" in item["msg"]
    assert (await stats(client))["references_refused"] == 1


async def test_a_reference_that_is_not_an_image_is_refused(make_client: MakeClient) -> None:
    client, _ = await make_client(time_scale=0)
    url = await upload(client, b"just text")
    r = await result(client, {"image_urls": [url]})
    assert r.status_code == 422
    assert r.json()["detail"][0]["msg"] == "the file is not an image"


async def test_auto_size_takes_the_first_references_aspect(make_client: MakeClient) -> None:
    client, _ = await make_client(time_scale=0)
    tall = await upload(client, png_bytes(size=(300, 900)))
    img = await first_image(client, await result(client, {"image_urls": [tall]}))
    assert img.size == auto_size(300, 900)
    assert img.height > img.width
    fixed = await result(client, {"image_urls": [tall], "image_size": "landscape_4_3"})
    assert (await first_image(client, fixed)).size == (1024, 768)


@given(st.integers(1, 20_000), st.integers(1, 20_000))
def test_auto_size_obeys_the_models_size_rules(width: int, height: int) -> None:
    w, h = auto_size(width, height)
    assert gptimage.custom_size_problems(w, h) == []
    if 1 / 2.9 < width / height < 2.9:  # unclamped: the aspect is kept, near enough
        assert abs(w / h - width / height) / (width / height) < 0.05
