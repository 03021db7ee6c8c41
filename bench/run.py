"""Benchmark ``batchgen run`` against the official ``fal-client``, side by side.

Measures, never asserts. Every client runs in its own process against a fresh emulator
process with the same configuration (and seed), so neither shares an event loop or a core
with the server, and each sees the same run times. The fal-client side is the obvious way:
a semaphore, ``submit``, ``handle.get()`` (its default 100 ms polling), one httpx download
per image. Scenarios (``--only``):

- ``throughput``: N jobs, 64 at once, zero model time: jobs/s and client CPU ms per job.
  batchgen's figure is the whole ``run_manifest`` (planning into the journal, every
  transition committed, the fsynced request id, verified downloads, the index and gallery).
- ``status``: 200 jobs, 40 at once, 2 s ± 50 % model time: status requests per job as the
  emulator counted them, and client CPU per job, for ``--watch stream``, ``--watch poll``,
  ``--watch webhook`` (the emulator POSTs each result to batchgen's receiver) and fal-client.
- ``util``: ``--concurrency auto`` against an account limit of 40: share of slot time busy
  once settled (defined in the output), from the emulator's own start/finish times.
- ``resume``: a journal of a million jobs (planned by a ``batchgen run --max-cost 0``), then
  a resuming ``batchgen run`` process: time from its start to the first submit the emulator
  accepted, and its peak RSS.

The emulator's latency model has ±25 % jitter around a time per quality and image size, so
"2 s ± 50 %" comes from a mix of five square sizes (816 to 1472 px) at quality low and a time
scale that puts the mean at 2 s; the table prints the run times the emulator actually used.
The emulator process is the stock app plus ``/_bench/timeline`` (each request's submit, start
and finish times on the system-wide monotonic clock) and, unless ``--stock-render-cache``, an
image cache that holds every image of the run (see docs/benchmarks.md for why). In batchgen's
process the journal's writes and the gallery build are wrapped by timers, not changed.

    python bench/run.py                                   # all of it (~10 min, ~1 GB disk)
    python bench/run.py --jobs 500 --util-jobs 400 --resume-jobs 100000     # quicker
    python bench/run.py --only status
    python bench/run.py --only status --tls      # over HTTPS, as fal is served
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batchgen.emulator.latency import BASE_RUN_S
from batchgen.manifest import load_manifest, plan
from batchgen.options import DOWNLOAD_CONCURRENCY

# Square sides in px whose √megapixels (the latency model's size factor) spread evenly from
# 0.80 to 1.44; with the model's own ±25 % jitter, run times span about ±50 % of the mean.
SIDES = (816, 976, 1152, 1312, 1472)
LOW_BASE_S = BASE_RUN_S["low"]  # seconds for one megapixel at quality low
LIMIT = 40


def scale_for(mean_s: float) -> float:
    """The emulator time scale that makes the SIDES mix average ``mean_s`` seconds."""
    mean_factor = statistics.fmean(s / 1024 for s in SIDES)
    return mean_s / (LOW_BASE_S * mean_factor)


# -- manifests --------------------------------------------------------------------------------


def write_manifest(folder: Path, name: str, jobs: int, *, sizes: bool) -> tuple[Path, int]:
    """About ``jobs`` distinct low-quality jpeg jobs (the path and the exact count); with
    ``sizes``, spread evenly over the SIDES mix, else all 1024x768."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"name: {name}", "defaults:", "  quality: low", "  output_format: jpeg"]
    if sizes:
        lines += ["matrix:", "  image_size:"]
        lines += [f"    - {{width: {s}, height: {s}}}" for s in SIDES]
        axes = [max(1, jobs // len(SIDES))]
    else:
        lines.append("  image_size: landscape_4_3")
        axes = [min(jobs, 1000), max(1, jobs // 1000)]  # a million: 1000 x 1000
    lines.append("vars:")
    for var, n in zip("ab", axes, strict=False):
        lines.append(f"  {var}: [{', '.join(map(str, range(n)))}]")
    holes = "-".join("{" + var + "}" for var, _ in zip("ab", axes, strict=False))
    lines += ["prompts:", "  - id: p", f'    prompt: "{name} bench picture {holes}"']
    path = folder / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    count = (len(SIDES) if sizes else 1) * axes[0] * (axes[1] if len(axes) > 1 else 1)
    return path, count


# -- the emulator process ---------------------------------------------------------------------


def serve_main(cfg: dict[str, Any]) -> None:
    """The emulator, plus ``/_bench/timeline``: each request's (submitted, started, completed)
    on the system-wide monotonic clock, and this process's CPU seconds."""
    from batchgen.emulator import EmulatorConfig, create_app
    from batchgen.emulator.server import serve_asgi

    config = EmulatorConfig(
        concurrency_limit=cfg["limit"], time_scale=cfg["time_scale"], seed=cfg.get("seed", 0)
    )
    app = create_app(config)
    model = app.state.emulator
    if cfg.get("render_cache"):
        from functools import lru_cache

        from batchgen.emulator import images

        # Hold every image of the run: fal's CDN serves stored files, it does not render
        # them again when a client downloads after more than CACHE_ENTRIES other results.
        render = images._render_cached.__wrapped__
        images._render_cached = lru_cache(maxsize=cfg["render_cache"])(render)

    async def bench_app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/_bench/timeline":
            await app(scope, receive, send)
            return
        model.advance(config.clock())
        reqs = list(model.requests.values())
        if scope.get("query_string") == b"first=1":
            reqs = reqs[:1]
        body = {
            "now": config.clock(),
            "cpu": time.process_time(),
            "requests": [[r.submitted_at, r.started_at, r.completed_at] for r in reqs],
        }
        head = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        tls = (cfg["tls"][0], cfg["tls"][1]) if cfg.get("tls") else None
        async with serve_asgi(bench_app, "127.0.0.1", 0, tls=tls) as url:
            print(f"listening on {url}", flush=True)
            await stop.wait()

    asyncio.run(main())


def make_certificate(folder: Path) -> list[str]:
    """A self-signed certificate for 127.0.0.1 and its key (``--tls``): [cert, key] paths."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    paths = [folder / "bench-cert.pem", folder / "bench-key.pem"]
    paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return [str(x) for x in paths]


TLS: list[str] | None = None  # --tls: [certificate, key] the emulator serves with


class Emulator:
    def __init__(self, *, time_scale: float, limit: int, render_cache: int = 0) -> None:
        cfg = json.dumps(
            {"time_scale": time_scale, "limit": limit, "render_cache": render_cache, "tls": TLS}
        )
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", cfg], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on " not in line:
            self.proc.kill()
            raise SystemExit(f"emulator did not start: {line!r}")
        self.url = line.split("listening on ")[1].strip()

    def stats(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{self.url}/_emulator/stats", timeout=60).json()
        return body

    def timeline(self, *, first: bool = False) -> dict[str, Any]:
        q = "?first=1" if first else ""
        body: dict[str, Any] = httpx.get(f"{self.url}/_bench/timeline{q}", timeout=60).json()
        return body

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def emulator(*, time_scale: float, limit: int, render_cache: int = 0) -> Iterator[Emulator]:
    emu = Emulator(time_scale=time_scale, limit=limit, render_cache=render_cache)
    try:
        yield emu
    finally:
        emu.close()


# -- the clients: bench/clients.py, each in its own process ----------------------------------


PROFILE: Path | None = None  # --profile: where py-spy's stacks of each client run go


def run_client(
    client: str,
    manifest: Path,
    emu: Emulator,
    out: Path,
    *,
    concurrency: str,
    watch: str = "stream",
    downloads: int = 8,
) -> dict[str, Any]:
    """Run one client in a fresh process against ``emu``; add what the server saw."""
    cpu0 = emu.timeline(first=True)["cpu"]
    cfg = {
        "client": client,
        "manifest": str(manifest),
        "url": emu.url,
        "out": str(out),
        "concurrency": concurrency if client == "batchgen" else int(concurrency),
        "watch": watch,
        "download_concurrency": downloads,
    }
    if client == "falclient":  # its job list, planned here: its process never parses YAML
        jobs = out.parent / f"{manifest.stem}.jobs.json"
        if not jobs.exists():
            specs = plan(load_manifest(manifest))
            jobs.write_text(json.dumps([[s.endpoint, s.input] for s in specs]))
        cfg["jobs"] = str(jobs)
    cmd = [sys.executable, str(Path(__file__).with_name("clients.py")), json.dumps(cfg)]
    raw = None
    if PROFILE is not None:
        PROFILE.mkdir(parents=True, exist_ok=True)
        raw = PROFILE / f"{client}-{out.name}.txt"
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        cmd = [
            spy,
            "record",
            "--subprocesses",
            "--nonblocking",
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(raw),
            "--",
            *cmd,
        ]
    launched = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{client} client crashed:\n{done.stderr[-3000:]}")
    # The client's last line of JSON (py-spy, when profiling, prints after it).
    line = [x for x in done.stdout.splitlines() if x.startswith("{")][-1]
    res: dict[str, Any] = json.loads(line)
    res["proc_wall"] = res["proc_end"] - launched
    res["profile"] = str(raw) if raw else None
    res["stats"] = emu.stats()
    tl = emu.timeline()
    res["timeline"] = tl["requests"]
    res["server_cpu"] = tl["cpu"] - cpu0
    return res


# -- analysis ---------------------------------------------------------------------------------


def utilisation(timeline: list[list[float | None]], limit: int) -> dict[str, float | None]:
    """Busy share of ``limit`` slots from the first instant all ``limit`` run (settled) to the
    last start (after it nothing is left to start: the tail is the end of the work, not the
    scheduler's pacing). ``ramp_s``: first submit to settled."""
    spans = [(s, e) for _, s, e in timeline if s is not None and e is not None]
    if not spans:
        return {"busy": None, "ramp_s": None, "settled_s": None, "whole": None}
    first_submit = min(t[0] for t in timeline if t[0] is not None)
    # Over the whole run, ramp and tail included: first submit to last finish.
    whole = sum(e - s for s, e in spans) / (limit * (max(e for _, e in spans) - first_submit))
    # At one instant a finish frees a slot before the next start takes it (-1 sorts first).
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    last_start = max(s for s, _ in spans)
    level, settled, area, prev = 0, None, 0.0, 0.0
    for t, d in events:
        if settled is not None:
            area += level * (min(t, last_start) - prev)
            if t >= last_start:
                break
        prev = t
        level += d
        if settled is None and level >= limit:
            settled = t
    if settled is None or last_start <= settled:
        return {"busy": None, "ramp_s": None, "settled_s": None, "whole": whole}
    span = last_start - settled
    return {
        "busy": area / (limit * span),
        "ramp_s": settled - first_submit,
        "settled_s": span,
        "whole": whole,
    }


def phases(res: dict[str, Any]) -> tuple[float, float, float]:
    """Seconds from the client process's launch to its first submit, first to last submit,
    and from the last submit to the process's exit (the last results, downloads and, for
    batchgen, the gallery)."""
    subs = [t[0] for t in res["timeline"]]
    first, last = min(subs), max(subs)
    launched = res["proc_end"] - res["proc_wall"]
    return first - launched, last - first, res["proc_end"] - last


def profile_table(raw: Path, *, jobs: int, cpu_ms: float) -> list[str]:
    sys.path.insert(0, str(Path(__file__).parent))
    from profile import table  # bench/profile.py, beside this script

    return table(raw, jobs=jobs, cpu_ms=cpu_ms)


def run_times(timeline: list[list[float | None]]) -> str:
    ts = sorted(e - s for _, s, e in timeline if s is not None and e is not None)
    if not ts:
        return "-"
    return f"{ts[0]:.2f}/{statistics.median(ts):.2f}/{ts[-1]:.2f} s"


def status_per_job(st: dict[str, Any], jobs: int) -> tuple[float, float, float]:
    polls, streams = st["status_polls"] / jobs, st["stream_connections"] / jobs
    return polls, streams, polls + streams


# -- scenarios --------------------------------------------------------------------------------


def scenario_throughput(
    scratch: Path, jobs: int, rounds: int, cache: bool, downloads: int
) -> list[str]:
    manifest, n = write_manifest(scratch / "m", "throughput", jobs, sizes=False)
    clients = [("batchgen", "batchgen"), ("fal-client", "falclient")]
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in clients}
    for r in range(rounds):
        # Alternate who goes first, so load from other processes hits both alike.
        for label, client in clients if r % 2 == 0 else clients[::-1]:
            with emulator(time_scale=0.0, limit=100_000, render_cache=n if cache else 0) as emu:
                out = scratch / f"tp-{client}-{r}"
                res = run_client(client, manifest, emu, out, concurrency="64", downloads=downloads)
                runs[label].append(res)
    lines = [
        f"1. throughput: {n:,} jobs, 64 at once, zero model time; best of {rounds} "
        f"round(s) per client, alternating order; batchgen --download-concurrency {downloads}",
        "   process = from just before the client process starts to its exit (imports, "
        "start-up and end of run included); CPU includes its reaped child processes",
        f"   {'client':<11} {'jobs/s':>7} {'in run':>7} {'CPU ms/job':>11} {'in children':>12} "
        f"{'srv CPU ms/job':>15} {'done':>6} {'failed':>6}  {'to 1st submit':>13} "
        f"{'submitting':>10} {'after last':>10}  every round (process jobs/s)",
    ]
    for label, rs in runs.items():
        best = max(rs, key=lambda x: x["done"] / x["proc_wall"])
        each = ", ".join(f"{x['done'] / x['proc_wall']:.0f}" for x in rs)
        head, body, tail = phases(best)
        lines.append(
            f"   {label:<11} {best['done'] / best['proc_wall']:>7.0f} "
            f"{best['done'] / best['wall']:>7.0f} "
            f"{best['proc_cpu'] / n * 1000:>11.2f} {best['proc_child_cpu'] / n * 1000:>12.2f} "
            f"{best['server_cpu'] / n * 1000:>15.2f} "
            f"{best['done']:>6} {best['failed']:>6}  {head:>12.2f}s {body:>9.2f}s "
            f"{tail:>9.2f}s  {each}"
        )
        if "timers" in best:
            (jw, jc), (gw, gc) = best["timers"]["journal"], best["timers"]["gallery"]
            rest = best["cpu"] - jc - gc
            drain = best["timers"]["journal_last"][0] - max(t[0] for t in best["timeline"])
            lines += [
                f"     per job: journal writes {jc / n * 1e3:.2f} ms CPU ({jw / n * 1e3:.2f} ms "
                f"wall: the event loop waits for the fsync), gallery {gc / n * 1e3:.2f} ms CPU, "
                f"the rest of the run {rest / n * 1e3:.2f} ms CPU (this process)",
                f"     after the last submit: {drain:.2f} s until the last download, then "
                f"{gw:.2f} s of gallery",
            ]
        if best.get("profile"):
            cpu_ms = best["proc_cpu"] / n * 1000
            lines += profile_table(Path(best["profile"]), jobs=n, cpu_ms=cpu_ms)
        lines += [f"     {x}" for x in best["log"] if x and best["failed"]]
    return lines


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def scenario_status(scratch: Path, jobs: int, mean_s: float, cache: bool) -> list[str]:
    manifest, n = write_manifest(scratch / "m", "status", jobs, sizes=True)
    scale = scale_for(mean_s)
    lines = [
        f"2. status requests: {n} jobs, 40 at once, limit {LIMIT}, model time {mean_s:g} s "
        f"± 50 % (time scale {scale:.3f}); counted by the emulator",
        f"   {'client':<24} {'GET/job':>8} {'streams/job':>12} {'total/job':>10} "
        f"{'req/s':>6} {'jobs/s':>7} {'busy':>5} {'CPU ms/job':>10} {'in run':>7}  "
        "run times min/med/max",
    ]
    profiled: list[tuple[str, dict[str, Any]]] = []
    for label, client, watch in [
        ("batchgen --watch stream", "batchgen", "stream"),
        ("batchgen --watch poll", "batchgen", "poll"),
        ("batchgen --watch webhook", "batchgen", "webhook"),
        ("fal-client handle.get()", "falclient", "stream"),  # watch: unused by fal-client
    ]:
        with emulator(time_scale=scale, limit=LIMIT, render_cache=n if cache else 0) as emu:
            out = scratch / f"st-{client}-{watch}"
            res = run_client(client, manifest, emu, out, concurrency="40", watch=watch)
        if res.get("profile"):
            profiled.append((label, res))
        polls, streams, total = status_per_job(res["stats"], n)
        busy = utilisation(res["timeline"], LIMIT)["busy"]
        lines.append(
            f"   {label:<24} {polls:>8.2f} {streams:>12.2f} {total:>10.2f} "
            f"{total * n / res['wall']:>6.0f} {res['done'] / res['wall']:>7.1f} "
            f"{_fmt(busy, '.0%'):>5} {res['proc_cpu'] * 1000 / n:>10.1f} "
            f"{res['cpu'] * 1000 / n:>7.1f}  {run_times(res['timeline'])}"
            + ("" if res["failed"] == 0 else f"  ({res['failed']} failed)")
        )
    lines.append(
        "   busy: as in 3 (settled = all 40 running; until the last start). CPU ms/job: "
        "the whole client process, start-up and reaped children included; in run: "
        "this process during the run only"
    )
    if PROFILE is not None:
        for label, res in profiled:
            lines.append(f"   {label}:")
            lines += profile_table(Path(res["profile"]), jobs=n, cpu_ms=res["proc_cpu"] * 1e3 / n)
    return lines


def scenario_util(scratch: Path, jobs: int, mean_s: float, cache: bool) -> list[str]:
    manifest, n = write_manifest(scratch / "m", "util", jobs, sizes=True)
    scale = scale_for(mean_s)
    lines = [
        f"3. slot utilisation: {n} jobs, limit {LIMIT}, model time {mean_s:g} s ± 50 %. busy ="
        f" IN_PROGRESS / {LIMIT}, integrated over the emulator's own start and finish times,",
        f"   from the first instant all {LIMIT} slots run ('settled') to the last start "
        "(after which nothing is left to start); ramp = first submit to settled; whole run ="
        " the same share from the first submit to the last finish, ramp and tail included",
        f"   {'client':<28} {'busy':>6} {'whole run':>9} {'ramp s':>7} {'settled s':>10}"
        f" {'jobs/s':>7} {'peak':>5}",
    ]
    for label, client, conc in [
        ("batchgen --concurrency auto", "batchgen", "auto"),
        ("fal-client, semaphore 40", "falclient", "40"),
    ]:
        with emulator(time_scale=scale, limit=LIMIT, render_cache=n if cache else 0) as emu:
            res = run_client(client, manifest, emu, scratch / f"ut-{client}", concurrency=conc)
        u = utilisation(res["timeline"], LIMIT)
        lines.append(
            f"   {label:<28} {_fmt(u['busy'], '.1%'):>6} {_fmt(u['whole'], '.1%'):>9}"
            f" {_fmt(u['ramp_s'], '.1f'):>7} "
            f"{_fmt(u['settled_s'], '.1f'):>10} {res['done'] / res['wall']:>7.1f} "
            f"{res['stats']['peak_in_progress']:>5}"
            + ("" if res["failed"] == 0 else f"  ({res['failed']} failed)")
        )
    return lines


def wait_child(pid: int, timeout: float) -> tuple[int, Any] | None:
    """(exit code, rusage) once ``pid`` exits within ``timeout`` s, else None. os.wait4, not
    Popen.poll: the child's own rusage (peak RSS) comes only with reaping it."""
    end = time.monotonic() + timeout
    while True:
        got, status, usage = os.wait4(pid, os.WNOHANG)
        if got == pid:
            return os.waitstatus_to_exitcode(status), usage
        if time.monotonic() >= end:
            return None
        time.sleep(0.01)


def scenario_resume(scratch: Path, jobs: int, run_s: float) -> list[str]:
    manifest, n = write_manifest(scratch / "m", "resume", jobs, sizes=False)
    out = scratch / "resume-out"
    base = [sys.executable, "-m", "batchgen", "run", str(manifest), "--out", str(out), "--quiet"]
    with emulator(time_scale=0.0, limit=LIMIT) as emu:
        # The first run plans every job into the journal, then stops at the budget of $0
        # before its first submit: a journal of n pending jobs, as a crash early on leaves it.
        t = time.perf_counter()
        built = subprocess.run(
            [*base, "--endpoint", emu.url, "--max-cost", "0"],
            capture_output=True,
            text=True,
            check=False,
        )
        build_s = time.perf_counter() - t
        if built.returncode != 3:
            raise SystemExit(f"building the journal failed ({built.returncode}): {built.stderr}")
        db_mb = sum(f.stat().st_size for f in out.glob("journal.sqlite*")) / 1e6
        with (scratch / "resume.stderr").open("w") as log:
            t0 = time.monotonic()  # CLOCK_MONOTONIC is system-wide: the emulator's clock too
            proc = subprocess.Popen(
                [*base, "--endpoint", emu.url], stderr=log, stdout=subprocess.DEVNULL
            )
            first: float | None = None
            ended = None
            while first is None and ended is None and time.monotonic() - t0 < 600:
                reqs = emu.timeline(first=True)["requests"]
                first = reqs[0][0] if reqs else None
                ended = wait_child(proc.pid, 0.01) if first is None else None
            # Keep it running a while: peak RSS covers the run, not only its start.
            ended = ended or wait_child(proc.pid, run_s)
            submitted = emu.stats()["submits_accepted"]
            for _ in range(2):  # first Ctrl-C: finish what is paid for, exit 130; second: now
                if ended is None:
                    os.kill(proc.pid, signal.SIGINT)
                    ended = wait_child(proc.pid, 60)
            if ended is None:
                proc.kill()
                ended = wait_child(proc.pid, 60)
            assert ended is not None
            proc.returncode = ended[0]
    to_first = None if first is None else first - t0
    return [
        f"4. resume: a journal of {n:,} pending jobs ({db_mb:,.0f} MB; planned by "
        f"`batchgen run --max-cost 0` in {build_s:.1f} s), then a resuming `batchgen run`",
        "   process start to the first submit accepted by the emulator: "
        + ("never" if to_first is None else f"{to_first:.2f} s"),
        f"   peak RSS of that process (start, {run_s:g} s of running, {submitted:,} submits, "
        f"Ctrl-C, exit {ended[0]}): {ended[1].ru_maxrss / 1024:.0f} MB",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=2000, help="throughput jobs (default 2000)")
    ap.add_argument("--rounds", type=int, default=2, help="throughput runs per client")
    ap.add_argument(
        "--download-concurrency",
        type=int,
        default=DOWNLOAD_CONCURRENCY,
        help=f"batchgen's (its default: {DOWNLOAD_CONCURRENCY})",
    )
    ap.add_argument("--status-jobs", type=int, default=200)
    ap.add_argument("--util-jobs", type=int, default=800)
    ap.add_argument("--model-time", type=float, default=2.0, help="mean seconds (status, util)")
    ap.add_argument("--resume-jobs", type=int, default=1_000_000)
    ap.add_argument("--resume-run", type=float, default=3.0, help="seconds run before Ctrl-C")
    ap.add_argument("--only", default="throughput,status,util,resume")
    ap.add_argument(
        "--stock-render-cache",
        action="store_true",
        help="keep the emulator's 128-image render cache (a client that downloads later "
        "than 128 results after each makes it render every image twice)",
    )
    ap.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a tmp dir)")
    ap.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="run each client under py-spy "
        "(pip install py-spy), keep its stacks here and print where the CPU went",
    )
    ap.add_argument(
        "--tls",
        action="store_true",
        help="serve the emulator over HTTPS, as fal "
        "is served (a self-signed certificate every client trusts through "
        "SSL_CERT_FILE)",
    )
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        serve_main(json.loads(a.serve))
        return
    try:
        versions = f"fal-client {metadata.version('fal-client')}"
        versions += f", httpx {metadata.version('httpx')}, sniffio {metadata.version('sniffio')}"
    except metadata.PackageNotFoundError as exc:
        raise SystemExit(f"install the test extra (fal-client and sniffio): {exc}") from None
    print(
        f"bench/run.py: emulator and each client in separate processes on loopback; "
        f"{os.cpu_count()} cores; {versions}",
        flush=True,
    )
    global PROFILE
    PROFILE = a.profile
    # Like an installed package, batchgen gets its bytecode cache: pip compiled fal-client's
    # and httpx's at install, but an editable checkout under PYTHONDONTWRITEBYTECODE=1 (as on
    # the benchmark machine) would compile its ~100 modules in every process (0.16 s CPU).
    compileall.compile_dir(Path(__file__).resolve().parents[1] / "batchgen", quiet=1)
    print("bytecode: batchgen's compiled ahead, as pip does for an installed package", flush=True)
    only = set(a.only.split(","))
    cache = not a.stock_render_cache
    print(
        "emulator render cache: "
        + (
            "holds every image of the run (fal's CDN stores files)"
            if cache
            else "stock, 128 images"
        ),
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-run-", dir=a.dir) as d:
        scratch = Path(d)
        if a.tls:
            global TLS
            TLS = make_certificate(scratch)
            # Trusted by every client process (httpx, so fal-client and batchgen, reads it)
            # and by this one's own requests to the emulator.
            os.environ["SSL_CERT_FILE"] = TLS[0]
            print("emulator over HTTPS (a self-signed ECDSA certificate)", flush=True)
        if "throughput" in only:
            print(
                "\n".join(
                    scenario_throughput(scratch, a.jobs, a.rounds, cache, a.download_concurrency)
                ),
                flush=True,
            )
        if "status" in only:
            print(
                "\n".join(scenario_status(scratch, a.status_jobs, a.model_time, cache)), flush=True
            )
        if "util" in only:
            print("\n".join(scenario_util(scratch, a.util_jobs, a.model_time, cache)), flush=True)
        if "resume" in only:
            print("\n".join(scenario_resume(scratch, a.resume_jobs, a.resume_run)), flush=True)


if __name__ == "__main__":
    main()
