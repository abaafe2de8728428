"""--reload-include files: how fast a template edit shows, and what watching a big tree costs idle.

    python benchmarks/bench_include.py [--edits 15] [--idle-seconds 20] [--files 100000]

Runs asgireload and `uvicorn --reload`, both with `--reload-include '*.html'`, side by side:

(a) latency: the app reads templates/page.html when it is imported and answers
    `module=M template=T`. Each round saves the template, then main.py (temp file + rename),
    and times each save to the first response that shows it. Medians over `--edits` rounds.
(b) idle CPU: a project with `--files` unrelated files (data/d000 ... d099) beside the app
    and its template, one include glob; CPU of each whole process tree over `--idle-seconds`.

uvicorn honours --reload-include only with watchfiles installed; without it (StatReload) a
template edit is never seen, which the table shows as "never seen".
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from bench_common import (
    ASGIRELOAD,
    STARTUP_SETTLE,
    UVICORN,
    BenchError,
    Reloader,
    Row,
    Server,
    editor_write,
    http_client,
    log,
    make_app_dir,
    median,
    poll_for_body,
    probe_asgireload,
    running_server,
    tree_cpu_seconds,
    uvicorn_reloader_kind,
    wait_serving,
)
from run import markdown_table

INCLUDE_GLOB = "*.html"
EDIT_TIMEOUT = 10.0  # a save not visible by then is "never seen"
MAX_MISSES = 3  # after this many unseen template saves in a row, stop saving templates for that tool
PAUSE = 0.3  # seconds between two saves, as in bench_latency.py
IDLE_SETTLE = 2.0  # seconds between the first good response and the first idle sample


def with_include(base: Reloader) -> Reloader:
    def command(port: int, app_dir: Path) -> list[str]:
        return [*base.build_cmd(port, app_dir), "--reload-include", INCLUDE_GLOB]

    return Reloader(base.key, f"{base.label} --reload-include", command)


RELOADERS = (with_include(ASGIRELOAD), with_include(UVICORN))


def main_py(module: int) -> str:
    """The app: its own counter, and the template's text read at import time."""
    return (
        f"# version {module}: {'x' * module}\n"  # a new size each time: never a stale .pyc
        + f"""import os

MODULE = {module}
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates", "page.html")) as f:
    TEMPLATE = f.read().strip()
BODY = f"module={{MODULE}} template={{TEMPLATE}}".encode()


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({{"type": message["type"] + ".complete"}})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] != "http":
        return
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]
    await send({{"type": "http.response.start", "status": 200, "headers": headers}})
    await send({{"type": "http.response.body", "body": BODY}})
"""
    )


def body(module: int, template: int) -> str:
    return f"module={module} template={template}"


@dataclass
class Timings:
    template_s: list[float] = field(default_factory=list)
    module_s: list[float] = field(default_factory=list)
    template_missed: int = 0
    module_missed: int = 0
    error: str | None = None


@dataclass
class Project:
    server: Server
    module: int = 0
    template: int = 0
    misses_in_a_row: int = 0


def _save_and_time(project: Project, path: Path, text: str) -> float | None:
    """Save `text` to `path` and return the seconds until the response shows it (None: never)."""
    with http_client(project.server) as client:
        with contextlib.suppress(httpx.HTTPError):
            client.get("/")  # an open keep-alive connection, like a browser tab showing the page
        started = editor_write(path, text)
        seen = poll_for_body(client, body(project.module, project.template), EDIT_TIMEOUT)
    return None if seen is None else seen - started


def _one_round(project: Project, timings: Timings) -> None:
    """Save the template (unless it keeps going unseen), then the module; time both."""
    app_dir, label = project.server.app_dir, project.server.reloader.label
    if project.misses_in_a_row < MAX_MISSES:
        project.template += 1
        seconds = _save_and_time(project, app_dir / "templates" / "page.html", f"{project.template}\n")
        if seconds is None:
            timings.template_missed += 1
            project.misses_in_a_row += 1
            log(f"  {label}: template save not seen in {EDIT_TIMEOUT:.0f} s")
        else:
            timings.template_s.append(seconds)
            project.misses_in_a_row = 0
        time.sleep(PAUSE)  # the same pause before every save: a fresh standby for both
    project.module += 1
    seconds = _save_and_time(project, app_dir / "main.py", main_py(project.module))
    if seconds is None:
        timings.module_missed += 1
        log(f"  {label}: module save not seen in {EDIT_TIMEOUT:.0f} s")
    else:
        timings.module_s.append(seconds)


def measure_latency(reloaders: Sequence[Reloader], tmp: Path, edits: int) -> dict[str, Timings]:
    timings = {r.key: Timings() for r in reloaders}
    with contextlib.ExitStack() as stack:
        files = {"main.py": main_py(0), "templates/page.html": "0\n"}
        app_dirs = {r.key: make_app_dir(tmp, f"latency-{r.key}", files) for r in reloaders}
        projects = {
            r.key: Project(stack.enter_context(running_server(r, app_dirs[r.key], tmp))) for r in reloaders
        }
        for key, project in list(projects.items()):
            try:
                wait_serving(project.server, body(0, 0), timeout=60)
            except BenchError as exc:
                timings[key].error = str(exc)
                log(f"  {exc}")
                del projects[key]
        time.sleep(STARTUP_SETTLE)
        for _ in range(edits):
            for key, project in projects.items():  # interleaved: A, B, A, B, ...
                _one_round(project, timings[key])
                time.sleep(PAUSE)
    return timings


def make_big_project(tmp: Path, name: str, files: int) -> Path:
    """The app, its template, and `files` empty unrelated files in folders of 1,000."""
    app_dir = make_app_dir(tmp, name, {"main.py": main_py(0), "templates/page.html": "0\n"})
    for i in range(files):
        folder = app_dir / "data" / f"d{i // 1000:03d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True)
        os.close(os.open(folder / f"f{i % 1000:03d}.txt", os.O_CREAT | os.O_WRONLY, 0o644))
    return app_dir


def measure_idle(
    reloaders: Sequence[Reloader], tmp: Path, files: int, seconds: float
) -> dict[str, float | None]:
    """% of one core used by each whole process tree, sampled over the same `seconds`."""
    log(f"idle: writing {len(reloaders)} projects of {files:,} files")
    app_dirs = {r.key: make_big_project(tmp, f"idle-{r.key}", files) for r in reloaders}
    percent: dict[str, float | None] = dict.fromkeys(app_dirs)
    with contextlib.ExitStack() as stack:
        servers = {r.key: stack.enter_context(running_server(r, app_dirs[r.key], tmp)) for r in reloaders}
        for key, server in list(servers.items()):
            try:
                wait_serving(server, body(0, 0), timeout=120)
            except BenchError as exc:
                log(f"  {exc}")
                del servers[key]
        time.sleep(IDLE_SETTLE)
        log(f"idle: sampling {seconds:.0f} s")
        first = {key: (time.perf_counter(), tree_cpu_seconds(s.proc.pid)) for key, s in servers.items()}
        time.sleep(seconds)
        for key, server in servers.items():
            wall = time.perf_counter() - first[key][0]
            percent[key] = 100 * (tree_cpu_seconds(server.proc.pid) - first[key][1]) / wall
            if server.proc.poll() is not None:
                log(f"  {server.failure('exited while idle')}")
                percent[key] = None
    return percent


def rows_for(timings: dict[str, Timings], idle: dict[str, float | None], files: int) -> list[Row]:
    def med(values: list[float]) -> float | None:
        return median(values) * 1000 if values else None

    template_notes = {k: f"{t.template_missed} never seen" for k, t in timings.items() if t.template_missed}
    module_notes = {k: f"{t.module_missed} never seen" for k, t in timings.items() if t.module_missed}
    for key, data in timings.items():
        if data.error:
            template_notes[key] = module_notes[key] = "failed, see stderr"
    return [
        Row(
            "Template edit to new response, p50 (ms)",
            {k: med(t.template_s) for k, t in timings.items()},
            notes=template_notes,
        ),
        Row(
            "Module edit to new response, p50 (ms)",
            {k: med(t.module_s) for k, t in timings.items()},
            notes=module_notes,
        ),
        Row(
            f"Idle CPU, {files:,} files under the root, one include glob (% of one core)",
            dict(idle),
            fmt="{:.2f}",
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--edits", type=int, default=15, help="template and module saves per tool (15)")
    parser.add_argument("--idle-seconds", type=float, default=20.0, help="idle sampling time (20)")
    parser.add_argument("--files", type=int, default=100_000, help="unrelated files for the idle figure")
    args = parser.parse_args(argv)
    if not 1 <= args.edits <= 200 or not 1 <= args.idle_seconds <= 300 or not 0 <= args.files <= 1_000_000:
        parser.error("--edits must be 1-200, --idle-seconds 1-300 and --files 0-1,000,000")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="asgireload-bench-include-") as name:
        tmp = Path(name)
        ok, info = probe_asgireload(tmp)
        reloaders = list(RELOADERS) if ok else [RELOADERS[1]]
        if not ok:
            print(f"asgireload not runnable: {info}", flush=True)
        log(f"latency: {args.edits} template and {args.edits} module saves per tool")
        timings = measure_latency(reloaders, tmp, args.edits)
        idle = measure_idle(reloaders, tmp, args.files, args.idle_seconds)
    print()
    print(
        f"{info if ok else 'asgireload not runnable'}, uvicorn --reload ({uvicorn_reloader_kind()}), "
        f"{os.cpu_count()} CPUs, run in {time.perf_counter() - started:.0f} s"
    )
    print()
    print(markdown_table(rows_for(timings, idle, args.files), ok))
    return 0


if __name__ == "__main__":
    sys.exit(main())
