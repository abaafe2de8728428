"""A Django project's view edited again and again: asgireload (with and without its project layer)
and `uvicorn --reload`, in one run, one tool at a time.

    python benchmarks/bench_django.py /tmp/wsite --app wsite.asgi:application \\
        --edit home/views.py --url /ping/ --python /tmp/wsite/venv/bin/python

The edited file must define `MARK = "..."` at module level and the view at `--url` must answer
`MARK`: each edit appends `MARK = "bench-N"` to the original, and the time is taken from the save
until the URL answers `bench-N`. The project is copied once per tool into a temporary folder
(never edited in place). Between edits the script waits `--pause` seconds (the standby, and a
project layer, are prepared in the background as after any save). The first edit is reported
apart: the median is of the edits after it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOLS = {
    "asgireload": ["-m", "asgireload", "{app}", "--port", "{port}", "--no-live-reload"],
    "asgireload --no-project-layer": [
        "-m",
        "asgireload",
        "{app}",
        "--port",
        "{port}",
        "--no-live-reload",
        "--no-project-layer",
    ],
    "uvicorn --reload": ["-m", "uvicorn", "{app}", "--port", "{port}", "--reload"],
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(url: str, body: str, deadline: float) -> float:
    """Poll until `url` answers `body`; the time it took."""
    start = time.perf_counter()
    with httpx.Client(timeout=1.0) as client:
        while time.perf_counter() - start < deadline:
            try:
                if client.get(url).text.startswith(body):
                    return time.perf_counter() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.005)
    raise RuntimeError(f"{url} did not answer {body!r} within {deadline} s")


def measure(tool: str, args: argparse.Namespace, work: Path) -> list[float]:
    copy = work / tool.replace(" ", "_")
    shutil.copytree(args.project, copy, ignore=shutil.ignore_patterns(".git", "venv", ".venv"))
    edited = copy / args.edit
    original = edited.read_text()
    port = free_port()
    command = [args.python, *(part.format(app=args.app, port=port) for part in TOOLS[tool])]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    with open(work / f"{tool.replace(' ', '_')}.log", "wb") as log:
        server = subprocess.Popen(command, cwd=copy, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}{args.url}"
        wait_for(url, "", 60.0)
        time.sleep(args.pause * 2)  # start-up's background work (the standby, a layer) done
        times = []
        for n in range(1, args.edits + 1):
            temporary = edited.with_suffix(".bench-tmp")
            temporary.write_text(f'{original}\nMARK = "bench-{n}"\n')
            os.replace(temporary, edited)  # as an editor saves
            times.append(wait_for(url, f"bench-{n}", 60.0))
            time.sleep(args.pause)
        return times
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("--app", required=True)
    parser.add_argument("--edit", required=True, help="the view module, relative to the project")
    parser.add_argument("--url", required=True)
    parser.add_argument("--python", default=sys.executable, help="the project's interpreter")
    parser.add_argument("--edits", type=int, default=8)
    parser.add_argument("--pause", type=float, default=2.0)
    args = parser.parse_args()
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    with tempfile.TemporaryDirectory() as folder:
        for tool in TOOLS:
            times = measure(tool, args, Path(folder))
            again = statistics.median(times[1:]) * 1000
            print(f"{tool:32} first edit {times[0] * 1000:7.0f} ms   edited again (median) {again:7.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
