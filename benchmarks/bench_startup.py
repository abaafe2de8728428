"""Start-up and the reloads right after it: cold start, the first edit, a second save soon after.

* cold start: from spawning the server to the first 200 with the expected body, for the plain
  app and the FastAPI app; the project was served once before (as on a developer's machine, so
  asgireload's warm cache exists), each start in a fresh process.
* first edit: a FastAPI app with a router module; the project was served once before; the edit
  is saved 0.3 s after the first response, and timed until it is served. Its ratio to the same
  server's settled reload (saved 2 s later) is the figure.
* second save: on a settled server, file A is saved, then 50 ms later file B; the time from B's
  save until B's new body is served.
"""

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
    body_for,
    editor_write,
    http_client,
    log,
    make_app_dir,
    median,
    poll_for_body,
    running_server,
    wait_serving,
)

FIRST_EDIT_DELAY = 0.3  # seconds after the first response
SETTLED_DELAY = 2.0  # seconds before the "settled" reload of the same server
SECOND_SAVE_GAP = 0.05  # seconds between the two saves
RELOAD_TIMEOUT = 10.0

ROUTER = """
from fastapi import APIRouter
from pydantic import BaseModel

router = APIRouter(prefix="/users")


class User(BaseModel):
    id: int
    name: str


@router.get("/{{user_id}}", response_model=User)
async def get_user(user_id: int) -> User:
    return User(id=user_id, name="u{counter}")
"""


def router_app(counter: int) -> str:
    """The FastAPI app, with a router from a module of its own (routes.py)."""
    return fastapi_app(counter).replace(
        'app = FastAPI(title="bench")',
        'app = FastAPI(title="bench")\nfrom routes import router\napp.include_router(router)',
    )


def two_file_app(counter: int) -> str:
    """The plain app, whose body comes from a second module (b.py): a save of either reloads it."""
    line = f'BODY = b"counter={counter}"'
    return plain_app(counter).replace(line, f"from b import SUFFIX\n{line} + SUFFIX", 1)


@dataclass
class StartupRaw:
    cold_s: dict[str, list[float]] = field(default_factory=dict)
    first_edit_s: list[float] = field(default_factory=list)
    settled_s: list[float] = field(default_factory=list)
    second_save_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _reload(server_client: httpx.Client, path: Path, text: str, body: str) -> float | None:
    t0 = editor_write(path, text)
    seen = poll_for_body(server_client, body, RELOAD_TIMEOUT)
    return None if seen is None else seen - t0


def _serve_once(reloader: Reloader, app_dir: Path, tmp: Path, body: str) -> None:
    """Serve the project once and let it settle, so asgireload's warm cache exists (as it would)."""
    with running_server(reloader, app_dir, tmp) as server:
        wait_serving(server, body, timeout=60)
        time.sleep(STARTUP_SETTLE)


def _cold_starts(reloaders: Sequence[Reloader], tmp: Path, runs: int, raw: dict[str, StartupRaw]) -> None:
    apps: tuple[tuple[str, Callable[[int], str]], ...] = (("plain", plain_app), ("fastapi", fastapi_app))
    for app_key, source in apps:
        dirs = {
            r.key: make_app_dir(tmp, f"cold-{app_key}-{r.key}", {"main.py": source(0)}) for r in reloaders
        }
        for reloader in reloaders:
            _serve_once(reloader, dirs[reloader.key], tmp, body_for(0))
        for _ in range(runs):
            for reloader in reloaders:  # interleaved
                with running_server(reloader, dirs[reloader.key], tmp) as server:
                    raw[reloader.key].cold_s.setdefault(app_key, []).append(
                        wait_serving(server, body_for(0), timeout=60)
                    )


def _first_edits(reloaders: Sequence[Reloader], tmp: Path, runs: int, raw: dict[str, StartupRaw]) -> None:
    files = {"main.py": router_app(0), "routes.py": ROUTER.format(counter=0)}
    dirs = {r.key: make_app_dir(tmp, f"first-{r.key}", files) for r in reloaders}
    for reloader in reloaders:
        _serve_once(reloader, dirs[reloader.key], tmp, body_for(0))
    for run in range(runs):
        for reloader in reloaders:
            app_dir = dirs[reloader.key]
            editor_write(app_dir / "main.py", router_app(0))
            with running_server(reloader, app_dir, tmp) as server, http_client(server) as client:
                wait_serving(server, body_for(0), timeout=60)
                time.sleep(FIRST_EDIT_DELAY)
                counter = 1000 * (run + 1)
                first = _reload(client, app_dir / "main.py", router_app(counter), body_for(counter))
                time.sleep(SETTLED_DELAY)
                settled = _reload(client, app_dir / "main.py", router_app(counter + 1), body_for(counter + 1))
                if first is None or settled is None:
                    raw[reloader.key].errors.append(f"first edit run {run + 1}: never seen")
                    continue
                raw[reloader.key].first_edit_s.append(first)
                raw[reloader.key].settled_s.append(settled)


def _second_saves(reloaders: Sequence[Reloader], tmp: Path, runs: int, raw: dict[str, StartupRaw]) -> None:
    files = {"main.py": two_file_app(0), "b.py": 'SUFFIX = b""\n'}
    with contextlib.ExitStack() as stack:
        servers = {}
        for reloader in reloaders:
            app_dir = make_app_dir(tmp, f"second-{reloader.key}", files)
            servers[reloader.key] = stack.enter_context(running_server(reloader, app_dir, tmp))
        for server in servers.values():
            wait_serving(server, body_for(0), timeout=60)
        time.sleep(STARTUP_SETTLE)
        for run in range(runs):
            for key, server in servers.items():
                with http_client(server) as client:
                    with contextlib.suppress(httpx.HTTPError):
                        client.get("/")
                    counter = run + 1
                    editor_write(server.app_dir / "main.py", two_file_app(counter))  # A
                    time.sleep(SECOND_SAVE_GAP)
                    suffix = f"-{counter}"
                    t0 = editor_write(server.app_dir / "b.py", f"SUFFIX = b{suffix!r}\n")  # B
                    seen = poll_for_body(client, body_for(counter) + suffix, RELOAD_TIMEOUT)
                    if seen is None:
                        raw[key].errors.append(f"second save run {run + 1}: never seen")
                    else:
                        raw[key].second_save_s.append(seen - t0)
                    time.sleep(0.5)


def run_startup(reloaders: Sequence[Reloader], tmp: Path, runs: int) -> tuple[list[Row], dict[str, object]]:
    raw = {r.key: StartupRaw() for r in reloaders}
    log(f"startup: cold starts, {runs} per app and reloader")
    _cold_starts(reloaders, tmp, runs, raw)
    log(f"startup: first edit 0.3 s after the first response, {runs} runs per reloader")
    _first_edits(reloaders, tmp, runs, raw)
    log(f"startup: second save 50 ms after the first, {runs * 2} runs per reloader")
    _second_saves(reloaders, tmp, runs * 2, raw)
    for key, data in raw.items():
        for error in data.errors:
            log(f"  {key}: {error}")

    def ms(values: list[float]) -> float | None:
        return median(values) * 1000 if values else None

    rows = [
        Row(
            "Cold start, plain ASGI app: p50 (ms)", {k: ms(d.cold_s.get("plain", [])) for k, d in raw.items()}
        ),
        Row(
            "Cold start, FastAPI app: p50 (ms)", {k: ms(d.cold_s.get("fastapi", [])) for k, d in raw.items()}
        ),
        Row(
            "First edit 0.3 s after start-up, FastAPI with a router: p50 (ms)",
            {k: ms(d.first_edit_s) for k, d in raw.items()},
        ),
        Row("Same server, settled reload: p50 (ms)", {k: ms(d.settled_s) for k, d in raw.items()}),
        Row(
            "First edit / settled reload (same server), p50 of the ratios",
            {
                k: median([f / s for f, s in zip(d.first_edit_s, d.settled_s, strict=True)])
                if d.settled_s
                else None
                for k, d in raw.items()
            },
            fmt="{:.2f}",
        ),
        Row(
            "Second save 50 ms after the first, until served: p50 (ms)",
            {k: ms(d.second_save_s) for k, d in raw.items()},
        ),
    ]
    if any(d.errors for d in raw.values()):
        for row in rows:
            row.notes.update({k: f"{len(d.errors)} never seen" for k, d in raw.items() if d.errors})
    if not any(d.cold_s for d in raw.values()):
        raise BenchError("no server started")
    return rows, {k: asdict(d) for k, d in raw.items()}
