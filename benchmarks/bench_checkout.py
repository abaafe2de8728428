"""The big-project measurement on a real project checkout: asgireload and `uvicorn --reload` in one run.

    python benchmarks/bench_checkout.py ~/src/mealie --app mealie.app:app \\
        --edit mealie/routes/app/app_about.py --url /api/app/about/theme \\
        --env PRODUCTION=true --env 'DATA_DIR={data}'

The checkout is copied once per tool into a temporary folder (never edited in place; `.git`,
`node_modules` and virtual environments are left out), and each tool serves its copy with the copy
first on sys.path. Each edit appends to the edited route file a route of its own, on the file's
`--router` object, and the time is taken from the save until that route answers; the next edit
replaces it. `{data}` in an `--env` value becomes an empty folder of each tool's own.
See benchmarks/README.md ("A real project") for mealie.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
from bench_common import (
    HOST,
    STARTUP_SETTLE,
    BenchError,
    Reloader,
    Server,
    http_client,
    log,
    median,
    probe_asgireload,
    running_server,
)
from bench_project import EDIT_TIMEOUT, reloaded_lines, reran, table_row

IGNORED = shutil.ignore_patterns(
    ".git", "node_modules", ".venv", "venv", "__pycache__", ".mypy_cache", ".tox"
)
MARKER = """

@{router}.get("/asgireload-bench-{n}", include_in_schema=False)
def _asgireload_bench_{n}() -> str:
    return "asgireload-bench-{n}"
"""


def commands(app: str, env: dict[str, str]) -> list[Reloader]:
    """Both tools, serving `app` from the copy they are given, with `env` (its {data} filled in)."""

    def with_env(app_dir: Path) -> list[str]:
        data = app_dir.parent / f"{app_dir.name}-data"
        data.mkdir(exist_ok=True)
        return ["env", *(f"{k}={v.replace('{data}', str(data))}" for k, v in env.items())]

    def asgireload(port: int, app_dir: Path) -> list[str]:
        common = ["--port", str(port), "--host", HOST, "--app-dir", str(app_dir), "--no-access-log"]
        return [*with_env(app_dir), sys.executable, "-m", "asgireload", app, *common, "--log-level", "info"]

    def uvicorn(port: int, app_dir: Path) -> list[str]:
        common = ["--port", str(port), "--host", HOST, "--app-dir", str(app_dir), "--no-access-log"]
        return [
            *with_env(app_dir),
            *(sys.executable, "-m", "uvicorn", app, "--reload", "--reload-dir", str(app_dir)),
            *common,
            *("--log-level", "warning"),
        ]

    return [
        Reloader("asgireload", "asgireload", asgireload),
        Reloader("uvicorn", "uvicorn --reload", uvicorn),
    ]


def wait_answering(server: Server, url: str, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    with http_client(server, timeout=5.0) as client:
        while time.perf_counter() < deadline:
            if server.proc.poll() is not None:
                raise server.failure("exited during start-up")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url).status_code == 200:
                    return
            time.sleep(0.05)
    raise server.failure(f"GET {url} did not answer 200 within {timeout:.0f} s")


def edit_and_wait(server: Server, args: argparse.Namespace, original: str, n: int) -> float:
    """Seconds from saving edit `n` until its route answers."""
    path = server.app_dir / args.edit
    marker = args.marker_url.format(n=n)
    expected = f"asgireload-bench-{n}"
    with http_client(server, timeout=EDIT_TIMEOUT) as client:
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(original + MARKER.format(router=args.router, n=n))
        saved = time.perf_counter()
        os.replace(temporary, path)
        deadline = saved + EDIT_TIMEOUT
        while time.perf_counter() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                response = client.get(marker)
                if response.status_code == 200 and response.json() == expected:
                    return time.perf_counter() - saved
            time.sleep(0.005)
    raise server.failure(f"GET {marker} did not answer {expected!r} {EDIT_TIMEOUT:.0f} s after the save")


def run(args: argparse.Namespace) -> list[str]:
    checkout = args.checkout.resolve()
    original = (checkout / args.edit).read_text()
    env = dict(item.split("=", 1) for item in args.env)
    with (
        tempfile.TemporaryDirectory(prefix="asgireload-bench-checkout-") as name,
        contextlib.ExitStack() as stack,
    ):
        tmp = Path(name)
        ok, info = probe_asgireload(tmp)
        reloaders = [r for r in commands(args.app, env) if ok or r.key == "uvicorn"]
        if not ok:
            print(f"asgireload not runnable: {info}", flush=True)
        copies = {r.key: tmp / f"{checkout.name}-{r.key}" for r in reloaders}
        for copy in copies.values():
            shutil.copytree(checkout, copy, ignore=IGNORED, symlinks=True)
        servers = {r.key: stack.enter_context(running_server(r, copies[r.key], tmp)) for r in reloaders}
        for server in servers.values():
            wait_answering(server, args.url, args.start_timeout)
        time.sleep(STARTUP_SETTLE)
        taken: dict[str, list[float]] = {key: [] for key in servers}
        for n in range(1, args.edits + 1):
            log(f"edit {n} of {args.edit}")
            for key, server in servers.items():
                taken[key].append(edit_and_wait(server, args, original, n))
                time.sleep(args.pause)
        lines = reloaded_lines(servers["asgireload"]) if "asgireload" in servers else []
    what = f"{checkout.name}, {args.edit} edited"
    return [
        table_row(f"{what}: 1st edit", {k: v[0] for k, v in taken.items()}, reran(lines[:1])),
        table_row(
            f"{what}: later edits (p50)", {k: median(v[1:] or v) for k, v in taken.items()}, reran(lines[1:])
        ),
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkout", type=Path, help="the project's folder (copied, never edited)")
    parser.add_argument("--app", required=True, help="the app's import string, as for uvicorn")
    parser.add_argument("--edit", required=True, help="the route file to edit, relative to the checkout")
    parser.add_argument("--url", required=True, help="a path that answers 200 once the app serves")
    parser.add_argument("--router", default="router", help="the APIRouter object in the edited file (router)")
    parser.add_argument(
        "--marker-url",
        help="where the appended route answers, with {n} (default: --url's folder + the route)",
    )
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="for both tools")
    parser.add_argument("--edits", type=int, default=5, help="saves per tool (default 5)")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds after a new route answers (1)")
    parser.add_argument("--start-timeout", type=float, default=120.0, help="seconds to start (120)")
    args = parser.parse_args(argv)
    if not (args.checkout / args.edit).is_file():
        parser.error(f"--edit {args.edit!r}: no such file in {args.checkout}")
    if bad := [item for item in args.env if "=" not in item]:
        parser.error(f"--env {bad[0]!r}: expected KEY=VALUE")
    if not 1 <= args.edits <= 100:
        parser.error("--edits must be between 1 and 100")
    args.marker_url = args.marker_url or args.url.rsplit("/", 1)[0] + "/asgireload-bench-{n}"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        rows = run(args)
    except BenchError as exc:
        print(f"failed: {exc}", flush=True)
        return 1
    print()
    print(
        "| figure (ms from save to new route) | asgireload | uvicorn --reload | ratio | asgireload re-ran |"
    )
    print("|---|---:|---:|---:|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
