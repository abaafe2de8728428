"""An IDE's debugger across reloads: debugpy, driven through its own protocol (DAP).

`python -m debugpy --listen PORT --wait-for-client -m asgireload main:app` is what VS Code's
"module" launch with `subProcess: true` amounts to. debugpy follows every worker asgireload
starts (the standby too) and announces each to the client (`debugpyAttach`); the small client
here attaches to each, sets the same breakpoint in all, and answers `stopped` with `continue`, as
an IDE does. The breakpoint must be hit in generation 1 and again after a reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from .test_cli import DEADLINE, client, free_port, kill_group, port_is_free, write_atomically

# Never imported here: a supervisor in this process (the other tests' Reloader) would take the
# test run for a debugging session, and stop forking workers and killing them at the deadline.
if os.environ.get("CI") != "true" and importlib.util.find_spec("debugpy") is None:
    pytest.skip("debugpy (the test extra) is not installed", allow_module_level=True)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

APP = """\
VERSION = {version!r}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = VERSION.encode()
    if scope["path"] == "/call":
        breakpoint()
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": body}})
"""
BREAKPOINT_LINE = 7  # body = VERSION.encode()
CALL_LINE = 9  # breakpoint()
SERVING = re.compile(r"serving on http://127\.0\.0\.1:(\d+) ")


class Session:
    """One DAP conversation over TCP: Content-Length framed JSON, requests matched to responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str) -> None:
        self.reader, self.writer, self.name = reader, writer, name
        self._seq = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reading = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, port: int, name: str) -> Session:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, name)

    async def _read(self) -> None:
        while True:
            length = None
            while (line := await self.reader.readline()).strip():
                name, _, value = line.decode().partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if not line or length is None:
                return  # the other side closed
            message = json.loads(await self.reader.readexactly(length))
            if message["type"] == "response":
                waiting = self._waiting.pop(message["request_seq"], None)
                if waiting is not None and not waiting.done():
                    waiting.set_result(message)
            elif message["type"] == "event":
                self.events.put_nowait(message)

    def _send(self, message: dict[str, Any]) -> int:
        seq = next(self._seq)
        data = json.dumps({**message, "seq": seq}).encode()
        self.writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
        return seq

    def request(self, command: str, **arguments: Any) -> asyncio.Future[dict[str, Any]]:
        """Send a request; the future is its response (asserted successful when awaited via `ok`)."""
        response: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[self._send({"type": "request", "command": command, "arguments": arguments})] = response
        return response

    async def event(self, name: str) -> dict[str, Any]:
        async with asyncio.timeout(DEADLINE):
            while (event := await self.events.get())["event"] != name:
                pass
        return event

    async def attach(self, breakpoint_at: tuple[str, int], **arguments: Any) -> None:
        """initialize, attach, setBreakpoints, configurationDone: what an IDE does for each process."""
        async with asyncio.timeout(DEADLINE):
            await ok(self.request("initialize", adapterID="debugpy", clientID="asgireload-tests"))
            attached = self.request("attach", **arguments)
            await self.event("initialized")
            path, line = breakpoint_at
            answer = await ok(
                self.request("setBreakpoints", source={"path": path}, breakpoints=[{"line": line}])
            )
            assert answer["body"]["breakpoints"], answer
            await ok(self.request("configurationDone"))
            await ok(attached)

    async def close(self) -> None:
        self._reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reading
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def ok(response: asyncio.Future[dict[str, Any]]) -> dict[str, Any]:
    message = await response
    assert message["success"], message
    return message


class Ide:
    """The client side of a debugging session: the root process and every worker debugpy reports."""

    def __init__(self, port: int, breakpoint_at: tuple[str, int]) -> None:
        self.port = port
        self.breakpoint_at = breakpoint_at
        self.sessions: list[Session] = []
        self.stopped: asyncio.Queue[tuple[Session, dict[str, Any]]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        root = await self._connect("root")
        await root.attach(self.breakpoint_at, subProcess=True, justMyCode=False)
        self._tasks.append(asyncio.ensure_future(self._follow(root)))

    async def _connect(self, name: str) -> Session:
        async with asyncio.timeout(DEADLINE):
            while True:  # the adapter listens once `python -m debugpy` has started it
                with contextlib.suppress(ConnectionRefusedError):
                    session = await Session.connect(self.port, name)
                    break
                await asyncio.sleep(0.05)  # polled: its listening socket is no event we can await
        self.sessions.append(session)
        return session

    async def _follow(self, root: Session) -> None:
        """Attach to every worker debugpy announces; report each `stopped`."""
        while True:
            announced = await root.events.get()
            if announced["event"] != "debugpyAttach":
                continue
            worker = await self._connect(f"pid {announced['body'].get('subProcessId')}")
            await worker.attach(self.breakpoint_at, **announced["body"])
            self._tasks.append(asyncio.ensure_future(self._watch(worker)))

    async def _watch(self, session: Session) -> None:
        while True:
            event = await session.events.get()
            if event["event"] == "stopped":
                self.stopped.put_nowait((session, event))

    async def next_stop(self) -> tuple[Session, dict[str, Any]]:
        async with asyncio.timeout(DEADLINE):
            return await self.stopped.get()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for session in self.sessions:
            await session.close()


class Output:
    """What a process prints, line by line, with a wait for a pattern (woken by each new line)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = asyncio.Condition()

    async def collect(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.lines.append(line.decode(errors="replace"))
            async with self._changed:
                self._changed.notify_all()

    async def wait_for(self, pattern: str, since: int = 0) -> re.Match[str]:
        """The first line from line `since` on that matches."""
        regex = re.compile(pattern)
        async with asyncio.timeout(DEADLINE), self._changed:
            while not (match := next(filter(None, map(regex.search, self.lines[since:])), None)):
                await self._changed.wait()
        return match


@contextlib.asynccontextmanager
async def under_debugpy(project: Path, port: int) -> AsyncIterator[Output]:
    """`python -m debugpy --listen PORT --wait-for-client -m asgireload main:app --port 0`, and its
    output; on leaving, it and every process in its folder (workers, debugpy's adapter) is killed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASGIRELOAD", "COVERAGE"))}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "debugpy",
        "--listen",
        f"127.0.0.1:{port}",
        "--wait-for-client",
        "-m",
        "asgireload",
        "main:app",
        "--port",
        "0",
        cwd=project,
        env=env | {"PYDEVD_DISABLE_FILE_VALIDATION": "1"},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    output = Output()
    assert process.stdout is not None
    collecting = asyncio.ensure_future(output.collect(process.stdout))
    try:
        yield output
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGINT)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DEADLINE):
                await process.wait()
        for pid in processes_in(project):
            kill_group(pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        collecting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collecting
        print("".join(output.lines))


def processes_in(folder: Path) -> list[int]:
    """Processes whose working folder is `folder` (asgireload, its workers, debugpy's adapter)."""
    wanted, found = os.path.realpath(folder), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if (
                    os.path.realpath(os.readlink(f"/proc/{entry}/cwd")) == wanted
                    and int(entry) != os.getpid()
                ):
                    found.append(int(entry))
    return found


async def test_a_breakpoint_is_hit_in_every_generation(tmp_path: Path) -> None:
    main = tmp_path / "main.py"
    main.write_text(APP.format(version="one"))
    debug_port = free_port()
    ide = Ide(debug_port, (str(main), BREAKPOINT_LINE))
    async with under_debugpy(tmp_path, debug_port) as output:
        try:
            await ide.start()
            port = int((await output.wait_for(SERVING.pattern))[1])
            async with client() as http:
                for version in ("one", "two", "three"):
                    if version != "one":
                        # the next generation, whatever its number: a warm worker that a loaded
                        # machine did not get ready in time under the tracer is passed over
                        since = len(output.lines)
                        write_atomically(main, APP.format(version=version))
                        await output.wait_for(r"Reloaded in \d+ ms \(generation \d+\)", since)
                    request = asyncio.ensure_future(http.get(f"http://127.0.0.1:{port}/"))
                    session, stop = await ide.next_stop()
                    assert stop["body"]["reason"] == "breakpoint"
                    assert not request.done()
                    thread = stop["body"]["threadId"]
                    frames = await ok(session.request("stackTrace", threadId=thread, levels=1))
                    top = frames["body"]["stackFrames"][0]
                    assert (top["source"]["path"], top["line"]) == (str(main), BREAKPOINT_LINE)
                    await ok(session.request("continue", threadId=thread))
                    response = await request
                    assert (response.status_code, response.text) == (200, version)
            async with client() as http:
                # breakpoint() in the app stops in the IDE too (debugpy's hook, not the terminal's)
                request = asyncio.ensure_future(http.get(f"http://127.0.0.1:{port}/call"))
                session, stop = await ide.next_stop()  # the line breakpoint first
                await ok(session.request("continue", threadId=stop["body"]["threadId"]))
                session, stop = await ide.next_stop()
                frames = await ok(session.request("stackTrace", threadId=stop["body"]["threadId"]))
                lines = [(f["source"].get("path"), f["line"]) for f in frames["body"]["stackFrames"]]
                assert (str(main), CALL_LINE) in lines, lines
                await ok(session.request("continue", threadId=stop["body"]["threadId"]))
                assert (await request).text == "three"
            assert not any("Address already in use" in line for line in output.lines)
        finally:
            await ide.close()
    assert port_is_free(port)
