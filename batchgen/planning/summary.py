"""The plan summary: what a manifest will do and what it may cost, in one pass over its jobs.

Pure: it takes the jobs (lazily) and the price table, and returns figures. `batchgen plan`
prints them; `batchgen run` can show the same before it starts. Memory is flat: jobs are
counted into a few groups (endpoint × size × quality) and priced per group at the end.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from batchgen.planning.disk import image_bytes
from batchgen.planning.jobs import Deduplicated, JobSpec
from batchgen.planning.paths import IMAGES_DIR, render_template, template_fields
from batchgen.planning.pricing import Basis, PriceTable

SAMPLES = 5


class Planned(Protocol):
    """What the summary reads of a manifest besides its jobs (``manifest.Manifest`` is one;
    the manifest stage sits above this one, so it is named by shape, not imported)."""

    @property
    def name(self) -> str: ...
    @property
    def path(self) -> Path: ...
    @property
    def sha256(self) -> str: ...
    @property
    def notices(self) -> tuple[str, ...]: ...
    @property
    def pricing(self) -> PriceTable: ...


ESTIMATE_NOTE = "an estimate from fal's published per-image prices; fal bills per token"


@dataclass(frozen=True, slots=True)
class Group:
    jobs: int
    images: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class Sample:
    job_id: str
    prompt_id: str
    prompt: str
    endpoint: str
    size: str
    quality: str
    output_path: str  # relative to the run's output folder
    source: str


@dataclass(frozen=True)
class PlanSummary:
    name: str
    manifest: str
    sha256: str
    jobs: int
    images: int
    duplicates: int
    cost_usd: float
    by_endpoint: Mapping[str, Group]
    by_size: Mapping[str, Group]
    by_quality: Mapping[str, Group]
    priced_by: Mapping[str, int]  # Basis -> jobs priced that way
    samples: tuple[Sample, ...]
    notices: tuple[str, ...]
    disk_bytes: int = 0  # what the images are expected to take on disk (planning/disk.py)

    def to_json(self) -> dict[str, Any]:
        def groups(g: Mapping[str, Group]) -> dict[str, Any]:
            return {k: asdict(v) for k, v in g.items()}

        return {
            "name": self.name,
            "manifest": self.manifest,
            "sha256": self.sha256,
            "jobs": self.jobs,
            "images": self.images,
            "duplicates": self.duplicates,
            "cost": {
                "usd": round(self.cost_usd, 6),
                "estimate": True,
                "note": ESTIMATE_NOTE,
                "priced_by": dict(self.priced_by),
            },
            "by_endpoint": groups(self.by_endpoint),
            "by_size": groups(self.by_size),
            "by_quality": groups(self.by_quality),
            "samples": [asdict(s) for s in self.samples],
            "notices": list(self.notices),
            "disk_bytes": self.disk_bytes,
        }


def size_key(image_size: Any) -> str:
    """A label for a size: the preset name, `WxH` for a custom size, `-` when not given."""
    if isinstance(image_size, str):
        return image_size
    if isinstance(image_size, Mapping):
        return f"{image_size.get('width')}x{image_size.get('height')}"
    return "-" if image_size is None else str(image_size)


def output_path(spec: JobSpec, n: int = 0) -> str:
    """Where image `n` of `spec` lands, relative to the output folder: the very function the
    run uses to name files, so the plan's sample paths are the real ones."""
    rel = render_template(spec.output_template, template_fields(spec, n))
    return f"{IMAGES_DIR}/{rel.as_posix()}"


class Tally:
    """The summary's counts, fed one job at a time: ``summarize`` runs one over every job, and
    a run feeds one from the same pass that plans the jobs into the journal (``feed``)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], list[int]] = {}
        self.sizes: dict[str, Any] = {}  # label -> one real value, to price it
        self.first: list[JobSpec] = []
        self.picked: dict[str, JobSpec] = {}  # one sample per prompt, the first few prompts
        self.disk = 0  # bytes the images are expected to take

    def add(self, spec: JobSpec) -> None:
        inp = spec.input
        size = inp.get("image_size")
        label = size if isinstance(size, str) else size_key(size)
        key = (spec.endpoint, label, str(inp.get("quality", "-")))
        c = self.counts.get(key)
        if c is None:
            c = self.counts[key] = [0, 0]
            self.sizes.setdefault(label, size)
        c[0] += 1
        c[1] += spec.num_images
        self.disk += image_bytes(spec, emulated=False) * spec.num_images
        if len(self.picked) < SAMPLES and spec.prompt_id not in self.picked:
            self.picked[spec.prompt_id] = spec
        if len(self.first) < SAMPLES:
            self.first.append(spec)

    def feed(self, specs: Iterable[JobSpec]) -> Iterator[JobSpec]:
        for spec in specs:
            self.add(spec)
            yield spec

    def summary(self, manifest: Planned, specs: Deduplicated) -> PlanSummary:
        """Once ``specs`` (whose duplicates were counted) has been read to the end."""
        chosen = list(self.picked.values())
        chosen += [s for s in self.first if s not in chosen][: SAMPLES - len(chosen)]
        s = _summary(manifest, specs, self.counts, self.sizes, chosen, manifest.pricing)
        return replace(s, disk_bytes=self.disk)


def summarize(manifest: Planned, specs: Deduplicated) -> PlanSummary:
    """Count, group, price and sample the manifest's jobs (``manifest.plan(m)``) in one lazy
    pass."""
    tally = Tally()
    for spec in specs:
        tally.add(spec)
    return tally.summary(manifest, specs)


def _summary(
    manifest: Planned,
    specs: Deduplicated,
    counts: Mapping[tuple[str, str, str], list[int]],
    sizes: Mapping[str, Any],
    chosen: Iterable[JobSpec],
    table: PriceTable,
) -> PlanSummary:
    by: list[dict[str, list[float]]] = [{}, {}, {}]
    priced_by: dict[str, int] = {}
    nearest: set[str] = set()
    total = 0.0
    for key, (jobs, images) in counts.items():
        endpoint, label, quality = key
        price, basis = table.per_image(endpoint, sizes[label], quality)
        cost = price * images
        total += cost
        priced_by[basis.value] = priced_by.get(basis.value, 0) + jobs
        if basis is Basis.NEAREST:
            nearest.add(label)
        for group, k in zip(by, key, strict=True):
            g = group.setdefault(k, [0, 0, 0.0])
            g[0] += jobs
            g[1] += images
            g[2] += cost
    frozen = [{k: Group(int(v[0]), int(v[1]), round(v[2], 6)) for k, v in g.items()} for g in by]
    samples = tuple(
        Sample(
            s.job_id,
            s.prompt_id,
            s.prompt,
            s.endpoint,
            size_key(s.input.get("image_size")),
            str(s.input.get("quality", "-")),
            output_path(s),
            s.source,
        )
        for s in chosen
    )
    return PlanSummary(
        name=manifest.name,
        manifest=str(manifest.path),
        sha256=manifest.sha256,
        jobs=sum(g.jobs for g in frozen[0].values()),
        images=sum(g.images for g in frozen[0].values()),
        duplicates=specs.duplicates,
        cost_usd=round(total, 6),
        by_endpoint=frozen[0],
        by_size=frozen[1],
        by_quality=frozen[2],
        priced_by=priced_by,
        samples=samples,
        notices=(*manifest.notices, *_notices(specs, priced_by, nearest)),
    )


def _notices(specs: Deduplicated, priced_by: Mapping[str, int], nearest: set[str]) -> list[str]:
    out = []
    if specs.duplicates:
        where = ", ".join(sorted({s.source for s in specs.examples}))
        out.append(
            f"{specs.duplicates:,} duplicate job(s) collapsed: identical requests "
            f"(first at {where})"
        )
    if priced_by.get(Basis.ASSUMED):
        out.append(f"{priced_by[Basis.ASSUMED]:,} job(s) with size auto are priced as 1024x1024")
    if nearest:
        out.append(
            f"sizes not in the price table ({', '.join(sorted(nearest))}) are priced "
            f"by the nearest one by pixel count"
        )
    if priced_by.get(Basis.UNPRICED):
        out.append(
            f"{priced_by[Basis.UNPRICED]:,} job(s) on endpoints with no known price are "
            f"counted as $0 (set pricing.per_image)"
        )
    return out
