"""Reload latency: time from an editor-style save of main.py to the first response with the new body."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from bench_apps import fastapi_app, plain_app
from bench_common import (
    STARTUP_SETTLE,
    BenchError,
    Reloader,
    Row,
    Server,
    body_for,
    editor_write,
    http_client,
    log,
    median,
    percentile,
    poll_for_body,
    start_servers,
    wait_serving,
)

APPS: tuple[tuple[str, str, Callable[[int], str]], ...] = (
    ("plain", "plain ASGI app", plain_app),
    ("fastapi", "FastAPI app, 50 routes", fastapi_app),
)
RELOAD_TIMEOUT = 10.0
MAX_CONSECUTIVE_FAILURES = 3


@dataclass
class LatencyRaw:
    latencies_s: list[float] = field(default_factory=list)
    failed_reloads: int = 0
    error: str | None = None


def _one_reload(server: Server, source: Callable[[int], str], counter: int) -> float | None:
    """Save version ``counter`` and return the latency in seconds, or None if it never showed up."""
    with http_client(server) as client:
        # Open the keep-alive connection first, like a browser tab that is already showing the page.
        with contextlib.suppress(httpx.HTTPError):
            client.get("/")
        t0 = editor_write(server.app_dir / "main.py", source(counter))
        t_new = poll_for_body(client, body_for(counter), RELOAD_TIMEOUT)
    return None if t_new is None else t_new - t0


def _measure_app(
    reloaders: Sequence[Reloader],
    tmp: Path,
    app_key: str,
    source: Callable[[int], str],
    n_reloads: int,
    pause: float,
) -> dict[str, LatencyRaw]:
    raw = {r.key: LatencyRaw() for r in reloaders}
    with contextlib.ExitStack() as stack:
        servers = start_servers(stack, reloaders, tmp, f"latency-{app_key}", {"main.py": source(0)})
        for key, server in list(servers.items()):
            try:
                wait_serving(server, body_for(0), timeout=60)
            except BenchError as exc:
                raw[key].error = str(exc)
                log(f"  {exc}")
                del servers[key]
        time.sleep(STARTUP_SETTLE)
        counters = dict.fromkeys(servers, 0)
        consecutive = dict.fromkeys(servers, 0)
        for i in range(n_reloads):
            for key, server in list(servers.items()):  # interleaved: A, B, A, B, ...
                counters[key] += 1
                latency = _one_reload(server, source, counters[key])
                if latency is None:
                    raw[key].failed_reloads += 1
                    consecutive[key] += 1
                    log(f"  {server.reloader.label}: reload {i + 1} not visible after {RELOAD_TIMEOUT:.0f} s")
                    if consecutive[key] >= MAX_CONSECUTIVE_FAILURES:
                        raw[key].error = str(server.failure("stopped reloading"))
                        log(f"  {raw[key].error}")
                        del servers[key]
                else:
                    consecutive[key] = 0
                    raw[key].latencies_s.append(latency)
                time.sleep(pause)
    return raw


def run_latency(
    reloaders: Sequence[Reloader], tmp: Path, n_reloads: int, pause: float = 0.3
) -> tuple[list[Row], dict[str, object]]:
    rows: list[Row] = []
    raw_all: dict[str, object] = {}
    for app_key, app_label, source in APPS:
        log(f"latency: {app_label}, {n_reloads} reloads per reloader")
        raw = _measure_app(reloaders, tmp, app_key, source, n_reloads, pause)
        raw_all[app_key] = {key: asdict(data) for key, data in raw.items()}
        p50: dict[str, float | None] = {}
        p90: dict[str, float | None] = {}
        notes: dict[str, str] = {}
        for key, data in raw.items():
            lat = data.latencies_s
            p50[key] = median(lat) * 1000 if lat else None
            p90[key] = percentile(lat, 90) * 1000 if lat else None
            problems = [f"{data.failed_reloads} never seen"] if data.failed_reloads else []
            if data.error:
                problems.append("failed, see stderr")
            if problems:
                notes[key] = "; ".join(problems)
        rows.append(Row(f"Reload latency, {app_label}: p50 (ms)", p50, notes=notes))
        rows.append(Row(f"Reload latency, {app_label}: p90 (ms)", p90))
    return rows, raw_all
