"""Reloads of a big project and of a heavy app: asgireload and `uvicorn --reload` in one run.

    python benchmarks/bench_project.py                       # about 3 minutes
    python benchmarks/bench_project.py --edits 4 --modules 90 --skip-heavy

See benchmarks/README.md ("Big projects") for what each figure means. asgireload runs at
`--log-level info` here (uvicorn at warning, as elsewhere) so that its "Reloaded" lines, with
what each reload re-ran, can be read back from its log.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from bench_common import (
    ASGIRELOAD_EXTRA_ARGS,
    STARTUP_SETTLE,
    UVICORN,
    BenchError,
    Reloader,
    Server,
    _asgireload_cmd,
    editor_write,
    http_client,
    log,
    median,
    probe_asgireload,
    proc_pss_kib,
    process_tree,
    start_servers,
    wait_serving,
)
from bench_project_apps import (
    MODEL_EDITED,
    ROUTE_EDITED,
    big_project_files,
    heavy_app_files,
    heavy_main_source,
    model_source,
    route_source,
)


def _asgireload_info_cmd(port: int, app_dir: Path) -> list[str]:
    command = _asgireload_cmd(port, app_dir)
    command[command.index("warning")] = "info"
    return command


ASGIRELOAD_INFO = Reloader("asgireload", "asgireload", _asgireload_info_cmd)
RELOADED = re.compile(
    r"Reloaded in (\d+) ms \(generation (\d+)\): (.*?)(?:; re-ran (\d+) of (\d+) project modules)?$"
)
EDIT_TIMEOUT = 30.0  # seconds for one edit to be served (the heavy app takes 5 s under uvicorn)


@dataclass(frozen=True)
class Edit:
    """Saving `path` with the source for counter `n`, seen when GET `url` answers `counter=n`."""

    name: str
    path: str
    source: Callable[[int], str]
    url: str


def poll(client: httpx.Client, url: str, expected: str, timeout: float) -> float | None:
    """perf_counter() of the first GET `url` that answers `expected`; None after `timeout`."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            response = client.get(url)
            if response.status_code == 200 and response.text == expected:
                return time.perf_counter()
        time.sleep(0.005)
    return None


def measure(
    servers: dict[str, Server], edit: Edit, times: int, counter: list[int], pause: float
) -> dict[str, list[float]]:
    """Save `edit` `times` times on each server in turn; seconds from each save to the new body."""
    taken: dict[str, list[float]] = {key: [] for key in servers}
    for _ in range(times):
        counter[0] += 1
        expected = f"counter={counter[0]}"
        for key, server in servers.items():
            with http_client(server, timeout=EDIT_TIMEOUT) as client:
                saved = editor_write(server.app_dir / edit.path, edit.source(counter[0]))
                seen = poll(client, edit.url, expected, EDIT_TIMEOUT)
            if seen is None:
                raise server.failure(
                    f"{edit.name}: {expected!r} not served {EDIT_TIMEOUT:.0f} s after the save"
                )
            taken[key].append(seen - saved)
            time.sleep(pause)  # a developer reads the page before the next save
    return taken


def reloaded_lines(server: Server) -> list[re.Match[str]]:
    text = server.log_path.read_text(errors="replace")
    return [m for line in text.splitlines() if (m := RELOADED.search(line))]


def reran(matches: Sequence[re.Match[str]]) -> str:
    counts = sorted({f"{m[4]} of {m[5]}" for m in matches if m[4] is not None})
    return ", ".join(counts) or "n/a"


def table_row(figure: str, values: dict[str, float], reran_text: str = "") -> str:
    a, u = values.get("asgireload"), values.get("uvicorn")
    ratio = f"{a / u:.2f}x" if a is not None and u else "—"
    shown = [f"{v * 1000:,.0f}" if v is not None else "n/a" for v in (a, u)]
    return f"| {figure} | {shown[0]} | {shown[1]} | {ratio} | {reran_text} |"


def run_big_project(
    reloaders: Sequence[Reloader], tmp: Path, modules: int, edits: int, pause: float
) -> list[str]:
    route = Edit(
        "route",
        f"app/routers/r{ROUTE_EDITED}.py",
        lambda n: route_source(ROUTE_EDITED, f"counter={n}"),
        f"/r{ROUTE_EDITED}",
    )
    model = Edit(
        "model",
        f"app/models/m{MODEL_EDITED}.py",
        lambda n: model_source(MODEL_EDITED, f"counter={n}"),
        f"/r{MODEL_EDITED}/model",
    )
    rows: list[str] = []
    with contextlib.ExitStack() as stack:
        servers = start_servers(stack, reloaders, tmp, f"project{modules}", big_project_files(modules))
        for server in servers.values():
            wait_serving(server, "ok", timeout=120)
        time.sleep(STARTUP_SETTLE)
        counter = [0]
        log(f"project of {modules} modules: {edits} edits of {route.path}")
        by_route = measure(servers, route, edits, counter, pause)
        log(f"project of {modules} modules: {edits} edits of {model.path}")
        by_model = measure(servers, model, edits, counter, pause)
        time.sleep(STARTUP_SETTLE)  # the standby (and asgireload's project layer) in place
        memory = {key: tree_pss_mib(server) for key, server in servers.items()}
        lines = reloaded_lines(servers["asgireload"]) if "asgireload" in servers else []
        route_lines, model_lines = lines[:edits], lines[edits : 2 * edits]
        what = f"{modules}-module project + 1 s import"
        rows.append(
            table_row(
                f"{what}, route file: 1st edit",
                {k: v[0] for k, v in by_route.items()},
                reran(route_lines[:1]),
            )
        )
        rows.append(
            table_row(
                f"{what}, route file: 2nd edit",
                {k: v[1] for k, v in by_route.items()},
                reran(route_lines[1:2]),
            )
        )
        rows.append(
            table_row(
                f"{what}, route file: 3rd and later edits (p50)",
                {k: median(v[2:]) for k, v in by_route.items()},
                reran(route_lines[2:]),
            )
        )
        rows.append(
            table_row(
                f"{what}, model imported by two services (p50 of {edits})",
                {k: median(v) for k, v in by_model.items()},
                reran(model_lines),
            )
        )
        rows.append(memory_row(f"{what}, the whole tree's PSS after the edits (MiB)", memory))
    return rows


def tree_pss_mib(server: Server) -> float | None:
    """The proportional set size of the server and every process under it (templates, layers,
    workers): what the whole reloader costs the machine."""
    sizes = [proc_pss_kib(pid) for pid in process_tree(server.proc.pid)]
    known = [size for size in sizes if size is not None]
    return sum(known) / 1024 if known else None


def memory_row(figure: str, values: dict[str, float | None]) -> str:
    a, u = values.get("asgireload"), values.get("uvicorn")
    ratio = f"{a / u:.2f}x" if a is not None and u else "—"
    shown = [f"{v:,.0f}" if v is not None else "n/a" for v in (a, u)]
    return f"| {figure} | {shown[0]} | {shown[1]} | {ratio} | |"


def run_heavy_app(reloaders: Sequence[Reloader], tmp: Path, edits: int, pause: float) -> list[str]:
    main = Edit("main.py", "main.py", lambda n: heavy_main_source(f"counter={n}"), "/body")
    with contextlib.ExitStack() as stack:
        servers = start_servers(stack, reloaders, tmp, "heavy", heavy_app_files())
        for server in servers.values():
            wait_serving(server, "ok", timeout=120)
        time.sleep(STARTUP_SETTLE)
        log(f"heavy app: {edits} edits of main.py")
        taken = measure(servers, main, edits, [0], pause)
        lines = reloaded_lines(servers["asgireload"]) if "asgireload" in servers else []
    figure = "heavy app (3 s model import, 2 s lifespan), main.py edited"
    return [
        table_row(f"{figure}: 1st edit", {k: v[0] for k, v in taken.items()}, reran(lines[:1])),
        table_row(
            f"{figure}: later edits (p50)",
            {k: median(v[1:] or v) for k, v in taken.items()},
            reran(lines[1:]),
        ),
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modules", type=int, default=450, help="project modules to generate (default 450)")
    parser.add_argument(
        "--edits", type=int, default=6, help="saves of each edited file per tool (default 6, at least 3)"
    )
    parser.add_argument(
        "--heavy-edits", type=int, default=3, help="saves of the heavy app's main.py (default 3)"
    )
    parser.add_argument(
        "--pause", type=float, default=1.0, help="seconds between a new body and the next save (1)"
    )
    parser.add_argument("--skip-heavy", action="store_true", help="leave out the heavy app")
    parser.add_argument(
        "--asgireload-arg", action="append", default=[], metavar="ARG", help="pass to asgireload too"
    )
    args = parser.parse_args(argv)
    if not 3 <= args.edits <= 100 or not 1 <= args.heavy_edits <= 100:
        parser.error("--edits must be between 3 and 100, --heavy-edits between 1 and 100")
    if not 60 <= args.modules <= 5000:
        parser.error("--modules must be between 60 and 5000")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ASGIRELOAD_EXTRA_ARGS.extend(args.asgireload_arg)
    with tempfile.TemporaryDirectory(prefix="asgireload-bench-project-") as name:
        tmp = Path(name)
        ok, info = probe_asgireload(tmp)
        reloaders = [ASGIRELOAD_INFO, UVICORN] if ok else [UVICORN]
        if not ok:
            print(f"asgireload not runnable: {info}", flush=True)
        rows: list[str] = []
        try:
            rows += run_big_project(reloaders, tmp, args.modules, args.edits, args.pause)
            if not args.skip_heavy:
                rows += run_heavy_app(reloaders, tmp, args.heavy_edits, args.pause)
        except BenchError as exc:
            print(f"failed: {exc}", flush=True)
            return 1
    print()
    print("| figure (ms from save to new body) | asgireload | uvicorn --reload | ratio | asgireload re-ran |")
    print("|---|---:|---:|---:|---|")
    print("\n".join(rows))
    return 0


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main())
