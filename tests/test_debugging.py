"""Debugging under reload: breakpoint() in the terminal asgireload runs in, and without one.

The terminal tests run the real CLI in a real pseudo-terminal (see test_terminal.py) and type at
the pdb prompt as a developer would; requests are real HTTP on loopback. They synchronise on what
the terminal shows (the prompt, log lines) and on responses, never on time.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import httpx
import pytest

from asgireload import Reloader
from asgireload._supervisor.debugging import debugger_attached, tracer_active

from .test_cli import SERVING, ProcStat, client, port_is_free, write_atomically
from .test_terminal import (
    Terminal,
    all_exit,
    start_shell,
    terminal_session,
    wait_for_children,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

PROMPT = r"\(Pdb\) "

APP = """\
import asyncio

VERSION = {version!r}


def lookup():
    secret = "forty-" + "two"
    breakpoint()
    return secret


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/stop":
        secret = lookup()
    elif scope["path"] == "/stop-in-a-thread":  # as a sync endpoint runs, in frameworks
        secret = await asyncio.to_thread(lookup)
    elif scope["path"] == "/set-trace":
        import pdb

        pdb.set_trace()
        secret = "set-trace"
    elif scope["path"] == "/step-while-draining":
        await wait_for_go()  # in flight when its generation starts draining
        breakpoint()
        await asyncio.sleep(0.05)  # `n` over an await: the event loop (and a drain) runs meanwhile
        secret = "stepped"
    elif scope["path"] == "/slow-step":
        breakpoint()
        wait_for_release()  # `n` over this: the test types while the step runs
        secret = "slow"
    else:
        secret = "forty-two"
    body = f"{{VERSION}} {{secret}}".encode()
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": body}})


async def wait_for_go():
    import pathlib, time

    here = pathlib.Path(__file__).parent
    (here / "waiting").touch()
    deadline = time.monotonic() + 20
    while not (here / "go").exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def wait_for_release():
    import pathlib, time

    here = pathlib.Path(__file__).parent
    (here / "stepping").touch()
    deadline = time.monotonic() + 20
    while not (here / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
"""
BREAKPOINT = r"main\.py:8"


def app_source(version: str) -> str:
    return APP.format(version=version)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "main.py").write_text(app_source("one"))
    return tmp_path


async def start_cli(
    terminal: Terminal, project: Path, *options: str
) -> tuple[asyncio.subprocess.Process, int]:
    process = await terminal.start(
        [sys.executable, "-m", "asgireload", "main:app", "--port", "0", *options], project
    )
    return process, int((await terminal.wait_for(SERVING.pattern))[1])


async def stop_cli(
    terminal: Terminal, process: asyncio.subprocess.Process, workers: set[ProcStat], port: int
) -> None:
    after = len(terminal.text)
    terminal.type("\x03")  # CTRL+C, now that no worker is paused: it stops the server
    await terminal.wait_for(r"Shutting down \(CTRL\+C\)", after)
    await all_exit(workers, "after CTRL+C")
    async with asyncio.timeout(20):
        assert await process.wait() == 0
    assert port_is_free(port)


async def test_breakpoint_prompts_in_the_terminal_and_continue_completes_the_request(project: Path) -> None:
    workers: set[ProcStat] = set()
    async with terminal_session(project, workers) as terminal:
        process, port = await start_cli(terminal, project)
        workers |= await wait_for_children(process.pid, 2)
        async with client() as http:
            paused = asyncio.ensure_future(http.get(f"http://127.0.0.1:{port}/stop"))
            await terminal.wait_for(rf"Generation 1 \(pid \d+\) is paused at a breakpoint \({BREAKPOINT}\)")
            await terminal.wait_for(PROMPT)
            assert not paused.done()

            after = len(terminal.text)
            terminal.type("p secret\n")
            await terminal.wait_for(r"'forty-two'\n", after)
            await terminal.wait_for(PROMPT, after)

            # The reload key typed at the prompt is pdb's (`r` is its "return" command): the
            # supervisor reads no key while the debugger has the terminal.
            after = len(terminal.text)
            terminal.type("r\n")
            await terminal.wait_for(r"--Return--", after)
            await terminal.wait_for(PROMPT, after)

            # CTRL+C at the prompt goes to pdb, which says so and prompts again; nothing stops.
            after = len(terminal.text)
            terminal.type("\x03")
            await terminal.wait_for(r"--KeyboardInterrupt--", after)
            await terminal.wait_for(PROMPT, after)

            terminal.type("c\n")
            response = await paused
            assert (response.status_code, response.text) == (200, "one forty-two")
            # the terminal and the keys are the supervisor's again: `r` + Enter reloads
            after = len(terminal.text)
            terminal.type("r\n")
            await terminal.wait_for(
                r"Reloaded in \d+ ms \(generation 2\): reload requested from the terminal", after
            )
        assert "Shutting down" not in terminal.text
        assert "Reloaded" not in terminal.text[: terminal.text.index("--Return--")]
        workers |= set(await wait_for_children(process.pid, 2))
        await stop_cli(terminal, process, workers, port)


@pytest.mark.parametrize("path", ["/stop", "/stop-in-a-thread"])
async def test_an_edit_while_paused_serves_new_requests_and_the_paused_one_finishes_on_old_code(
    project: Path, path: str
) -> None:
    workers: set[ProcStat] = set()
    async with terminal_session(project, workers) as terminal:
        # a drain timeout far shorter than the pause: a paused generation is never killed by it
        process, port = await start_cli(terminal, project, "--drain-timeout", "1")
        workers |= await wait_for_children(process.pid, 2)
        async with client() as http:
            paused = asyncio.ensure_future(http.get(f"http://127.0.0.1:{port}{path}"))
            await terminal.wait_for(PROMPT)

            after = len(terminal.text)
            write_atomically(project / "main.py", app_source("two"))
            await terminal.wait_for(r"Reloaded in \d+ ms \(generation 2\): main\.py changed", after)
            await terminal.wait_for(r"Generation 1 is paused at a breakpoint: generation 2 serves", after)
            fresh = await http.get(f"http://127.0.0.1:{port}/")
            assert (fresh.status_code, fresh.text) == (200, "two forty-two")
            # past the drain timeout (the worker's, 1 s, and the supervisor's, 1 s later) it lives on;
            # said while the prompt is shown, on a line of its own, and the prompt is drawn again
            past_timeout = r"Generation 1 is past its drain timeout, but paused"
            await terminal.wait_for(past_timeout + r"[^\n]*\n\(Pdb\) ", after)
            assert not re.search(r"\(Pdb\) [^\n]*" + past_timeout, terminal.text)
            assert not paused.done()
            after = len(terminal.text)
            terminal.type("p VERSION\n")
            await terminal.wait_for(r"'one'\n", after)

            terminal.type("c\n")
            response = await paused
            assert (response.status_code, response.text) == (200, "one forty-two")
        workers |= set(await wait_for_children(process.pid, 2))
        assert "did not finish draining in time" not in terminal.text
        assert "Drain timeout reached" not in terminal.text
        await stop_cli(terminal, process, workers, port)


async def wait_for_the_first_prompt(terminal: Terminal, after: int = 0) -> None:
    """The prompt of a breakpoint(), at the line after it: where 3.11 and 3.12 stop first. Since
    3.13, pdb stops at the breakpoint() call itself; `n` brings it to the next line."""
    await terminal.wait_for(PROMPT, after)
    if sys.version_info >= (3, 13):
        after = len(terminal.text)
        terminal.type("n\n")
        await terminal.wait_for(PROMPT, after)


async def wait_for_file(path: Path) -> None:
    async with asyncio.timeout(20):
        while not path.exists():  # noqa: ASYNC110, ASYNC240 (the app writes it: no event)
            await asyncio.sleep(0.02)


async def test_keys_and_ctrl_c_typed_during_a_step_are_the_debuggers(project: Path) -> None:
    workers: set[ProcStat] = set()
    async with terminal_session(project, workers) as terminal:
        process, port = await start_cli(terminal, project)
        workers |= await wait_for_children(process.pid, 2)
        async with client() as http:
            paused = asyncio.ensure_future(http.get(f"http://127.0.0.1:{port}/slow-step"))
            await wait_for_the_first_prompt(terminal)

            # `r` + Enter typed while a step runs waits for pdb's next prompt (there it is pdb's
            # return command: the request runs to its end), instead of reloading the server
            after = len(terminal.text)
            terminal.type("n\n")
            await wait_for_file(project / "stepping")
            terminal.type("r\n")
            (project / "release").touch()
            await terminal.wait_for(r"-> secret = \"slow\"\n\(Pdb\) ", after)
            response = await paused
            assert (response.status_code, response.text) == (200, "one slow")

            # CTRL+C during a step interrupts the step, where the app is, as in pdb
            (project / "stepping").unlink()
            (project / "release").unlink()
            paused = asyncio.ensure_future(http.get(f"http://127.0.0.1:{port}/slow-step"))
            await wait_for_the_first_prompt(terminal, len(terminal.text))
            after = len(terminal.text)
            terminal.type("n\n")
            await wait_for_file(project / "stepping")
            terminal.type("\x03")
            await terminal.wait_for(r"Program interrupted", after)
            await terminal.wait_for(r"main\.py\(\d+\)wait_for_release\(\)", after)
            await terminal.wait_for(PROMPT, after)
            (project / "release").touch()
            terminal.type("c\n")
            response = await paused
            assert (response.status_code, response.text) == (200, "one slow")
        assert "reload requested from the terminal" not in terminal.text
        assert "Shutting down" not in terminal.text
        await stop_cli(terminal, process, workers, port)


async def test_stepping_over_an_await_in_a_draining_generation_keeps_the_request(project: Path) -> None:
    workers: set[ProcStat] = set()
    async with terminal_session(project, workers) as terminal:
        process, port = await start_cli(terminal, project, "--drain-timeout", "3")
        workers |= await wait_for_children(process.pid, 2)
        async with client() as http:
            paused = asyncio.ensure_future(http.get(f"http://127.0.0.1:{port}/step-while-draining"))
            await wait_for_file(project / "waiting")
            after = len(terminal.text)
            write_atomically(project / "main.py", app_source("two"))
            # logged once generation 1 stopped accepting: its drain (and its deadline) runs
            await terminal.wait_for(r"Reloaded in \d+ ms \(generation 2\)", after)
            (project / "go").touch()  # now the request stops at its breakpoint, on the main thread
            await wait_for_the_first_prompt(terminal, after)
            # past the drain timeout of the worker (3 s) and of the supervisor (1 s later)
            await terminal.wait_for(r"Generation 1 is past its drain timeout, but paused", after)
            after = len(terminal.text)
            terminal.type("n\n")  # over the await: the worker's event loop, and its drain, run
            await terminal.wait_for(r"-> secret = \"stepped\"", after)
            await terminal.wait_for(PROMPT, after)
            terminal.type("c\n")
            response = await paused
            assert (response.status_code, response.text) == (200, "one stepped")
        workers |= set(await wait_for_children(process.pid, 2))
        assert "Drain timeout reached" not in terminal.text
        assert "did not finish draining in time" not in terminal.text
        await stop_cli(terminal, process, workers, port)


async def test_a_breakpoint_waiting_its_turn_in_a_draining_generation_is_not_killed(project: Path) -> None:
    workers: set[ProcStat] = set()
    async with terminal_session(project, workers) as terminal:
        process, port = await start_cli(terminal, project, "--drain-timeout", "1")
        workers |= await wait_for_children(process.pid, 2)
        async with client() as http:
            first = asyncio.ensure_future(http.get(f"http://127.0.0.1:{port}/stop"))
            await terminal.wait_for(PROMPT)
            after = len(terminal.text)
            write_atomically(project / "main.py", app_source("two"))
            await terminal.wait_for(r"Reloaded in \d+ ms \(generation 2\)", after)
            second = asyncio.ensure_future(http.get(f"http://127.0.0.1:{port}/stop"))
            await terminal.wait_for(r"Generation 2 \(pid \d+\) stopped at a breakpoint too", after)
            after = len(terminal.text)
            write_atomically(project / "main.py", app_source("three"))
            await terminal.wait_for(r"Reloaded in \d+ ms \(generation 3\)", after)
            # generation 2 drains while it waits for the terminal: paused, so never killed
            await terminal.wait_for(r"Generation 2 is past its drain timeout, but paused", after)
            assert not second.done()

            after = len(terminal.text)
            terminal.type("c\n")
            assert (await first).text == "one forty-two"
            await terminal.wait_for(r"Generation 2 \(pid \d+\) is paused at a breakpoint", after)
            await terminal.wait_for(PROMPT, after)
            terminal.type("c\n")
            response = await second
            assert (response.status_code, response.text) == (200, "two forty-two")
            assert (await http.get(f"http://127.0.0.1:{port}/")).text == "three forty-two"
        workers |= set(await wait_for_children(process.pid, 2))
        assert "did not finish draining in time" not in terminal.text
        assert "Drain timeout reached" not in terminal.text
        await stop_cli(terminal, process, workers, port)


async def test_ctrl_z_is_refused_while_paused_and_ctrl_c_stops_at_once_once_stopping(project: Path) -> None:
    workers: set[ProcStat] = set()
    async with terminal_session(project, workers) as terminal:
        process, port = await start_cli(terminal, project)
        workers |= await wait_for_children(process.pid, 2)
        async with client() as http:
            paused = asyncio.ensure_future(http.get(f"http://127.0.0.1:{port}/stop"))
            await terminal.wait_for(PROMPT)
            after = len(terminal.text)
            terminal.type("\x1a")  # CTRL+Z: the paused worker would keep reading the shell's input
            await terminal.wait_for(r"CTRL\+Z is ignored while a worker's debugger has the terminal", after)
            after = len(terminal.text)
            terminal.type("p VERSION\n")  # still pdb's, and asgireload was not suspended
            await terminal.wait_for(r"'one'\n", after)

            after = len(terminal.text)
            process.send_signal(signal.SIGTERM)  # stopping: the paused request would hold it up
            await terminal.wait_for(r"Shutting down \(SIGTERM\)", after)
            terminal.type("\x03")  # not pdb's any more: it stops at once, as the line says
            await terminal.wait_for(r"Stopping at once", after)
            with pytest.raises(httpx.HTTPError):
                await paused
        await all_exit(workers, "after CTRL+C while stopping")
        async with asyncio.timeout(20):
            await process.wait()
        assert port_is_free(port)


async def test_pdb_set_trace_prompts_in_the_terminal_too(project: Path) -> None:
    workers: set[ProcStat] = set()
    async with terminal_session(project, workers) as terminal:
        process, port = await start_cli(terminal, project)
        workers |= await wait_for_children(process.pid, 2)
        async with client() as http:
            for command, expected in (("q", (500, "Internal Server Error")), ("c", (200, "one set-trace"))):
                after = len(terminal.text)
                paused = asyncio.ensure_future(http.get(f"http://127.0.0.1:{port}/set-trace"))
                await terminal.wait_for(r"is paused at a breakpoint \(main\.py:\d+\)", after)
                await terminal.wait_for(PROMPT, after)
                terminal.type(f"{command}\n")  # q fails the request; c lets it finish
                response = await paused
                assert (response.status_code, response.text) == expected
        await stop_cli(terminal, process, workers, port)


async def test_two_requests_paused_at_once_take_turns_at_the_prompt(project: Path) -> None:
    workers: set[ProcStat] = set()
    async with terminal_session(project, workers) as terminal:
        process, port = await start_cli(terminal, project)
        workers |= await wait_for_children(process.pid, 2)
        async with client() as http:
            url = f"http://127.0.0.1:{port}/stop-in-a-thread"
            first = asyncio.ensure_future(http.get(url))
            await terminal.wait_for(PROMPT)
            second = asyncio.ensure_future(http.get(url))
            await terminal.wait_for(r"Another request stopped at a breakpoint \(\S+main\.py:8\); it gets the")
            # a thread's pdb cannot be interrupted: CTRL+C says so, and stops nothing
            after = len(terminal.text)
            terminal.type("\x03")
            await terminal.wait_for(r"CTRL\+C cannot interrupt the debugger of generation 1", after)

            after = len(terminal.text)
            terminal.type("c\n")
            assert (await first).status_code == 200
            await terminal.wait_for(PROMPT, after)  # the second one's turn
            assert not second.done()
            terminal.type("c\n")
            assert (await second).text == "one forty-two"
        assert "Shutting down" not in terminal.text
        await stop_cli(terminal, process, workers, port)


async def test_a_paused_worker_that_dies_gives_the_terminal_back(project: Path) -> None:
    workers: set[ProcStat] = set()
    async with terminal_session(project, workers) as terminal:
        process, port = await start_cli(terminal, project)
        workers |= await wait_for_children(process.pid, 2)
        async with client() as http:
            paused = asyncio.ensure_future(http.get(f"http://127.0.0.1:{port}/stop"))
            pid = int((await terminal.wait_for(r"Generation 1 \(pid (\d+)\) is paused"))[1])
            await terminal.wait_for(PROMPT)
            after = len(terminal.text)
            os.kill(pid, signal.SIGKILL)  # killed from elsewhere, at its prompt
            with pytest.raises(httpx.HTTPError):
                await paused
            await terminal.wait_for(r"was killed by SIGKILL while serving", after)
            terminal.type("r\n")  # the keys are the supervisor's again
            await terminal.wait_for(r"Reloaded in \d+ ms \(generation \d+\): reload requested", after)
            assert (await http.get(f"http://127.0.0.1:{port}/")).text == "one forty-two"
        workers |= set(await wait_for_children(process.pid, 2))
        await stop_cli(terminal, process, workers, port)


async def test_a_background_job_does_not_take_the_shells_input_for_the_debugger(project: Path) -> None:
    workers: set[ProcStat] = set()
    async with terminal_session(project, workers) as terminal:
        shell = await start_shell(terminal, project)
        terminal.type(f"{sys.executable} -m asgireload main:app --port 0 &\n")
        port = int((await terminal.wait_for(SERVING.pattern))[1])
        (job,) = await wait_for_children(shell.pid, 1)
        workers |= await wait_for_children(job.pid, 2)
        async with client() as http:
            response = await http.get(f"http://127.0.0.1:{port}/stop")
        assert response.status_code == 500
        await terminal.wait_for(r"asgireload runs in the background, where the terminal is the shell's")
        assert "(Pdb)" not in terminal.text
        terminal.type("kill %1\n")
        await all_exit({job} | workers, "after kill %1")


async def test_without_a_terminal_breakpoint_fails_the_request_at_once(project: Path) -> None:
    async with (
        Reloader("main:app", app_dir=str(project), port=0) as server,
        httpx.AsyncClient(trust_env=False, timeout=20) as http,
    ):
        response = await http.get(f"{server.url}/stop")
        assert response.status_code == 500
        assert (await http.get(f"{server.url}/")).text == "one forty-two"  # the worker lives on
        output = server.output
    assert re.search(rf"breakpoint\(\) at \S+{BREAKPOINT}", output)
    assert "lends it no terminal" in output
    assert "PYTHONBREAKPOINT=0" in output


async def test_without_a_terminal_pdb_set_trace_gets_a_hint_that_applies_to_it(project: Path) -> None:
    """PYTHONBREAKPOINT=0 skips breakpoint() only: the hint for pdb.set_trace() does not offer it."""
    async with (
        Reloader("main:app", app_dir=str(project), port=0) as server,
        httpx.AsyncClient(trust_env=False, timeout=20) as http,
    ):
        response = await http.get(f"{server.url}/set-trace")
        assert response.status_code == 500
        output = server.output
    assert re.search(r"pdb\.set_trace\(\) at \S+main\.py:\d+", output)
    assert "PYTHONBREAKPOINT does not apply to pdb.set_trace()" in output
    assert "PYTHONBREAKPOINT=0" not in output


async def test_pythonbreakpoint_set_by_the_app_is_obeyed(project: Path) -> None:
    source = "import os\nos.environ['PYTHONBREAKPOINT'] = '0'\n" + app_source("one")
    (project / "main.py").write_text(source)
    async with (
        Reloader("main:app", app_dir=str(project), port=0) as server,
        httpx.AsyncClient(trust_env=False, timeout=20) as http,
    ):
        response = await http.get(f"{server.url}/stop")
        assert (response.status_code, response.text) == (200, "one forty-two")


def test_a_debugger_is_told_apart_from_coverage() -> None:
    """What the drain deadline (and issue 14's fork server) rely on, in this process."""
    previous = sys.gettrace()

    def tracer(frame: object, event: str, arg: object) -> None:
        return None

    try:
        sys.settrace(tracer)  # what pdb and other pure-Python debuggers do
        assert debugger_attached()
        assert tracer_active()
    finally:
        sys.settrace(previous)
    if previous is None and "debugpy" not in sys.modules and "pydevd" not in sys.modules:
        assert not debugger_attached()
