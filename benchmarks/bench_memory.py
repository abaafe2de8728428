"""Peak memory of the supervisor and of one worker after startup and one reload."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench_apps import fastapi_app
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
    poll_for_body,
    proc_cmdline,
    proc_pss_kib,
    proc_status_kib,
    process_tree,
    start_servers,
    wait_serving,
)

# multiprocessing helper processes are never the worker
HELPER_MARKERS = ("resource_tracker", "forkserver", "semaphore_tracker")


@dataclass
class MemoryRaw:
    supervisor_pid: int | None = None
    supervisor_hwm_kib: int | None = None
    worker_pid: int | None = None
    worker_cmdline: str = ""
    worker_hwm_kib: int | None = None
    tree_pids: int = 0
    tree_pss_kib: int | None = None
    error: str | None = None


def _pick_worker(root: int) -> int | None:
    """The descendant that serves the app: the largest one by RSS that is not a multiprocessing helper."""
    best: tuple[int, int] | None = None
    for pid in process_tree(root)[1:]:
        if any(marker in proc_cmdline(pid) for marker in HELPER_MARKERS):
            continue
        rss = proc_status_kib(pid, "VmRSS") or 0
        if best is None or rss > best[0]:
            best = (rss, pid)
    return None if best is None else best[1]


def _snapshot(server: Server) -> MemoryRaw:
    root = server.proc.pid
    raw = MemoryRaw(supervisor_pid=root, supervisor_hwm_kib=proc_status_kib(root, "VmHWM"))
    worker = _pick_worker(root)
    if worker is not None:
        raw.worker_pid = worker
        raw.worker_cmdline = proc_cmdline(worker)[:300]
        raw.worker_hwm_kib = proc_status_kib(worker, "VmHWM")
    tree = process_tree(root)
    raw.tree_pids = len(tree)
    pss = [proc_pss_kib(pid) for pid in tree]
    raw.tree_pss_kib = sum(p for p in pss if p is not None) if any(p is not None for p in pss) else None
    return raw


def _mib(kib: int | None) -> float | None:
    return None if kib is None else kib / 1024


def run_memory(reloaders: Sequence[Reloader], tmp: Path) -> tuple[list[Row], dict[str, object]]:
    log("memory: FastAPI app, after startup and one reload")
    raw = {r.key: MemoryRaw() for r in reloaders}
    with contextlib.ExitStack() as stack:
        servers = start_servers(stack, reloaders, tmp, "memory", {"main.py": fastapi_app(0)})
        for key, server in servers.items():
            try:
                wait_serving(server, body_for(0), timeout=60)
                time.sleep(STARTUP_SETTLE)
                with http_client(server) as client:
                    editor_write(server.app_dir / "main.py", fastapi_app(1))
                    if poll_for_body(client, body_for(1), 10.0) is None:
                        raise server.failure("reload not visible after 10 s")
                time.sleep(1.0)  # let the old worker finish exiting
                raw[key] = _snapshot(server)
            except BenchError as exc:
                raw[key].error = str(exc)
                log(f"  {exc}")

    def row(figure: str, attr: str, with_pids: bool = False) -> Row:
        values = {key: _mib(getattr(data, attr)) for key, data in raw.items()}
        notes = {key: "failed, see stderr" for key, data in raw.items() if data.error}
        if with_pids:
            notes.update({key: f"{data.tree_pids} processes" for key, data in raw.items() if not data.error})
        return Row(figure, values, fmt="{:.1f}", notes=notes)

    rows = [
        row("Peak memory, supervisor VmHWM (MiB)", "supervisor_hwm_kib"),
        row("Peak memory, worker VmHWM (MiB)", "worker_hwm_kib"),
        row("Memory, whole process tree PSS after the reload (MiB)", "tree_pss_kib", with_pids=True),
    ]
    return rows, {key: asdict(data) for key, data in raw.items()}
