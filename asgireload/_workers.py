"""Supervisor side of one worker: spawn it, read its channel, stop it.

The state machine in `supervisor.py` decides what a worker is for; this module only knows how
to start a process with the listening socket and a control socketpair, turn what it says
into events, and make sure it is gone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from . import _reaper, protocol

EXIT_AFTER_EOF = 1.0  # seconds a worker may live on after closing its channel
FLOOD_LIMIT = 2000  # messages a second a worker may send before it is taken for broken
OUTPUT_CHUNK = 65536  # bytes read from a worker's output at a time: no line length can stall it
AFTER_EXIT = 2.0  # seconds the channel and output may take to end once the worker's tree is gone

Event = tuple[Any, ...]


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "is still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with code {returncode}"


class SpawnError(Exception):
    """A worker process could not be started (the OS refused: fds, memory, the interpreter)."""


class _Protocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's own, plus a future set the moment the process exits.

    `Process.wait()` also waits for the output pipe to close, which a child of the app that
    inherited it can delay for as long as it lives; the exit itself is what matters here.
    """

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


class WorkerProcess:
    """A spawned worker and what the supervisor knows of it."""

    def __init__(
        self,
        seq: int,
        process: asyncio.subprocess.Process,
        channel: protocol.Channel,
        handoff: socket.socket,
        tag: str | None = None,
        exited: asyncio.Future[None] | None = None,
    ) -> None:
        self.seq = seq
        self.process = process
        self._exited = exited
        self.tag = tag  # in the environment of everything this worker starts: see _reaper.py
        self.transport: asyncio.SubprocessTransport | None = None
        self.channel = channel
        self.handoff = handoff  # idle keep-alive connections travel over this, see _handoff.py
        self.stop_relaying: Callable[[], None] | None = None
        self.pid = process.pid
        self.state = "starting"  # starting, standby, loading, serving, draining, gone
        self.generation: int | None = None
        self.greeted = False
        self.error_page = False
        self.failed = False
        self.preloaded = False  # it was asked to preload third-party modules
        self.was_ready = False  # it said ready: it accepts (or accepted) connections
        self.reported_files = False  # it finished importing the app (or failed to)
        self.when_drained: Callable[[], None] | None = None  # once it no longer answers new requests
        self.pending_load: dict[str, Any] | None = None
        self.loaded_at = time.monotonic()
        self.tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"<worker {self.seq} pid={self.pid} {self.state} generation={self.generation}>"

    @property
    def alive(self) -> bool:
        return self.process.returncode is None and self.state != "gone"

    async def wait_exit(self) -> int | None:
        """Wait until the process has exited (not for its output pipe to close); its return code."""
        if self._exited is not None:
            await asyncio.shield(self._exited)
            return self.process.returncode
        return await self.process.wait()

    def send(self, message: dict[str, Any]) -> None:
        if not self.greeted:
            if message["type"] == protocol.LOAD:
                self.pending_load = message
            return
        self.channel.send(message)

    def load(self, message: dict[str, Any]) -> None:
        self.loaded_at = time.monotonic()
        self.state = "loading"
        self.generation = message["generation"]
        self.send(message)

    def drained(self) -> None:
        """It stopped answering new requests (it said so, exited, or took too long to say)."""
        callback, self.when_drained = self.when_drained, None
        if callback is not None:
            callback()

    def kill(self) -> None:
        """SIGKILL the worker, its process group (it leads its own session) and its tagged descendants."""
        self.state = "gone" if self.process.returncode is not None else self.state
        _reaper.kill_generation(self.pid, self.tag)

    def close(self) -> None:
        self.channel.close()
        if self.stop_relaying is not None:
            self.stop_relaying()
        self.handoff.close()
        for task in self.tasks:
            task.cancel()
        if self.transport is not None:
            self.transport.close()  # the output pipe too, even if a stray process still holds it


async def spawn(
    seq: int,
    settings: dict[str, Any],
    listener: socket.socket,
    emit: Callable[[Event], None],
    output: Callable[[str], None] | None,
) -> WorkerProcess:
    """Start a worker process; its messages, garbage and exit arrive through `emit`.

    The settings travel over the control channel, not argv: they grow with the app (the preload
    list) and argv has a per-string limit. Raises SpawnError if the OS will not start it.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(2):
            sockets.extend(socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM))
    except OSError as exc:  # out of descriptors, most likely
        for sock in sockets:
            sock.close()
        raise SpawnError(f"could not start a worker process: {exc.strerror or exc}") from exc
    parent, child, handoff, handoff_child = sockets
    tag = _reaper.new_tag(seq)
    environment = dict(os.environ)
    environment[_reaper.TAG_VARIABLE] = tag
    settings = {
        **settings,
        "handoff_fd": handoff_child.fileno(),
        "listen_fd": listener.fileno(),
    }
    try:
        pipe = asyncio.subprocess.PIPE if output is not None else None
        loop = asyncio.get_running_loop()
        transport, protocol_ = await loop.subprocess_exec(
            lambda: _Protocol(limit=OUTPUT_CHUNK, loop=loop),
            sys.executable,
            "-P",  # the worker's own imports never see the current folder (nor the project)
            "-m",
            "asgireload.worker",
            str(child.fileno()),
            pass_fds=(child.fileno(), handoff_child.fileno(), listener.fileno()),
            start_new_session=True,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=pipe,
            stderr=asyncio.subprocess.STDOUT if pipe else None,
            env=environment,
        )
        process = asyncio.subprocess.Process(transport, protocol_, loop)
    except OSError as exc:
        parent.close()
        handoff.close()
        raise SpawnError(f"could not start a worker process: {exc.strerror or exc}") from exc
    except BaseException:
        parent.close()
        handoff.close()
        raise
    finally:
        child.close()
        handoff_child.close()
    try:
        channel = await protocol.Channel.open(
            parent, protocol.WORKER_MESSAGES, send_limit=protocol.TRUSTED_MAX_LINE
        )
        channel.send({"type": protocol.SETTINGS, **settings})
    except BaseException as exc:
        parent.close()
        handoff.close()
        _reaper.kill_generation(process.pid, tag)
        await protocol_.exited
        transport.close()
        if isinstance(exc, OSError):
            raise SpawnError(f"could not talk to a new worker process: {exc.strerror or exc}") from exc
        raise
    worker = WorkerProcess(seq, process, channel, handoff, tag, protocol_.exited)
    worker.transport = transport
    reading = asyncio.create_task(_read_channel(worker, emit))
    worker.tasks.append(reading)
    if output is not None and process.stdout is not None:
        worker.tasks.append(asyncio.create_task(_read_output(process.stdout, output)))
    worker.tasks.append(asyncio.create_task(_watch_exit(worker, emit, list(worker.tasks))))
    return worker


async def _read_channel(worker: WorkerProcess, emit: Callable[[Event], None]) -> None:
    window_start, count = time.monotonic(), 0
    try:
        while True:
            message = await worker.channel.receive()
            if message is None:
                break
            count += 1
            if count > FLOOD_LIMIT:
                now = time.monotonic()
                if now - window_start < 1.0:
                    raise protocol.ProtocolError(f"more than {FLOOD_LIMIT} messages in a second")
                window_start, count = now, 0
            _check(worker, message)
            emit(("message", worker, message))
    except protocol.ProtocolError as exc:
        emit(("garbage", worker, str(exc)))
    finally:
        worker.channel.close()
    if worker.process.returncode is None:
        try:
            async with asyncio.timeout(EXIT_AFTER_EOF):
                await worker.wait_exit()
        except TimeoutError:
            emit(("garbage", worker, "nothing more: it closed its control channel but kept running"))


async def _watch_exit(
    worker: WorkerProcess, emit: Callable[[Event], None], readers: list[asyncio.Task[None]]
) -> None:
    """When the worker exits, end what it started, then report the exit.

    The exit is known from the process, not from the channel's end of file: a child of the app
    that inherited a descriptor by forking could keep the channel (or the output pipe) open.
    Once the tree is gone they end by themselves; whatever is still open after AFTER_EXIT is cut.
    """
    returncode = await worker.wait_exit()
    _reaper.kill_generation(worker.pid, worker.tag)
    _done, pending = await asyncio.wait(readers, timeout=AFTER_EXIT)
    for task in pending:
        task.cancel()
    emit(("exited", worker, returncode))


def _check(worker: WorkerProcess, message: dict[str, Any]) -> None:
    """The fields the supervisor relies on, with the types it relies on."""
    kind = message["type"]
    if not worker.greeted:
        if kind != protocol.HELLO:
            raise protocol.ProtocolError(f"a {kind!r} message before 'hello'")
        if message.get("protocol") != protocol.PROTOCOL_VERSION:
            raise protocol.ProtocolError(
                f"protocol version {message.get('protocol')!r}, expected {protocol.PROTOCOL_VERSION}"
            )
        worker.greeted = True
        return
    if kind == protocol.HELLO:
        raise protocol.ProtocolError("a second 'hello'")
    if kind == protocol.FILES:
        files, modules = message.get("files"), message.get("modules", [])
        if not isinstance(files, list) or not isinstance(modules, list):
            raise protocol.ProtocolError("a 'files' message without a list of files")
        for entry in files:
            if not (
                isinstance(entry, list)
                and len(entry) == 4
                and isinstance(entry[0], str)
                and all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in entry[1:])
            ):
                raise protocol.ProtocolError(f"a malformed file entry {str(entry)[:80]}")
    elif kind == protocol.DRAINING:
        if worker.state != "draining":
            raise protocol.ProtocolError("a 'draining' message from a worker that was not told to drain")
    elif kind in (protocol.READY, protocol.FAILED):
        if message.get("generation") != worker.generation or worker.state not in ("loading", "draining"):
            raise protocol.ProtocolError(f"a {kind!r} message for generation {message.get('generation')!r}")
        if kind == protocol.FAILED and not isinstance(message.get("failure"), dict):
            raise protocol.ProtocolError("a 'failed' message without a failure")


async def _read_output(stream: asyncio.StreamReader, output: Callable[[str], None]) -> None:
    """Pass the output on line by line, reading in chunks so a line of any length gets through."""
    partial = b""
    while chunk := await stream.read(OUTPUT_CHUNK):
        *lines, partial = (partial + chunk).split(b"\n")
        for line in lines:
            output(line.decode(errors="replace") + "\n")
        if len(partial) > OUTPUT_CHUNK * 16:  # a line that never ends (a progress bar): pass it on
            output(partial.decode(errors="replace"))
            partial = b""
    if partial:
        output(partial.decode(errors="replace"))
