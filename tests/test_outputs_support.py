"""Output folders for the output-command tests: a small, fully deterministic one with every
awkward case the index can hold (for the golden comparison), and synthetic N-row ones (for the
memory tests). No tests here."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from batchgen.outputs.checks import inspect_quality, mime_of, sha256_file
from batchgen.outputs.download import Downloaded
from batchgen.outputs.index import METADATA, failure_row, index_row
from batchgen.outputs.rebuild import CompletedJob
from batchgen.planning.jobs import JobSpec, job_id
from batchgen.planning.paths import image_path, relative_name, template_fields

EP = "openai/gpt-image-2"
VERSION = "golden"
MANIFEST_SHA = "m" * 64
T0 = 1_800_000_000.0

# Tiny images as fixed bytes (an encoder of another version could write other bytes, and the
# checksums are part of the expected outputs).
IMAGES = {
    "png": base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAMAAAACCAIAAAASFvFNAAAAFUlEQVR4nGM8ISfHwMDAwMDAxAADABMuAQhqwGVh"
        "AAAAAElFTkSuQmCC"
    ),
    "png2": base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAUAAAAECAIAAADJUWIXAAAAFElEQVR4nGPkqjjBgASYGFABIT4AUG4BUsS1l10A"
        "AAAASUVORK5CYII="
    ),
    "webp": base64.b64decode(
        "UklGRjIAAABXRUJQVlA4ICYAAABwAQCdASoEAAQAAUAmJaACdAFAAAD+8U2v/IMf6Gv8FeAAm7AwAA=="
    ),
}

PROMPTS = [
    '=HYPERLINK("http://evil","x")',
    "a plain owl",
    'line one\nline two, "quoted"',
    "un hibou à l'aube, 夜明けのフクロウ",
    "-2 foxes",
    "@a tram",
]


def golden_spec(i: int, *, tags: Any = None, **extra: Any) -> JobSpec:
    fmt = "webp" if i % 3 == 2 else "png"
    prompt = PROMPTS[i % len(PROMPTS)] + (f", take {i}" if i >= len(PROMPTS) else "")
    inp: dict[str, Any] = {"prompt": prompt, "quality": "low", "output_format": fmt, **extra}
    return JobSpec(
        job_id=job_id(EP, inp, 0),
        endpoint=EP,
        input=inp,
        prompt_id=f"p{i % 2}",
        prompt=str(inp["prompt"]),
        vars={"i": str(i), "mood": "=calm" if i == 0 else "calm"},
        tags=tags if tags is not None else ["nature", f"n{i}"],
    )


def place(out: Path, spec: JobSpec, n: int, kind: str | None = None) -> Downloaded:
    dest = image_path(out, spec.output_template, template_fields(spec, n))
    dest.parent.mkdir(parents=True, exist_ok=True)
    fmt = str(spec.input.get("output_format", "png"))
    dest.write_bytes(IMAGES[kind or ("png2" if n else fmt)])
    size, digest = sha256_file(dest)
    w, h, pil, blank, phash = inspect_quality(dest)
    return Downloaded(dest, digest, size, w, h, mime_of(pil), blank, phash)


def row_of(out: Path, spec: JobSpec, n: int, d: Downloaded, k: int, **kw: Any) -> dict[str, Any]:
    return index_row(
        spec,
        n,
        d,
        out_dir=out,
        manifest_sha256=MANIFEST_SHA,
        version=VERSION,
        request_id=f"req-{k}",
        submitted_at=T0 + k,
        completed_at=T0 + k + 5,
        downloaded_at=T0 + k + 7,
        inference_time=1.5 + k,
        cost_estimate=0.01,
        **kw,
    )


def golden_specs() -> list[JobSpec]:
    edit = {
        "image_urls": ["https://example.com/in.png", "data:image/png;base64,aGVsbG8="],
        "mask_url": "https://example.com/mask.png",
    }
    return [
        golden_spec(0),
        golden_spec(1, num_images=2),
        golden_spec(2),
        golden_spec(3, **edit),
        golden_spec(4),  # its file goes missing
        golden_spec(5),  # its file is changed after download
        golden_spec(6),  # its file is not an image any more
    ]


def write_lines(out: Path, lines: list[bytes]) -> None:
    with (out / METADATA).open("ab") as f:
        f.writelines(lines)


def line(row: Any) -> bytes:
    return (json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def golden_folder(out: Path) -> list[JobSpec]:
    """A folder whose index has list tags, a crash re-download (one file written twice), a
    torn line, a blank line, rows that are not objects or have no file name, a row pointing
    out of the folder, and files missing, changed and broken on disk."""
    specs = golden_specs()
    lines: list[bytes] = []
    k = 0
    for spec in specs:
        for n in range(spec.num_images):
            d = place(out, spec, n)
            usage = {"input_tokens": 40, "output_tokens": 4000} if k == 0 else None
            lines.append(line(row_of(out, spec, n, d, k, usage=usage)))
            k += 1
            if k == 2:  # a crash tore the next row; the run wrote it again after a restart
                lines.append(line(row_of(out, spec, n, d, 99))[:57])
                lines.append(b"\n")
    # The first image downloaded again after a crash: its last row wins.
    d0 = place(out, specs[0], 0)
    lines.append(line(row_of(out, specs[0], 0, d0, 50)))
    lines += [b"[1, 2]\n", b'{"file_name": 7, "job_id": "x"}\n', b"   \n"]
    outside = dict(json.loads(lines[0]), file_name="images/../../../etc/passwd", job_id="f" * 64)
    lines.append(line(outside))
    write_lines(out, lines)
    image_path(out, specs[4].output_template, template_fields(specs[4], 0)).unlink()
    changed = image_path(out, specs[5].output_template, template_fields(specs[5], 0))
    changed.write_bytes(changed.read_bytes() + b"tampered")
    broken = image_path(out, specs[6].output_template, template_fields(specs[6], 0))
    broken.write_bytes(b"not an image at all")
    for path in (out / "images").rglob("*"):  # file times the rebuild may fall back to
        os.utime(path, (T0 + 1000, T0 + 1000))
    return specs


def golden_rebuild_input(out: Path, specs: list[JobSpec]) -> tuple[list[CompletedJob], list[Any]]:
    """The journal's view of the golden folder: checksums known for some jobs (the old index
    stands in for the rest), completion times for some, one job never indexed before."""
    jobs = []
    for i, spec in enumerate(specs):
        sha = {}
        if i % 2 == 0:
            sha = {
                n: sha256_file(place_path(out, spec, n))[1]
                for n in range(spec.num_images)
                if place_path(out, spec, n).is_file()
            }
        if i == 5:
            sha = {0: sha256_of(IMAGES["png"])}  # the checksum recorded at download
        jobs.append(
            CompletedJob(
                spec=spec,
                num_images=spec.num_images,
                request_id=f"req-j{i}",
                submitted_at=T0 + i,
                completed_at=T0 + 100 + i if i % 3 == 0 else None,
                cost_estimate=0.02,
                usage={"input_tokens": 10, "output_tokens": 100} if i == 1 else None,
                sha256=sha,
                origin="emulator" if i == 2 else "fal",
            )
        )
    fresh = golden_spec(7)  # downloaded, but its row never reached the index
    place(out, fresh, 0)
    os.utime(place_path(out, fresh, 0), (T0 + 2000, T0 + 2000))
    jobs.append(CompletedJob(spec=fresh, num_images=1, request_id="req-fresh"))
    failures = [
        failure_row(
            golden_spec(8),
            error_class="content_policy_violation",
            message="no",
            attempts=1,
            request_id="r8",
            failed_at=T0,
        ),
        failure_row(
            golden_spec(9),
            error_class="http_422",
            message="bad\nsize",
            attempts=3,
            failed_at=T0 + 1,
        ),
    ]
    return jobs, failures


def place_path(out: Path, spec: JobSpec, n: int) -> Path:
    return image_path(out, spec.output_template, template_fields(spec, n))


def sha256_of(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def mapping_folder(out: Path) -> None:
    """A folder whose manifest gave tags as a mapping somewhere (a list elsewhere)."""
    lines = []
    for i, tags in enumerate([{"set": "=A", "mood": "calm"}, ["dawn"], {}]):
        spec = golden_spec(i, tags=tags)
        lines.append(line(row_of(out, spec, 0, place(out, spec, 0), i)))
    write_lines(out, lines)


# ---- synthetic folders of N rows, for memory tests ------------------------------------------


def synthetic_spec(i: int) -> JobSpec:
    return golden_spec(i, tags=["nature", f"n{i % 7}"], output_format="png")


def synthetic_jobs(out: Path, n: int) -> Iterator[CompletedJob]:
    """What the journal says of the ``n`` jobs of :func:`synthetic_rows` (the rest comes from
    the old index, so a rebuild writes the same rows again)."""
    for i in range(n):
        spec = synthetic_spec(i)
        yield CompletedJob(
            spec=spec, num_images=1, request_id=f"req-{i}", submitted_at=T0 + i, cost_estimate=0.01
        )


def synthetic_rows(out: Path, n: int, *, shared: int = 4) -> Iterator[dict[str, Any]]:
    """``n`` realistic index rows with distinct file names; the files are hard links to
    ``shared`` tiny images (a link costs a directory entry, not a data block)."""
    sources = []
    for s in range(shared):
        src = out / "images" / f"src{s}.png"
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(IMAGES["png"] if s % 2 == 0 else IMAGES["png2"])
        size, digest = sha256_file(src)
        w, h, pil, blank, phash = inspect_quality(src)
        sources.append(Downloaded(src, digest, size, w, h, mime_of(pil), blank, phash))
    for i in range(n):
        spec = synthetic_spec(i)
        src = sources[i % shared]
        dest = place_path(out, spec, 0)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.link(src.path, dest)
        d = dataclasses.replace(src, path=dest)
        row = row_of(out, spec, 0, d, i)
        assert row["file_name"] == relative_name(out, dest)
        yield row
