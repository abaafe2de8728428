"""Idle CPU: CPU time used by the whole reloader process tree while nothing changes."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench_apps import N_MODULES, many_modules_files
from bench_common import (
    BenchError,
    Reloader,
    Row,
    body_for,
    log,
    process_tree,
    start_servers,
    tree_cpu_seconds,
    wait_serving,
)

SETTLE = 2.0  # seconds between the first good response and the first sample
WINDOW = 5.0  # seconds per sampling window (shorter in quick mode)


@dataclass
class IdleRaw:
    startup_s: float | None = None
    window_s: list[float] = field(default_factory=list)
    window_cpu_s: list[float] = field(default_factory=list)
    processes_at_start: int = 0
    processes_at_end: int = 0
    error: str | None = None

    @property
    def percent(self) -> float | None:
        wall = sum(self.window_s)
        return 100 * sum(self.window_cpu_s) / wall if wall else None


def run_idle(
    reloaders: Sequence[Reloader], tmp: Path, duration: float
) -> tuple[list[Row], dict[str, object]]:
    n_windows = max(2, round(duration / WINDOW))
    window = duration / n_windows
    log(f"idle: {N_MODULES} modules, sampling {n_windows} x {window:.1f} s after startup + {SETTLE:.0f} s")
    raw = {r.key: IdleRaw() for r in reloaders}
    with contextlib.ExitStack() as stack:
        servers = start_servers(stack, reloaders, tmp, "idle", many_modules_files(0))
        for key, server in list(servers.items()):
            try:
                raw[key].startup_s = wait_serving(server, body_for(0), timeout=120)
            except BenchError as exc:
                raw[key].error = str(exc)
                log(f"  {exc}")
                del servers[key]
        time.sleep(SETTLE)
        # All trees are sampled over the same windows, so background noise hits them alike.
        for key, server in servers.items():
            raw[key].processes_at_start = len(process_tree(server.proc.pid))
        last = {key: (time.perf_counter(), tree_cpu_seconds(s.proc.pid)) for key, s in servers.items()}
        for _ in range(n_windows):
            time.sleep(window)
            for key, server in servers.items():
                now, cpu = time.perf_counter(), tree_cpu_seconds(server.proc.pid)
                raw[key].window_s.append(now - last[key][0])
                raw[key].window_cpu_s.append(cpu - last[key][1])
                last[key] = (now, cpu)
        for key, server in servers.items():
            raw[key].processes_at_end = len(process_tree(server.proc.pid))
            if server.proc.poll() is not None:
                raw[key].error = str(server.failure("exited while idle"))

    values: dict[str, float | None] = {}
    notes: dict[str, str] = {}
    for key, data in raw.items():
        values[key] = data.percent
        if data.error:
            notes[key] = "failed, see stderr"
        elif data.window_s:
            worst = max(100 * c / w for c, w in zip(data.window_cpu_s, data.window_s, strict=True))
            notes[key] = f"worst {window:g} s window {worst:.1f}"
    rows = [Row(f"Idle CPU, {N_MODULES:,} modules (% of one core)", values, fmt="{:.2f}", notes=notes)]
    return rows, {key: {**asdict(data), "percent": data.percent} for key, data in raw.items()}
