"""Coverage of the app that ran in the workers: pytest-cov with the fixture, and `coverage run`.

Each test runs the real tools in a subprocess, in a project written into tmp_path with the one
line of configuration the README asks for (`patch = subprocess`), and reads the JSON report:
the handler's lines must be among those executed. Coverage variables of the environment these
tests run in (if the suite itself is measured) are not passed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from .test_cli import (
    DEADLINE,
    ProcStat,
    asgireload_processes_in,
    client,
    kill_group,
    still_running,
)
from .test_terminal import all_exit

SERVING = re.compile(r"serving on http://127\.0\.0\.1:(\d+) ")

if os.environ.get("CI") != "true":
    pytest.importorskip("pytest_cov", reason="pytest-cov (the test extra) is not installed")
    pytest.importorskip("coverage", reason="coverage (the test extra) is not installed")

HANDLER = """\
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b"measured"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""
HANDLER_LINES = {4, 5, 6}  # run only by a request, in a worker

FIXTURE_TEST = """\
import os

import httpx

HERE = os.path.dirname(os.path.abspath(__file__))


async def test_served(asgireload_server):
    async with asgireload_server("handler:app", app_dir=HERE) as server:
        async with httpx.AsyncClient(trust_env=False) as client:
            assert (await client.get(server.url)).text == "measured"
"""

COVERAGE_CONFIG = "[run]\npatch = subprocess\n"


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("COVERAGE", "ASGIRELOAD"))}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "handler.py").write_text(HANDLER)
    return tmp_path


async def run(folder: Path, *argv: str) -> str:
    """Run argv to its end (under the deadline), return its output; fail on a non-zero exit."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=folder,
        env=environment(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(DEADLINE * 3):
            output, _ = await process.communicate()
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    text = output.decode(errors="replace")
    assert process.returncode == 0, text
    return text


def executed(report: Path, name: str) -> set[int]:
    files = json.loads(report.read_text())["files"]
    return set(files[name]["executed_lines"]) if name in files else set()


async def test_pytest_cov_measures_what_the_fixture_served(project: Path) -> None:
    (project / "test_handler.py").write_text(FIXTURE_TEST)
    (project / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    (project / ".coveragerc").write_text(COVERAGE_CONFIG)
    output = await run(
        project,
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--cov=.",
        "--cov-report=json:report.json",
        "test_handler.py",
    )
    assert "1 passed" in output
    assert executed(project / "report.json", "handler.py") >= HANDLER_LINES, output


async def start_under_coverage(project: Path) -> tuple[asyncio.subprocess.Process, int, str]:
    """`coverage run -m asgireload handler:app`: the process, its port, what it printed until then."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "coverage",
        "run",
        "-m",
        "asgireload",
        "handler:app",
        "--port",
        "0",
        cwd=project,
        env=environment(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert process.stdout is not None
    seen = ""
    async with asyncio.timeout(DEADLINE):
        while not (serving := SERVING.search(seen)):
            line = await process.stdout.readline()
            assert line, f"asgireload ended before serving:\n{seen}"
            seen += line.decode(errors="replace")
    return process, int(serving[1]), seen


async def end(process: asyncio.subprocess.Process, signum: int) -> None:
    """Send `signum` and wait for the exit; whatever is left of its group is killed and reaped."""
    try:
        os.kill(process.pid, signum)
        async with asyncio.timeout(DEADLINE):
            await process.communicate()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


@pytest.mark.parametrize("ending", ["ctrl-c", "supervisor-killed"])
async def test_coverage_run_measures_the_workers(project: Path, ending: str) -> None:
    """Stopped by CTRL+C the worker drains and exits normally; when the supervisor is killed, the
    worker ends itself at once with os._exit, and saves its measurement first."""
    (project / ".coveragerc").write_text(COVERAGE_CONFIG)
    process, port, _ = await start_under_coverage(project)
    workers: set[ProcStat] = set()
    try:
        workers = {p for p in asgireload_processes_in(project) if p.pid != process.pid}
        assert workers, "no worker found"
        async with client() as http:
            assert (await http.get(f"http://127.0.0.1:{port}/")).text == "measured"
        await end(process, signal.SIGINT if ending == "ctrl-c" else signal.SIGKILL)
        await all_exit(workers, f"after {ending}")
    finally:
        for worker in still_running(workers):
            kill_group(worker.pid)
    await run(project, sys.executable, "-m", "coverage", "combine")
    await run(project, sys.executable, "-m", "coverage", "json", "-o", "report.json")
    assert executed(project / "report.json", "handler.py") >= HANDLER_LINES


async def test_without_the_configuration_asgireload_says_what_to_add(project: Path) -> None:
    process, _, seen = await start_under_coverage(project)
    await end(process, signal.SIGINT)
    assert "add `patch = subprocess` to the [run] section" in seen
