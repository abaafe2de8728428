"""The command line and its terminal: hang-ups, background jobs, closed or broken streams.

Each test runs the real CLI, in a real pseudo-terminal where the case is about terminals: the
process under test is the session leader with the terminal as its controlling terminal, as in
a terminal window, so the kernel sends it SIGHUP, SIGTTIN and SIGCONT as it would there. The
test holds the other side and reads what is printed. It synchronises on printed lines and on
process exits (pidfds), never on sleeps, and kills every process it started in `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import pytest

from .conftest import until
from .test_cli import (
    DEADLINE,
    SERVING,
    Cli,
    ProcStat,
    all_readable,
    app_source,
    asgireload_processes_in,
    client,
    free_port,
    kill_group,
    pidfds,
    port_is_free,
    proc_stat,
    still_running,
    workers_of,
    write_atomically,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# Run argv[1:] as the leader of a new session whose controlling terminal is stdin.
IN_A_TERMINAL = (
    "import fcntl, os, sys, termios; os.setsid(); fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)
ANSI = re.compile(rb"\x1b\[[0-9;]*[A-Za-z]")
PROMPT = "test-shell$ "


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASGIRELOAD")}
    return env | {"TERM": "dumb", "PS1": PROMPT, "HISTFILE": os.devnull, "PROMPT_COMMAND": ""}


class Terminal:
    """The controlling side of a pseudo-terminal, and the process running in it."""

    def __init__(self) -> None:
        self.controller, self.terminal = os.openpty()
        self.output = b""
        self.process: asyncio.subprocess.Process | None = None
        self._changed = asyncio.Condition()
        self._open = True

    async def start(self, argv: Sequence[str], cwd: Path) -> asyncio.subprocess.Process:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            IN_A_TERMINAL,
            *argv,
            stdin=self.terminal,
            stdout=self.terminal,
            stderr=self.terminal,
            cwd=cwd,
            env=environment(),
        )
        os.close(self.terminal)  # only the process holds the terminal now
        self.terminal = -1
        asyncio.get_running_loop().add_reader(self.controller, self._read)
        return self.process

    @property
    def text(self) -> str:
        return ANSI.sub(b"", self.output).decode(errors="replace").replace("\r", "")

    def _read(self) -> None:
        try:
            data = os.read(self.controller, 65536)
        except OSError:  # EIO: nothing holds the terminal any more
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.controller)
            self._open = False
        self.output += data
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, pattern: str, after: int = 0) -> re.Match[str]:
        """The first match of `pattern` in what was printed from offset `after` of `text` on."""
        regex = re.compile(pattern)
        try:
            async with asyncio.timeout(DEADLINE), self._changed:
                while not (match := regex.search(self.text, after)):
                    if not self._open:
                        pytest.fail(f"the terminal closed before {pattern!r}:\n{self.text}")
                    await self._changed.wait()
        except TimeoutError:
            pytest.fail(f"{pattern!r} was not printed within {DEADLINE} s:\n{self.text}")
        return match

    async def wait_for_bytes(self, sequence: bytes, after: int = 0) -> None:
        """Until `sequence` (an escape sequence, which `text` leaves out) is printed past byte `after`."""
        try:
            async with asyncio.timeout(DEADLINE), self._changed:
                while sequence not in self.output[after:]:
                    if not self._open:
                        pytest.fail(f"the terminal closed before {sequence!r}:\n{self.text}")
                    await self._changed.wait()
        except TimeoutError:
            pytest.fail(f"{sequence!r} was not printed within {DEADLINE} s:\n{self.text}")

    def type(self, keys: str) -> None:
        os.write(self.controller, keys.encode())

    def hang_up(self) -> None:
        """Close the terminal window: the kernel hangs up the terminal and sends SIGHUP."""
        if self.controller >= 0:
            if self._open:
                asyncio.get_running_loop().remove_reader(self.controller)
                self._open = False
            os.close(self.controller)
            self.controller = -1

    def close(self) -> None:
        self.hang_up()
        if self.terminal >= 0:
            os.close(self.terminal)
            self.terminal = -1


@contextlib.asynccontextmanager
async def terminal_session(folder: Path, *to_reap: set[ProcStat]) -> AsyncIterator[Terminal]:
    """A Terminal; on leaving, every process it ran, and those in `to_reap`, is killed and reaped."""
    terminal = Terminal()
    try:
        yield terminal
    finally:
        terminal.close()
        leftovers = set().union(*to_reap) | asgireload_processes_in(folder)
        for process in still_running(leftovers):
            kill_group(process.pid)
        if terminal.process is not None:
            if terminal.process.returncode is None:
                kill_group(terminal.process.pid)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DEADLINE):
                    await terminal.process.wait()
        print(f"the terminal showed:\n{terminal.text}")  # shown by pytest when the test fails


async def wait_for_children(pid: int, count: int) -> set[ProcStat]:
    """`count` workers of the supervisor `pid`; with the fork server's templates that forked them."""
    async with asyncio.timeout(DEADLINE):
        # /proc has no event to wait for: poll the condition, under the deadline.
        while len((found := workers_of(pid))[0]) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    return found[0] | found[1]


async def all_exit(processes: set[ProcStat], what: str) -> None:
    with pidfds(processes) as exits:
        try:
            async with asyncio.timeout(DEADLINE):
                await all_readable(exits)
        except TimeoutError:
            left = sorted(p.pid for p in still_running(processes))
            pytest.fail(f"{what}: processes {left} are still running after {DEADLINE} s")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "main.py").write_text(app_source("first"))
    return tmp_path


# ------------------------------------------------------------------------ closing the terminal


async def test_closing_the_terminal_stops_everything(project: Path) -> None:
    workers: set[ProcStat] = set()
    async with terminal_session(project, workers) as terminal:
        process = await terminal.start(
            [sys.executable, "-m", "asgireload", "main:app", "--port", "0"], project
        )
        port = int((await terminal.wait_for(SERVING.pattern))[1])
        workers |= await wait_for_children(process.pid, 2)  # the serving worker and the standby
        async with client() as http:
            assert (await http.get(f"http://127.0.0.1:{port}/")).text == "first"
        # so that "none left" below means it: the supervisor and its workers are found (a standby
        # may have been replaced meanwhile, by one forked from the project layer)
        found = {p.pid for p in asgireload_processes_in(project)}
        assert process.pid in found
        assert len(found - {process.pid}) >= 2, found
        terminal.hang_up()
        try:
            async with asyncio.timeout(DEADLINE):
                code = await process.wait()
        except TimeoutError:
            pytest.fail(f"asgireload outlived its terminal by {DEADLINE} s")
        assert code == 0
        await all_exit(workers, "after the hang-up")
        assert not asgireload_processes_in(project)
        assert port_is_free(port), f"port {port} is still bound after the hang-up"


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@pytest.mark.parametrize(
    "command",
    ["{python} -m asgireload main:app --port 0 2> log.txt", "{python} -m asgireload main:app --port 0 &"],
    ids=["foreground-job", "background-job"],
)
async def test_closing_the_terminal_of_a_shell_stops_its_jobs(project: Path, command: str) -> None:
    """The usual case: the shell gets the hang-up and passes SIGHUP on to its jobs."""
    workers: set[ProcStat] = set()
    async with terminal_session(project, workers) as terminal:
        shell = await start_shell(terminal, project)
        terminal.type(command.format(python=sys.executable) + "\n")
        log = project / "log.txt"
        if "log.txt" in command:
            await until(lambda: bool(read(log) and SERVING.search(read(log))), DEADLINE, "Started in log.txt")
            port = int(SERVING.findall(read(log))[0])
        else:
            port = int((await terminal.wait_for(SERVING.pattern))[1])
        (job,) = await wait_for_children(shell.pid, 1)
        workers |= await wait_for_children(job.pid, 2)
        terminal.hang_up()
        await all_exit({job} | workers, "after the terminal hung up")
        assert port_is_free(port), f"port {port} is still bound after the hang-up"
        if "log.txt" in command:
            assert "Shutting down (the terminal hung up)" in log.read_text()


# ------------------------------------------------------------------------ a background job


async def start_shell(terminal: Terminal, project: Path) -> asyncio.subprocess.Process:
    """An interactive bash in the terminal, with job control, at its first prompt."""
    shell = await terminal.start(["bash", "--norc", "--noprofile", "--noediting", "-i"], project)
    await terminal.wait_for(re.escape(PROMPT))
    return shell


async def start_in_the_background(terminal: Terminal, project: Path) -> tuple[ProcStat, int]:
    """In the interactive shell: `asgireload main:app --port 0 &`; returns the job and its port."""
    shell = await start_shell(terminal, project)
    terminal.type(f"{sys.executable} -m asgireload main:app --port 0 &\n")
    port = int((await terminal.wait_for(SERVING.pattern))[1])
    (job,) = await wait_for_children(shell.pid, 1)
    return job, port


async def the_shell_reads_a_line(terminal: Terminal) -> None:
    """Make the shell read the terminal, as anyone typing a command does; see its output."""
    after = len(terminal.text)
    terminal.type('echo "h""i"\n')  # the echo of the typed line shows h""i; only the output is hi
    await terminal.wait_for(r"(?m)^hi$", after)


async def test_a_background_job_is_not_stopped_by_the_shell_reading_the_terminal(project: Path) -> None:
    workers: set[ProcStat] = set()
    async with terminal_session(project, workers) as terminal:
        job, port = await start_in_the_background(terminal, project)
        workers |= await wait_for_children(job.pid, 2)
        await the_shell_reads_a_line(terminal)
        state = proc_stat(job.pid)
        assert state is not None
        assert state.state != "T", f"the background job was stopped:\n{terminal.text}"

        write_atomically(project / "main.py", app_source("second"))
        await terminal.wait_for(r"Reloaded in \d+ ms \(generation 2\): main\.py changed")
        async with client() as http:
            assert (await http.get(f"http://127.0.0.1:{port}/")).text == "second"

        workers |= set().union(*workers_of(job.pid))
        terminal.type("kill %1\n")
        await all_exit({job}, "after kill %1")
        await all_exit(workers, "after kill %1")
        assert not asgireload_processes_in(project)
        assert port_is_free(port), f"port {port} is still bound after kill %1"


async def test_fg_brings_back_the_reload_key(project: Path) -> None:
    workers: set[ProcStat] = set()
    async with terminal_session(project, workers) as terminal:
        job, port = await start_in_the_background(terminal, project)
        workers |= await wait_for_children(job.pid, 2)
        await the_shell_reads_a_line(terminal)
        after = len(terminal.text)
        terminal.type("fg\n")
        # bash names the job it brings back; its prompt may come first on that line (typed ahead)
        await terminal.wait_for(
            r"(?m)^(?:test-shell\$ )?\S*python\S* -m asgireload main:app --port 0\s*$", after
        )
        terminal.type("r\n")  # read once the job is in the foreground again (on SIGCONT)
        await terminal.wait_for(
            r"Reloaded in \d+ ms \(generation 2\): reload requested from the terminal", after
        )
        workers |= set().union(*workers_of(job.pid))
        terminal.type("\x03")  # CTRL+C, to the foreground job
        await terminal.wait_for(r"Shutting down \(CTRL\+C\)", after)
        await all_exit({job}, "after CTRL+C")
        await all_exit(workers, "after CTRL+C")
        assert port_is_free(port), f"port {port} is still bound after CTRL+C"


# ------------------------------------------------------------------------ closed or broken streams


@contextlib.asynccontextmanager
async def run_in_bash(folder: Path, redirections: str, *args: str) -> AsyncIterator[Cli]:
    """`asgireload ARGS REDIRECTIONS` by a shell (which applies them), read like test_cli's Cli."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASGIRELOAD")}
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        f'exec "$0" -m asgireload "$@" {redirections}',
        sys.executable,
        *args,
        cwd=folder,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    cli = Cli(process, folder)
    try:
        yield cli
    finally:
        await cli.reap()
        print(cli.transcript())


PRINTING_APP = "print('imported main', flush=True)\n" + app_source("first")


@pytest.mark.parametrize("closed", [">&-", "2>&-", ">&- 2>&-"], ids=["stdout", "stderr", "both"])
async def test_a_closed_stream_is_not_a_crash_loop(tmp_path: Path, closed: str) -> None:
    (tmp_path / "main.py").write_text(PRINTING_APP)
    port = free_port()
    async with run_in_bash(tmp_path, closed, "main:app", "--port", str(port)) as cli:
        cli.port = port
        if "2>&-" not in closed:
            await cli.started()
            await cli.wait_for_line(r"stdout is closed, so the app's output and the access log are dropped")
        elif ">&-" not in closed:
            await cli.wait_for_line("imported main", stream="stdout")
        async with client() as http:
            async with asyncio.timeout(DEADLINE):
                while True:  # with stderr closed nothing says "started": ask until it answers
                    try:
                        response = await http.get(f"http://127.0.0.1:{port}/")
                        break
                    except httpx.TransportError:
                        await asyncio.sleep(0.05)
            assert (response.status_code, response.text) == (200, "first"), cli.transcript()
        cli.workers |= await cli.collect_workers()
        cli.send(signal.SIGINT)
        assert await cli.exited() == 0, cli.transcript()
        cli.assert_nothing_left()
        assert "Traceback" not in cli.transcript()
        assert "Restarting" not in cli.transcript()


async def test_a_broken_stdout_is_one_line_and_a_failed_exit(project: Path) -> None:
    reader, writer = os.pipe()
    os.close(reader)  # nobody will ever read what is written
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASGIRELOAD")}
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "asgireload",
            "main:app",
            "--port",
            str(port),
            cwd=project,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=writer,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    finally:
        os.close(writer)
    try:
        async with asyncio.timeout(DEADLINE):
            _, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            kill_group(process.pid)
            await process.wait()
    lines = stderr.decode().splitlines()
    assert process.returncode == 1, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("asgireload: error: stdout is a pipe whose reader has exited"), lines
    assert port_is_free(port)
