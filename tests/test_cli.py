"""End-to-end tests of the `asgireload` command line.

Each test starts the real CLI as a subprocess (in its own session, cwd = the test's folder,
`--port 0` on 127.0.0.1 unless a case needs otherwise), reads its stderr and stdout line by
line as they come, and synchronises on the log lines: the "serving on http://..." line gives
the port, a "(generation N)" line marks a reload. Nothing waits by sleeping: every wait is for
a line, an exit or a condition, under a deadline. Every process a test starts (the supervisor
and the workers it spawns, which lead sessions of their own) is killed in `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import httpx
import pytest

from asgireload.__about__ import __version__
from asgireload.config import cli_flag, option_fields

DEADLINE = 20.0  # seconds for anything that should take well under one (a loaded 2-core machine)
HANGUP_DEADLINE = 1.0  # workers exit this soon after their supervisor is SIGKILLed
FORCED_EXIT = 3.0  # a second CTRL+C stops the CLI this soon
SERVING = re.compile(r"Started main:app in \d+ ms, serving on http://127\.0\.0\.1:(\d+) ")
SLOW_MARKER = "SLOW-REQUEST-RECEIVED"

APP_SOURCE = """\
import asyncio
import sys

BODY = {body!r}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({{"type": "lifespan.startup.complete"}})
            elif message["type"] == "lifespan.shutdown":
                await send({{"type": "lifespan.shutdown.complete"}})
                return
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        print("{marker}", file=sys.stderr, flush=True)
        await asyncio.sleep(30)
    headers = [(b"content-type", b"text/plain")]
    await send({{"type": "http.response.start", "status": 200, "headers": headers}})
    await send({{"type": "http.response.body", "body": BODY.encode()}})
"""


def app_source(body: str) -> str:
    return APP_SOURCE.format(body=body, marker=SLOW_MARKER)


def write_atomically(path: Path, text: str) -> None:
    """Write the way editors save: a temporary file renamed over the old one."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


# ------------------------------------------------------------------------ processes via /proc


@dataclasses.dataclass(frozen=True)
class ProcStat:
    pid: int
    state: str
    ppid: int
    pgrp: int
    session: int
    starttime: int  # with the pid, identifies a process even if the pid is reused later

    @property
    def running(self) -> bool:
        return self.state not in ("Z", "X")  # a zombie has exited: it only waits to be reaped


def proc_stat(pid: int) -> ProcStat | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return ProcStat(pid, fields[0], int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]))


def all_processes() -> Iterator[ProcStat]:
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := proc_stat(int(name))) is not None:
            yield stat


def children_of(pid: int) -> set[ProcStat]:
    return {p for p in all_processes() if p.ppid == pid and p.running}


def workers_of(pid: int) -> tuple[set[ProcStat], set[ProcStat]]:
    """The supervisor's workers (spawned, or forked by a fork server template), and its templates."""
    children = children_of(pid)
    templates = set()
    for child in children:
        with contextlib.suppress(OSError):
            if b"asgireload._worker.template" in Path(f"/proc/{child.pid}/cmdline").read_bytes():
                templates.add(child)
    forked = {worker for template in templates for worker in children_of(template.pid)}
    return (children - templates) | forked, templates


def still_running(processes: set[ProcStat]) -> set[ProcStat]:
    """Those of `processes` that have not exited (same pid and start time, not a zombie)."""
    alive = set()
    for process in processes:
        now = proc_stat(process.pid)
        if now is not None and now.starttime == process.starttime and now.running:
            alive.add(process)
    return alive


def session_members(sid: int) -> set[ProcStat]:
    """Running processes in the session or process group led by `sid`."""
    return {p for p in all_processes() if p.running and sid in (p.session, p.pgrp)}


def asgireload_processes_in(folder: Path) -> set[ProcStat]:
    """Running asgireload processes (supervisors and workers) started in `folder`, wherever they
    were reparented: their working folder is the test's (workers inherit the supervisor's)."""
    wanted = os.path.realpath(folder)
    found = set()
    for process in all_processes():
        try:
            cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
            cwd = os.readlink(f"/proc/{process.pid}/cwd")
        except OSError:
            continue
        if process.running and b"asgireload" in cmdline and os.path.realpath(cwd) == wanted:
            found.add(process)
    return found


@contextlib.contextmanager
def pidfds(processes: Iterable[ProcStat]) -> Iterator[list[int]]:
    """A pidfd for each running process (readable once it exits); closed on leaving."""
    fds: list[int] = []
    try:
        for process in processes:
            try:
                fd = os.pidfd_open(process.pid)
            except ProcessLookupError:
                continue
            if still_running({process}):  # not gone already, and not a reused pid
                fds.append(fd)
            else:
                os.close(fd)
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


async def all_readable(fds: Iterable[int]) -> None:
    loop = asyncio.get_running_loop()
    pending = set(fds)
    done = asyncio.Event()

    def readable(fd: int) -> None:
        loop.remove_reader(fd)
        pending.discard(fd)
        if not pending:
            done.set()

    for fd in list(pending):
        loop.add_reader(fd, readable, fd)
    try:
        if pending:
            await done.wait()
    finally:
        for fd in pending:
            loop.remove_reader(fd)


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------------ sockets


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """True if nothing listens on 127.0.0.1:port (SO_REUSEADDR, as servers do: TIME_WAIT is fine)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
    return True


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=DEADLINE, trust_env=False)


# ------------------------------------------------------------------------ the CLI under test


class Cli:
    """A running `python -m asgireload ...`, with everything it has printed so far."""

    def __init__(self, process: asyncio.subprocess.Process, folder: Path) -> None:
        self.process = process
        self.folder = folder
        self.lines: list[tuple[str, str]] = []  # (stream, line) in arrival order
        self.port: int | None = None
        self.workers: set[ProcStat] = set()
        self._changed = asyncio.Condition()
        assert process.stdout is not None
        assert process.stderr is not None
        self._readers = [
            asyncio.create_task(self._read("stderr", process.stderr)),
            asyncio.create_task(self._read("stdout", process.stdout)),
        ]

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def stderr(self) -> list[str]:
        return [line for stream, line in self.lines if stream == "stderr"]

    @property
    def stdout(self) -> list[str]:
        return [line for stream, line in self.lines if stream == "stdout"]

    def transcript(self) -> str:
        shown = "\n".join(f"  [{stream}] {line}" for stream, line in self.lines) or "  (nothing)"
        return f"asgireload (pid {self.pid}, exit code {self.process.returncode}) printed:\n{shown}"

    async def _read(self, name: str, stream: asyncio.StreamReader) -> None:
        try:
            while raw := await stream.readline():
                self.lines.append((name, raw.decode(errors="replace").rstrip("\n")))
                async with self._changed:
                    self._changed.notify_all()
        finally:
            async with self._changed:
                self._changed.notify_all()

    @property
    def _at_eof(self) -> bool:
        return all(reader.done() for reader in self._readers)

    async def wait_for_line(
        self, pattern: str | re.Pattern[str], stream: str | None = "stderr"
    ) -> re.Match[str]:
        """The first line printed (to `stream`, or either) that matches; fails if none comes in time."""
        regex = re.compile(pattern)
        index = 0
        try:
            async with asyncio.timeout(DEADLINE), self._changed:
                while True:
                    while index < len(self.lines):
                        name, line = self.lines[index]
                        if (stream is None or name == stream) and (match := regex.search(line)):
                            return match
                        index += 1
                    if self._at_eof:
                        pytest.fail(f"asgireload exited before {regex.pattern!r}\n{self.transcript()}")
                    await self._changed.wait()
        except TimeoutError:
            pytest.fail(f"no line matching {regex.pattern!r} within {DEADLINE} s\n{self.transcript()}")

    async def started(self) -> int:
        """Wait for the "serving on" line; return the port."""
        match = await self.wait_for_line(SERVING)
        self.port = int(match[1])
        return self.port

    async def collect_workers(self, count: int = 2) -> set[ProcStat]:
        """Wait until the supervisor has `count` workers (the serving worker and the standby): its
        children, or on Linux the children of its fork server's template, which comes with them."""
        async with asyncio.timeout(DEADLINE):
            # /proc has no event to wait for: poll the condition, under the deadline.
            while len((found := workers_of(self.pid))[0]) < count:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        workers, templates = found
        self.workers |= workers | templates
        return workers

    async def exited(self, within: float = DEADLINE) -> int:
        """Wait for the exit and for the end of its output (every process holding the pipes gone)."""
        try:
            async with asyncio.timeout(within):
                code = await self.process.wait()
                await asyncio.gather(*self._readers)
        except TimeoutError:
            pytest.fail(f"asgireload did not exit and close its output in {within} s\n{self.transcript()}")
        return code

    def send(self, signum: int) -> None:
        self.process.send_signal(signum)

    def assert_nothing_left(self) -> None:
        assert not session_members(self.pid), self.transcript()
        assert not still_running(self.workers), self.transcript()
        assert not asgireload_processes_in(self.folder), self.transcript()
        if self.port is not None:
            assert port_is_free(self.port), f"port {self.port} is still bound\n{self.transcript()}"

    async def reap(self) -> None:
        """Kill whatever is left (the supervisor's group and every worker of this folder)."""
        if self.process.returncode is None:
            kill_group(self.pid)
        for worker in still_running(self.workers) | asgireload_processes_in(self.folder):
            kill_group(worker.pid)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DEADLINE):
                await self.process.wait()
                await asyncio.gather(*self._readers, return_exceptions=True)
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


@contextlib.asynccontextmanager
async def run_cli(
    folder: Path,
    *args: str,
    pass_fds: tuple[int, ...] = (),
    stdin: int = asyncio.subprocess.DEVNULL,
    command: tuple[str, ...] = ("-m", "asgireload"),
    env: dict[str, str] | None = None,
) -> AsyncIterator[Cli]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASGIRELOAD", "UVICORN_"))} | (env or {})
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *command,
        *args,
        cwd=folder,
        env=env,
        stdin=stdin,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        pass_fds=pass_fds,
    )
    cli = Cli(process, folder)
    try:
        yield cli
    finally:
        await cli.reap()
        print(cli.transcript())  # shown by pytest when the test fails


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "main.py").write_text(app_source("first"))
    return tmp_path


# ------------------------------------------------------------------------ 1. bad input


async def fails_with_one_line(cli: Cli, *expected: str) -> str:
    """The CLI exits non-zero, printing one line (naming `expected`) and no traceback."""
    code = await cli.exited()
    assert code != 0, cli.transcript()
    everything = "\n".join(line for _, line in cli.lines)
    assert "Traceback" not in everything, cli.transcript()
    lines = [line for line in cli.stderr if line.strip()]
    assert len(lines) == 1, f"expected exactly one line on stderr\n{cli.transcript()}"
    for text in expected:
        assert text in lines[0], f"{text!r} is not in the message\n{cli.transcript()}"
    cli.assert_nothing_left()
    return lines[0]


BAD_INPUT = [
    pytest.param(["main"], ["'main'"], id="app-without-colon"),
    pytest.param(["main:"], ["'main:'"], id="app-without-attribute"),
    pytest.param(["1abc:app"], ["1abc:app"], id="app-module-not-an-identifier"),
    pytest.param(["main:app:x"], ["main:app:x"], id="app-with-two-colons"),
    pytest.param(["nomod:app", "--port", "{port}"], ["nomod", "looked in {tmp}"], id="module-not-found"),
    pytest.param(["main:nope", "--port", "{port}"], ["nope"], id="attribute-missing"),
    pytest.param(["main:app", "--port", "{port}", "--app-dir", "{tmp}/no"], ["{tmp}/no"], id="app-dir"),
    pytest.param(["main:app", "--port", "{port}", "--reload-dir", "{tmp}/no"], ["{tmp}/no"], id="reload-dir"),
    pytest.param(["main:app", "--uds", "{tmp}/no/app.sock"], ["{tmp}/no"], id="uds-folder-missing"),
    pytest.param(["main:app", "--fd", "987"], ["987"], id="fd-not-open"),
    pytest.param(["main:app", "--drain-timeout", "-1"], ["--drain-timeout", "-1"], id="drain-negative"),
    pytest.param(["main:app", "--port", "abc"], ["--port", "abc"], id="port-not-a-number"),
    pytest.param(["main:app", "--bogus"], ["--bogus"], id="unknown-option"),
    pytest.param(["main:app", "--port", "{port}", "--env-file", "no.env"], ["no.env"], id="env-file-missing"),
]


@pytest.mark.parametrize(("argv", "expected"), BAD_INPUT)
async def test_bad_input_is_one_line_and_a_failed_exit(
    project: Path, argv: list[str], expected: list[str]
) -> None:
    port = free_port()
    values = {"port": port, "tmp": str(project)}
    async with run_cli(project, *(arg.format(**values) for arg in argv)) as cli:
        await fails_with_one_line(cli, *(text.format(**values) for text in expected))
    if "{port}" in argv:
        assert port_is_free(port), f"port {port} was left bound"


async def test_attribute_that_is_not_an_app(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("app = 42\n")
    port = free_port()
    async with run_cli(tmp_path, "main:app", "--port", str(port)) as cli:
        await fails_with_one_line(cli, "main:app")
    assert port_is_free(port), f"port {port} was left bound"


async def test_port_in_use(project: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with run_cli(project, "main:app", "--port", str(port)) as cli:
            line = await fails_with_one_line(cli, str(port), "in use", "--port")
        assert line.startswith("asgireload: error:")


async def test_fd_that_is_not_a_socket(project: Path) -> None:
    fd = os.open(project / "main.py", os.O_RDONLY)
    try:
        async with run_cli(project, "main:app", "--fd", str(fd), pass_fds=(fd,)) as cli:
            await fails_with_one_line(cli, f"--fd {fd}", "not a socket")
    finally:
        os.close(fd)


# ------------------------------------------------------------------------ 2. --version, --help


async def test_version(tmp_path: Path) -> None:
    async with run_cli(tmp_path, "--version") as cli:
        assert await cli.exited() == 0, cli.transcript()
    assert cli.stdout == [f"asgireload {__version__}"], cli.transcript()
    assert not [line for line in cli.stderr if line.strip()], cli.transcript()


async def test_help_lists_every_option(tmp_path: Path) -> None:
    async with run_cli(tmp_path, "--help") as cli:
        assert await cli.exited() == 0, cli.transcript()
    text = "\n".join(cli.stdout)
    fields = [field for field in option_fields() if field.metadata.get("cli", True)]
    assert fields
    for field in fields:
        flag = cli_flag(field)
        assert re.search(rf"{re.escape(flag)}\b(?!-)", text), f"{flag} is not in --help\n{text}"
        if field.metadata.get("negatable"):
            assert f"--no-{flag[2:]}" in text, f"--no-{flag[2:]} is not in --help\n{text}"
    epilog = " ".join(text.split())
    assert "r reloads (as SIGUSR1 does)" in epilog, text
    assert "q quits, h lists them" in epilog, text
    assert "closing the terminal (SIGHUP) stops it" in epilog, text


# ------------------------------------------------------------------------ 3-5. stopping


@pytest.mark.parametrize(
    ("signum", "name"), [(signal.SIGINT, "CTRL+C"), (signal.SIGTERM, "SIGTERM")], ids=["SIGINT", "SIGTERM"]
)
async def test_signal_stops_everything(project: Path, signum: int, name: str) -> None:
    drain_timeout = 10.0
    async with run_cli(project, "main:app", "--port", "0", "--drain-timeout", str(drain_timeout)) as cli:
        port = await cli.started()
        await cli.collect_workers()
        async with client() as http:
            response = await http.get(f"http://127.0.0.1:{port}/")
            assert (response.status_code, response.text) == (200, "first")
            cli.send(signum)  # while the client's keep-alive connection is still open
            await cli.wait_for_line(rf"Shutting down \({re.escape(name)}\)")
            assert await cli.exited(within=drain_timeout) == 0, cli.transcript()
        cli.assert_nothing_left()
        assert "Traceback" not in cli.transcript()
        assert "did not stop" not in cli.transcript()  # the standby is killed on purpose, not late


async def test_second_ctrl_c_stops_at_once(project: Path) -> None:
    async with run_cli(project, "main:app", "--port", "0", "--drain-timeout", "30") as cli:
        port = await cli.started()
        await cli.collect_workers()
        async with client() as http:
            slow = asyncio.create_task(http.get(f"http://127.0.0.1:{port}/slow"))
            try:
                await cli.wait_for_line(SLOW_MARKER, stream=None)
                cli.send(signal.SIGINT)
                await cli.wait_for_line(r"Shutting down \(CTRL\+C\)")
                cli.send(signal.SIGINT)
                code = await cli.exited(within=FORCED_EXIT)
                with pytest.raises(httpx.TransportError):
                    async with asyncio.timeout(DEADLINE):
                        await slow
            finally:
                slow.cancel()
                await asyncio.gather(slow, return_exceptions=True)
        assert code >= 0, f"killed by signal {-code}\n{cli.transcript()}"
        cli.assert_nothing_left()
        assert "Traceback" not in cli.transcript()


async def test_sigkill_of_the_supervisor_takes_the_workers_down(project: Path) -> None:
    async with run_cli(project, "main:app", "--port", "0") as cli:
        port = await cli.started()
        workers = await cli.collect_workers()
        with pidfds(workers) as exits:
            os.kill(cli.pid, signal.SIGKILL)
            try:
                async with asyncio.timeout(HANGUP_DEADLINE):
                    await all_readable(exits)
            except TimeoutError:
                left = sorted(p.pid for p in still_running(workers))
                pytest.fail(f"workers {left} outlived their supervisor by {HANGUP_DEADLINE} s")
        assert await cli.exited() == -signal.SIGKILL
        assert port_is_free(port), f"port {port} is still bound\n{cli.transcript()}"
        assert not asgireload_processes_in(project), cli.transcript()


async def test_sigkill_of_the_supervisor_takes_the_apps_own_children_down(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text(
        "import subprocess, sys\n"
        "helper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"print('helper pid', helper.pid, flush=True)\n{app_source('first')}"
    )
    async with run_cli(tmp_path, "main:app", "--port", "0") as cli:
        await cli.started()
        match = await cli.wait_for_line(r"helper pid (\d+)", stream="stdout")
        helper = proc_stat(int(match[1]))
        assert helper is not None
        with pidfds([helper]) as exits:
            os.kill(cli.pid, signal.SIGKILL)
            try:
                async with asyncio.timeout(HANGUP_DEADLINE):
                    await all_readable(exits)
            except TimeoutError:
                pytest.fail(f"the app's child {helper.pid} outlived the supervisor by {HANGUP_DEADLINE} s")


# ------------------------------------------------------------------------ 6-7. reloading


async def test_sigusr1_reloads(project: Path) -> None:
    async with run_cli(project, "main:app", "--port", "0") as cli:
        port = await cli.started()
        async with client() as http:
            assert (await http.get(f"http://127.0.0.1:{port}/")).status_code == 200
            cli.send(signal.SIGUSR1)
            match = await cli.wait_for_line(r"Reloaded in \d+ ms \(generation 2\): (.*)$")
            assert match[1] == "SIGUSR1; re-ran 1 of 1 project modules", cli.transcript()
            response = await http.get(f"http://127.0.0.1:{port}/")  # on the kept-alive connection
            assert (response.status_code, response.text) == (200, "first"), cli.transcript()
        async with client() as http:
            response = await http.get(f"http://127.0.0.1:{port}/")  # on a new connection
            assert (response.status_code, response.text) == (200, "first"), cli.transcript()


async def test_sighup_stops_and_says_which_signal_reloads(project: Path) -> None:
    """SIGHUP means the terminal is gone; one sent by hand (no terminal here) stops too, and the
    log says which signal reloads now."""
    async with run_cli(project, "main:app", "--port", "0") as cli:
        await cli.started()
        await cli.collect_workers()
        cli.send(signal.SIGHUP)
        await cli.wait_for_line(r"Shutting down \(SIGHUP; to reload by signal, send SIGUSR1\)")
        assert await cli.exited() == 0, cli.transcript()
        cli.assert_nothing_left()
        assert "Reloaded" not in cli.transcript()


async def test_an_edit_reloads(project: Path) -> None:
    async with run_cli(project, "main:app", "--port", "0") as cli:
        port = await cli.started()
        async with client() as http:
            assert (await http.get(f"http://127.0.0.1:{port}/")).text == "first"
        write_atomically(project / "main.py", app_source("second edition"))
        match = await cli.wait_for_line(
            r"Reloaded in \d+ ms \(generation 2\): (.*) changed; re-ran 1 of 1 project modules$"
        )
        assert match[1] == "main.py", cli.transcript()
        assert str(project) not in match[0]
        async with client() as http:
            response = await http.get(f"http://127.0.0.1:{port}/")
            assert (response.status_code, response.text) == (200, "second edition"), cli.transcript()


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


async def test_r_and_enter_in_a_terminal_reloads(project: Path) -> None:
    controller, terminal = os.openpty()
    try:
        async with run_cli(project, "main:app", "--port", "0", stdin=terminal) as cli:
            await cli.started()
            os.write(controller, b"r\n")
            match = await cli.wait_for_line(r"Reloaded in \d+ ms \(generation 2\): (.*)$")
            assert "terminal" in match[1], cli.transcript()
    finally:
        os.close(controller)
        os.close(terminal)


async def test_the_embedded_example_serves_beside_another_task(tmp_path: Path) -> None:
    port = free_port()
    async with run_cli(tmp_path, command=(str(EXAMPLES / "embedded.py"),), env={"PORT": str(port)}) as cli:
        await cli.wait_for_line(r"Started embedded:app in \d+ ms, serving on http://127\.0\.0\.1:(\d+)")
        async with client() as http:
            response = await http.get(f"http://127.0.0.1:{port}/")
            assert response.text.startswith("Hello from an app served"), cli.transcript()
        await cli.collect_workers()
        cli.port = port
        cli.send(signal.SIGINT)
        assert await cli.exited() == 0, cli.transcript()
        cli.assert_nothing_left()


# what the interpreter says when CTRL+C interrupts its start-up, before any of asgireload runs
# (or while it sets up its standard streams: "Fatal Python error: init_sys_streams")
INTERPRETER_START_UP = (
    "Could not import runpy module",
    "Could not import runpy._run_module_as_main",  # (3.15: runpy imported, its import of importlib.util not)
    "Failed to import the site module",
    "Fatal Python error: init_",
)


@pytest.mark.parametrize("after", [0.0, 0.02, 0.05, 0.1, 0.2])
async def test_ctrl_c_at_any_moment_of_the_start_up_stops_cleanly(project: Path, after: float) -> None:
    # Wherever the interrupt lands (importing, parsing, starting the template, binding, loading),
    # the command ends without a traceback and leaves nothing behind. (While runpy is still
    # finding the module to run, package import included, the traceback is the interpreter's.)
    # The delay only picks the moment; nothing waits on it for a result.
    # On a loaded machine it may land earlier still, in the interpreter's own start-up (site,
    # runpy's import), which exits 1 with a fatal error of its own before any of asgireload runs.
    async with run_cli(project, "--port", "0") as cli:
        await asyncio.sleep(after)
        cli.send(signal.SIGINT)
        code = await cli.exited()
        transcript = cli.transcript()
        in_start_up = any(m in transcript for m in INTERPRETER_START_UP)
        assert code in (0, 130, -signal.SIGINT) or (code == 1 and in_start_up), transcript
        if "_get_module_details" not in transcript and not in_start_up:
            assert "Traceback" not in transcript, transcript
        cli.assert_nothing_left()
