"""Emulated images are real files of the requested size and format, different per prompt."""

from __future__ import annotations

import io

import pytest
from conftest import MakeClient
from emu_helpers import submit
from PIL import Image

from batchgen.emulator.images import ImageSpec, colour_for, render


@pytest.mark.parametrize(
    ("fmt", "pil", "ctype"),
    [("png", "PNG", "image/png"), ("jpeg", "JPEG", "image/jpeg"), ("webp", "WEBP", "image/webp")],
)
async def test_result_images_match_the_request(
    make_client: MakeClient, fmt: str, pil: str, ctype: str
) -> None:
    client, _ = await make_client(time_scale=0)
    body = {
        "prompt": "a tall tower",
        "image_size": {"width": 1024, "height": 1536},
        "num_images": 2,
        "output_format": fmt,
    }
    h = await submit(client, body)
    images = (await client.get(h["response_url"])).json()["images"]
    assert len(images) == 2
    for item in images:
        assert item["content_type"] == ctype
        data = (await client.get(item["url"])).content
        img = Image.open(io.BytesIO(data))
        assert (img.format, img.size) == (pil, (1024, 1536))
        assert (item["width"], item["height"], item["file_size"]) == (1024, 1536, len(data))
    assert images[0]["url"] != images[1]["url"]


async def test_presets_map_through_gptimage(make_client: MakeClient) -> None:
    client, _ = await make_client(time_scale=0)
    h = await submit(client, {"prompt": "wide", "image_size": "landscape_16_9"})
    (item,) = (await client.get(h["response_url"])).json()["images"]
    assert (item["width"], item["height"]) == (1360, 768)


def test_prompts_get_different_colours_and_pictures() -> None:
    a, b = ImageSpec("a cat", 1024, 768, "png"), ImageSpec("a dog", 1024, 768, "png")
    assert colour_for("a cat") != colour_for("a dog")
    assert colour_for("a cat", 0) != colour_for("a cat", 1)
    pa = Image.open(io.BytesIO(render(a))).convert("RGB")
    assert pa.getpixel((2, 2)) == colour_for("a cat")
    # The prompt is drawn: the picture is not one flat colour.
    assert len(pa.getcolors(maxcolors=1 << 16) or []) > 1
    assert render(a) != render(b)


def test_rendering_is_cached() -> None:
    spec = ImageSpec("cache me", 3840, 2160, "png")
    assert render(spec) is render(spec)
