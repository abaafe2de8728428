"""Reloads under load: failed requests, cut /slow requests and the longest outage around each reload."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from bench_apps import plain_app
from bench_common import (
    STARTUP_SETTLE,
    BenchError,
    Reloader,
    Row,
    Server,
    async_http_client,
    body_for,
    editor_write,
    log,
    median,
    percentile,
    start_servers,
    wait_serving,
)

N_FAST_CLIENTS = 16
N_SLOW_CLIENTS = 2
REQUEST_TIMEOUT = 5.0  # a request slower than this counts as a "timeout" failure
RELOAD_TIMEOUT = 10.0
BUDGET_PER_RELOADER = 60.0  # seconds, including startup
WARM = 0.4  # load runs this long before each save
PAUSE = 0.4  # and this long after the new body was first seen
# Each / client starts at most one request per PERIOD (<= 800 req/s in all), so the load generator
# never needs a whole core and the reloader is not starved of CPU on a 2-core machine.
PERIOD = 0.02
MAX_REQUESTS_PER_CLIENT = 100_000
FAILURE_KINDS = ("refused", "connect", "disconnect", "timeout", "non-200", "other")


@dataclass
class ReloadSample:
    latency_s: float | None
    max_gap_s: float
    baseline_gap_s: float  # longest gap in the WARM / 2 before the save: the noise floor
    requests: int
    failures: dict[str, int]
    slow_requests: int
    slow_cut: int


@dataclass
class LoadRaw:
    reloads: list[ReloadSample] = field(default_factory=list)
    skipped_reloads: int = 0
    error: str | None = None


@dataclass
class _Stats:
    new_body: str
    ok_times: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    slow_requests: int = 0
    slow_cut: int = 0
    first_new: float | None = None


def _classify(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "refused" if "refused" in str(exc).lower() else "connect"
    if isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError | httpx.CloseError):
        return "disconnect"
    return "other"


async def _client(server: Server, path: str, stats: _Stats, stop: asyncio.Event, deadline: float) -> None:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with async_http_client(server, REQUEST_TIMEOUT, limits) as client:
        for _ in range(MAX_REQUESTS_PER_CLIENT):
            if stop.is_set() or time.perf_counter() > deadline:
                break
            started = time.perf_counter()
            kind: str | None = None
            text = ""
            try:
                resp = await client.get(path)
                text = resp.text
                if resp.status_code != 200:
                    kind = "non-200"
            except httpx.HTTPError as exc:
                kind = _classify(exc)
            now = time.perf_counter()
            stats.requests += 1
            if path == "/slow":
                stats.slow_requests += 1
            if kind is None:
                stats.ok_times.append(now)
                if stats.first_new is None and text == stats.new_body:
                    stats.first_new = now
                if path == "/":
                    await asyncio.sleep(max(0.0, started + PERIOD - now))
            else:
                stats.failures[kind] += 1
                if path == "/slow":
                    stats.slow_cut += 1
                await asyncio.sleep(0.01)  # do not spin on a port that refuses


def max_gap(times: Sequence[float], start: float, end: float) -> float:
    """Longest stretch in [start, end] without a successful response (window edges count as bounds)."""
    points = [start, *sorted(t for t in times if start <= t <= end), end]
    return max(b - a for a, b in itertools.pairwise(points))


async def _one_reload(server: Server, counter: int, remaining: float) -> ReloadSample:
    stats = _Stats(new_body=body_for(counter))
    stop = asyncio.Event()
    hard_deadline = time.perf_counter() + remaining
    paths = ["/"] * N_FAST_CLIENTS + ["/slow"] * N_SLOW_CLIENTS
    tasks = [asyncio.create_task(_client(server, p, stats, stop, hard_deadline)) for p in paths]
    try:
        await asyncio.sleep(WARM)
        t0 = editor_write(server.app_dir / "main.py", plain_app(counter))
        wait = max(0.5, min(RELOAD_TIMEOUT, hard_deadline - time.perf_counter() - PAUSE - 1))
        for _ in range(int(wait / 0.005) + 1):
            if stats.first_new is not None or time.perf_counter() - t0 > wait:
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(PAUSE)
        t_end = time.perf_counter()
    finally:
        stop.set()
        _, pending = await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT + 1)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    latency = None if stats.first_new is None else stats.first_new - t0
    return ReloadSample(
        latency_s=latency,
        max_gap_s=max_gap(stats.ok_times, t0 - WARM / 2, t_end),
        baseline_gap_s=max_gap(stats.ok_times, t0 - WARM / 2, t0),
        requests=stats.requests,
        failures={k: stats.failures.get(k, 0) for k in FAILURE_KINDS},
        slow_requests=stats.slow_requests,
        slow_cut=stats.slow_cut,
    )


async def _run_reloads(
    servers: dict[str, Server], raw: dict[str, LoadRaw], spent: dict[str, float], n_reloads: int
) -> None:
    counters = dict.fromkeys(servers, 0)
    for i in range(n_reloads):
        for key, server in servers.items():  # interleaved: A, B, A, B, ...
            remaining = BUDGET_PER_RELOADER - spent[key]
            if remaining < WARM + PAUSE + 3:
                raw[key].skipped_reloads += 1
                continue
            counters[key] += 1
            start = time.perf_counter()
            sample = await _one_reload(server, counters[key], remaining)
            spent[key] += time.perf_counter() - start
            raw[key].reloads.append(sample)
            failed = sum(sample.failures.values())
            lat = "never" if sample.latency_s is None else f"{sample.latency_s * 1000:.0f} ms"
            log(
                f"  {server.reloader.label}: reload {i + 1}: new body after {lat}, "
                f"longest gap {sample.max_gap_s * 1000:.0f} ms "
                f"(before the save {sample.baseline_gap_s * 1000:.0f} ms), "
                f"{failed} failed of {sample.requests}"
            )


def run_load(reloaders: Sequence[Reloader], tmp: Path, n_reloads: int) -> tuple[list[Row], dict[str, object]]:
    log(
        f"load: {N_FAST_CLIENTS} clients on /, {N_SLOW_CLIENTS} on /slow, "
        f"{n_reloads} reloads per reloader (budget {BUDGET_PER_RELOADER:.0f} s each)"
    )
    raw = {r.key: LoadRaw() for r in reloaders}
    spent = dict.fromkeys(raw, 0.0)
    with contextlib.ExitStack() as stack:
        servers = start_servers(stack, reloaders, tmp, "load", {"main.py": plain_app(0)})
        for key, server in list(servers.items()):
            try:
                spent[key] += wait_serving(server, body_for(0), timeout=30)
            except BenchError as exc:
                raw[key].error = str(exc)
                log(f"  {exc}")
                del servers[key]
        time.sleep(STARTUP_SETTLE)
        asyncio.run(_run_reloads(servers, raw, spent, n_reloads))
        for key, server in servers.items():
            if server.proc.poll() is not None:
                raw[key].error = str(server.failure("exited during the load test"))

    rows = _rows(raw)
    return rows, {key: asdict(data) for key, data in raw.items()}


def _rows(raw: dict[str, LoadRaw]) -> list[Row]:
    failed: dict[str, float | None] = {}
    failed_notes: dict[str, str] = {}
    cut: dict[str, float | None] = {}
    cut_notes: dict[str, str] = {}
    gap50: dict[str, float | None] = {}
    gap90: dict[str, float | None] = {}
    lat50: dict[str, float | None] = {}
    steady: dict[str, float | None] = {}
    lat_notes: dict[str, str] = {}
    for key, data in raw.items():
        samples = data.reloads
        if not samples:
            failed[key] = cut[key] = gap50[key] = gap90[key] = lat50[key] = steady[key] = None
            if data.error:
                failed_notes[key] = "failed, see stderr"
            continue
        totals: Counter[str] = Counter()
        for s in samples:
            totals.update(s.failures)
        failed[key] = float(sum(totals.values()))
        requests = sum(s.requests for s in samples)
        breakdown = ", ".join(f"{k} {totals[k]}" for k in FAILURE_KINDS if totals[k])
        failed_notes[key] = f"of {requests}" + (f"; {breakdown}" if breakdown else "")
        cut[key] = float(sum(s.slow_cut for s in samples))
        cut_notes[key] = f"of {sum(s.slow_requests for s in samples)}"
        gaps = [s.max_gap_s * 1000 for s in samples]
        gap50[key] = median(gaps)
        gap90[key] = percentile(gaps, 90)
        steady[key] = max(s.baseline_gap_s * 1000 for s in samples)
        lats = [s.latency_s * 1000 for s in samples if s.latency_s is not None]
        lat50[key] = median(lats) if lats else None
        missing = len(samples) - len(lats)
        notes = [f"{missing} never seen"] if missing else []
        if data.skipped_reloads:
            notes.append(f"{data.skipped_reloads} skipped, time budget")
        if data.error:
            notes.append("failed, see stderr")
        if notes:
            lat_notes[key] = "; ".join(notes)
    n = max((len(d.reloads) for d in raw.values()), default=0)
    return [
        Row(f"Under load: failed requests, total over {n} reloads", failed, notes=failed_notes),
        Row("Under load: /slow requests cut, total", cut, notes=cut_notes),
        Row("Under load: longest gap without a successful response, p50 (ms)", gap50),
        Row("Under load: longest gap without a successful response, p90 (ms)", gap90),
        Row("Under load: longest gap in steady state (before each save), max (ms)", steady),
        Row("Under load: reload latency, p50 (ms)", lat50, notes=lat_notes),
    ]
