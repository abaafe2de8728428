"""Single keys at the terminal (r, o, c, q, h), in a real pseudo-terminal, as in test_terminal.py.

The terminal's mode is read from the controlling side (on Linux, tcgetattr on a pseudo-terminal's
controller gives its terminal's settings): cbreak while asgireload reads keys, the original
(canonical, echoing) mode once it has stopped or given the terminal away.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
import termios
from collections.abc import Sequence
from pathlib import Path

import pytest

from .conftest import until
from .test_cli import (
    SERVING,
    ProcStat,
    app_source,
    client,
    kill_group,
    port_is_free,
    proc_stat,
    still_running,
    workers_of,
)
from .test_debugging import PROMPT as PDB_PROMPT
from .test_debugging import app_source as debugging_app
from .test_terminal import (
    PROMPT,
    Terminal,
    all_exit,
    run_in_bash,
    start_shell,
    terminal_session,
    wait_for_children,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

HINT = r"Press h for help"
FROM_KEYS = "reload requested from the terminal"


def reloaded(generation: int) -> str:
    return rf"Reloaded in \d+ ms \(generation {generation}\): {FROM_KEYS}"


def in_cbreak(terminal: Terminal) -> bool:
    """Keys are read one at a time, not echoed, and CTRL+C is still a signal."""
    lflag = termios.tcgetattr(terminal.controller)[3]
    return not lflag & termios.ICANON and not lflag & termios.ECHO and bool(lflag & termios.ISIG)


def in_cooked_mode(terminal: Terminal) -> bool:
    lflag = termios.tcgetattr(terminal.controller)[3]
    return bool(lflag & termios.ICANON and lflag & termios.ECHO and lflag & termios.ISIG)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "main.py").write_text(app_source("first"))
    return tmp_path


async def start(
    terminal: Terminal, project: Path, *options: str, before: Sequence[str] = ()
) -> tuple[asyncio.subprocess.Process, int]:
    """`asgireload main:app --port 0 OPTIONS` in the terminal (after `before`, e.g. `env X=1`)."""
    argv = [*before, sys.executable, "-m", "asgireload", "main:app", "--port", "0", *options]
    process = await terminal.start(argv, project)
    return process, int((await terminal.wait_for(SERVING.pattern))[1])


async def exits_cleanly(process: asyncio.subprocess.Process, workers: set[ProcStat], port: int) -> None:
    await all_exit(workers, "after quitting")
    async with asyncio.timeout(20):
        assert await process.wait() == 0
    assert port_is_free(port)


async def test_each_key_acts_at_once_and_q_quits_restoring_the_terminal(project: Path) -> None:
    workers: set[ProcStat] = set()
    async with terminal_session(project, workers) as terminal:
        process, port = await start(terminal, project)
        await terminal.wait_for(HINT)
        workers |= await wait_for_children(process.pid, 2)
        assert in_cbreak(terminal)

        after = len(terminal.text)
        terminal.type("h")
        help_line = rf"Keys: r reload now · o open http://127\.0\.0\.1:{port} in the browser"
        await terminal.wait_for(help_line, after)

        terminal.type("r")  # no Enter
        await terminal.wait_for(reloaded(2), after)

        raw = len(terminal.output)
        terminal.type("c")
        await terminal.wait_for_bytes(b"\x1b[H\x1b[2J", raw)

        after = len(terminal.text)
        terminal.type("R\n")  # `r` + Enter, as before single keys, still reloads (once)
        await terminal.wait_for(reloaded(3), after)

        workers |= set().union(*workers_of(process.pid))
        after = len(terminal.text)
        terminal.type("q")
        await terminal.wait_for(r"Shutting down \(q pressed\)", after)
        await exits_cleanly(process, workers, port)
        assert in_cooked_mode(terminal)
        assert "generation 4" not in terminal.text


async def test_a_paste_acts_once_or_not_at_all(project: Path) -> None:
    workers: set[ProcStat] = set()
    async with terminal_session(project, workers) as terminal:
        process, port = await start(terminal, project)
        await terminal.wait_for(HINT)
        workers |= await wait_for_children(process.pid, 2)

        after = len(terminal.text)
        terminal.type("rrrrrrrr")  # the same key many times in one read: one reload
        await terminal.wait_for(reloaded(2), after)
        # text pasted into the wrong window (it holds q, o, c, h and r) does nothing but say how keys work
        terminal.type("quick brown fox, help!\n")
        await terminal.wait_for(r"Keys are single letters, one at a time: press h for help\.", after)
        terminal.type("r")
        await terminal.wait_for(reloaded(3), after)
        terminal.type("x")  # an unknown key, after a key that acted: said again
        await terminal.wait_for(r"(?s)Keys are single letters.*Keys are single letters", after)
        assert "generation 4" not in terminal.text
        assert "Shutting down" not in terminal.text
        assert "browser" not in terminal.text[after:]
        assert "Keys: r reload now" not in terminal.text
        workers |= set().union(*workers_of(process.pid))
        terminal.type("\x03")  # CTRL+C is still a signal in cbreak mode
        await terminal.wait_for(r"Shutting down \(CTRL\+C\)", after)
        await exits_cleanly(process, workers, port)
        assert in_cooked_mode(terminal)


async def test_a_key_during_start_up_is_acted_on_once_the_server_runs(project: Path) -> None:
    workers: set[ProcStat] = set()
    async with terminal_session(project, workers) as terminal:
        argv = [sys.executable, "-m", "asgireload", "main:app", "--port", "0"]
        process = await terminal.start(argv, project)
        await terminal.wait_for(HINT)  # keys are read: the first generation may still be loading
        terminal.type("r")
        # as an edit during start-up: the first generation is superseded, the second serves
        await terminal.wait_for(r"Reloaded in \d+ ms \(generation 2\)")
        after = len(terminal.text)
        terminal.type("h")
        port = int((await terminal.wait_for(r"o open http://127\.0\.0\.1:(\d+) in the browser", after))[1])
        workers |= await wait_for_children(process.pid, 2)
        async with client() as http:
            assert (await http.get(f"http://127.0.0.1:{port}/")).text == "first"
        terminal.type("q")
        await exits_cleanly(process, workers, port)


async def test_sigterm_restores_the_terminal(project: Path) -> None:
    workers: set[ProcStat] = set()
    async with terminal_session(project, workers) as terminal:
        process, port = await start(terminal, project)
        await terminal.wait_for(HINT)
        workers |= await wait_for_children(process.pid, 2)
        assert in_cbreak(terminal)
        process.send_signal(signal.SIGTERM)
        await exits_cleanly(process, workers, port)
        assert in_cooked_mode(terminal)


def browser_script(folder: Path, succeeds: bool) -> Path:
    """A BROWSER command: it writes the URL it was given to opened.txt, or fails."""
    script = folder / "browser"
    body = "open(sys.argv[0] + '.txt', 'w').write(sys.argv[1])" if succeeds else "sys.exit(3)"
    script.write_text(f"#!{sys.executable}\nimport sys\n{body}\n")
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("succeeds", [True, False], ids=["browser", "no-browser"])
async def test_o_opens_the_url_or_says_it(project: Path, succeeds: bool) -> None:
    workers: set[ProcStat] = set()
    bin_folder = project / "bin"
    bin_folder.mkdir()
    script = browser_script(bin_folder, succeeds)
    # no other browser may be found: no display, and a PATH with none in it
    env = ["env", "-u", "DISPLAY", "-u", "WAYLAND_DISPLAY", f"PATH={bin_folder}", f"BROWSER={script}"]
    async with terminal_session(project, workers) as terminal:
        process, port = await start(terminal, project, before=env)
        await terminal.wait_for(HINT)
        workers |= await wait_for_children(process.pid, 2)
        url = f"http://127.0.0.1:{port}"
        after = len(terminal.text)
        terminal.type("o")
        if succeeds:
            await terminal.wait_for(rf"Opened {re.escape(url)} in the browser\.", after)
            assert (bin_folder / "browser.txt").read_text() == url
        else:
            said = rf"No browser could be opened here; the app is at {re.escape(url)}\n"
            await terminal.wait_for(said, after)
        terminal.type("q")
        await exits_cleanly(process, workers, port)


async def test_ctrl_z_and_fg_bring_the_single_keys_back(project: Path) -> None:
    workers: set[ProcStat] = set()
    async with terminal_session(project, workers) as terminal:
        shell = await start_shell(terminal, project)
        terminal.type(f"{sys.executable} -m asgireload main:app --port 0\n")
        port = int((await terminal.wait_for(SERVING.pattern))[1])
        (job,) = await wait_for_children(shell.pid, 1)
        workers |= await wait_for_children(job.pid, 2)
        after = len(terminal.text)
        terminal.type("\x1a")  # CTRL+Z
        await terminal.wait_for(r"Stopped", after)
        await terminal.wait_for(re.escape(PROMPT), after)
        assert in_cooked_mode(terminal)  # the shell reads lines again
        after = len(terminal.text)
        terminal.type("fg\n")
        await terminal.wait_for(r"-m asgireload main:app --port 0", after)
        terminal.type("r")  # alone: cbreak is back after fg
        await terminal.wait_for(reloaded(2), after)
        workers |= set().union(*workers_of(job.pid))
        terminal.type("q")
        await terminal.wait_for(re.escape(PROMPT), after)
        await all_exit({job} | workers, "after q")
        assert port_is_free(port)
        assert in_cooked_mode(terminal)


async def test_at_a_breakpoint_keys_are_the_debuggers(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text(debugging_app("one"))
    workers: set[ProcStat] = set()
    async with terminal_session(tmp_path, workers) as terminal:
        process, port = await start(terminal, tmp_path)
        workers |= await wait_for_children(process.pid, 2)
        async with client() as http:
            paused = asyncio.ensure_future(http.get(f"http://127.0.0.1:{port}/stop"))
            prompt = (await terminal.wait_for(PDB_PROMPT)).start()
            assert in_cooked_mode(terminal)  # pdb edits its lines itself, with echo
            after = prompt
            terminal.type("o")  # a key of ours, but at the prompt a letter of pdb's line
            await terminal.wait_for(r"\(Pdb\) o", after)  # echoed: the terminal's own mode
            terminal.type("ct(52)\n")
            await terminal.wait_for(r"\(Pdb\) oct\(52\)\n'0o64'\n", after)
            terminal.type("c\n")
            assert (await paused).text == "one forty-two"
        after = len(terminal.text)
        terminal.type("r")  # ours again, and single again
        await terminal.wait_for(reloaded(2), after)
        assert "Shutting down" not in terminal.text
        assert "Opened" not in terminal.text
        workers |= set().union(*workers_of(process.pid))
        terminal.type("q")
        await exits_cleanly(process, workers, port)


@pytest.mark.parametrize("redirection", ["< keys.txt", "<&-"], ids=["from-a-file", "closed"])
async def test_no_keys_without_a_terminal(project: Path, redirection: str) -> None:
    (project / "keys.txt").write_text("q\nr\n")
    async with run_in_bash(project, redirection, "main:app", "--port", "0") as cli:
        await cli.started()
        cli.workers |= await cli.collect_workers()
        assert cli.port is not None
        async with client() as http:
            assert (await http.get(f"http://127.0.0.1:{cli.port}/")).text == "first"
        cli.send(signal.SIGINT)
        assert await cli.exited() == 0, cli.transcript()
        cli.assert_nothing_left()
        transcript = cli.transcript()
        assert "Press h" not in transcript
        assert "q pressed" not in transcript
        assert "Reloaded" not in transcript
        assert "Traceback" not in transcript


# ------------------------------------------------------------------------ in a tmux pane


class Tmux:
    """A tmux server of this test's own (its own socket), with one pane running a command."""

    def __init__(self, folder: Path) -> None:
        self.socket = str(folder / "tmux.sock")
        self.folder = folder

    def run(self, *args: str) -> str:
        import subprocess

        result = subprocess.run(
            ["tmux", "-S", self.socket, "-f", os.devnull, *args], capture_output=True, text=True, timeout=10
        )
        return result.stdout

    def pane(self) -> str:
        return self.run("capture-pane", "-p", "-S", "-200")

    async def wait_for(self, pattern: str) -> re.Match[str]:
        await until(lambda: re.search(pattern, self.pane()) is not None, 20, f"{pattern!r} in the pane")
        match = re.search(pattern, self.pane())
        assert match is not None
        return match


async def test_keys_in_a_tmux_pane(project: Path) -> None:
    if shutil.which("tmux") is None:  # CI installs it (.ci/run, scripts/test-python.sh): fail there
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)("needs tmux")
    tmux = Tmux(project)
    env = " ".join(f"-u {name}" for name in os.environ if name.startswith("ASGIRELOAD"))
    command = f"env {env} {sys.executable} -m asgireload main:app --port 0"
    tmux.run("new-session", "-d", "-x", "200", "-y", "50", "-c", str(project), command)
    workers: set[ProcStat] = set()
    try:
        port = int((await tmux.wait_for(SERVING.pattern))[1])
        await tmux.wait_for(HINT)
        pid = int(tmux.run("display-message", "-p", "#{pane_pid}").strip())
        supervisor = proc_stat(pid)
        assert supervisor is not None
        workers |= {supervisor} | await wait_for_children(pid, 2)
        tmux.run("send-keys", "r")
        await tmux.wait_for(reloaded(2))
        workers |= set().union(*workers_of(pid))
        tmux.run("send-keys", "q")
        await all_exit(workers, "after q in the tmux pane")
        assert port_is_free(port)
    finally:
        tmux.run("kill-server")
        for process in still_running(workers):
            kill_group(process.pid)
