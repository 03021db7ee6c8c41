"""Synthetic output folders for the gallery tests: many index rows, tiny shared images.

Not a test module (it holds no tests); named so that it sits with the files it serves.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from batchgen.outputs.checks import sha256_file
from batchgen.outputs.index import INDEX_FIELDS, METADATA

WORDS = ("lighthouse", "fox", "tram", "glacier", "tea house")


def tiny_png(colour: str = "#3a8a7a") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), colour).save(buf, "PNG")
    return buf.getvalue()


def synthetic_row(i: int, **over: Any) -> dict[str, Any]:
    """Index row ``i``: every column, made-up values that vary with ``i``."""
    row: dict[str, Any] = dict.fromkeys(INDEX_FIELDS)
    row.update(
        file_name=f"images/p{i % 7}/{i:016x}_0.png",
        job_id=f"{i:064x}",
        image_index=0,
        variant=0,
        prompt_id=f"p{i % 7}",
        prompt=f"a {WORDS[i % 5]} at dawn, variation {i}",
        vars={},
        tags={"set": "AB"[i % 2]},
        endpoint="openai/gpt-image-2",
        requested_size="1024x1024" if i % 3 else "1536x1024",
        width=8,
        height=6,
        quality=("low", "medium", "high")[i % 3],
        output_format="png",
        content_type="image/png",
        bytes=1000 + i,
        sha256="0" * 64,
        completed_at=f"2026-11-30T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}.000Z",
        cost_estimate=round(((i * 37) % 101) / 1000, 3),
        manifest_sha256="m",
        batchgen_version="test",
    )
    row.update(over)
    return row


def append_index(out: Path, rows: Iterable[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / METADATA).open("a", encoding="utf-8") as f:
        f.writelines(json.dumps(r, separators=(",", ":")) + "\n" for r in rows)


def place_images(out: Path, rows: Iterable[dict[str, Any]], png: bytes) -> Iterator[dict[str, Any]]:
    """Write ``png`` at every row's file name, and give the rows its real size and sha256."""
    for r in rows:
        dest = out / r["file_name"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(png)
        size, digest = sha256_file(dest)
        yield {**r, "bytes": size, "sha256": digest}


CALL = re.compile(r"^(batchgenGallery\.\w+)\((\d+),(.*)\);\n$", re.S)


def read_chunk(path: Path) -> tuple[str, int, Any]:
    """(function, chunk number, data) of a chunk script: it must be exactly one call."""
    m = CALL.match(path.read_text(encoding="ascii"))
    assert m, path
    return m[1], int(m[2]), json.loads(m[3])


def gallery_data(out: Path) -> dict[str, bytes]:
    """Everything the page reads (index.html and the chunks), by name."""
    files = {"index.html": (out / "index.html").read_bytes()}
    for p in sorted((out / ".gallery").iterdir()):
        if p.suffix == ".js" or p.name == "keys.bin":
            files[p.name] = p.read_bytes()
    return files


def gallery_records(out: Path) -> list[list[Any]]:
    """Every card of a built gallery, in the order written (see gallery_data.record)."""
    return [r for p in sorted(out.glob(".gallery/r-*.js")) for r in read_chunk(p)[2]]
