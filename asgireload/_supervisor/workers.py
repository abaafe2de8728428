"""Supervisor side of one worker: spawn it, read its channel, stop it.

The state machine (`_supervisor/machine.py`) decides what a worker is for; this module only
knows how to start a process with the listening socket and a control socketpair, check what it
says and turn it into the machine's events, and make sure it is gone.

What a worker says is checked here, where it is read, against what this side told it: `hello`
first and once, `ready` or `failed` once and only for the generation it was told to load,
`draining` only after `drain`. Anything else ends the worker (ChannelBroken), never the
supervisor: the machine may rely on every event it gets being possible.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import Callable

from .. import _protocol as protocol
from .. import _reaper
from .._channel import Channel
from . import machineevents as events
from .children import Child, SpawnedChild
from .debugging import DebugTerminal
from .importgraph import DjangoSetup

EXIT_AFTER_EOF = 1.0  # seconds a worker may live on after closing its channel
FLOOD_LIMIT = 2000  # messages a second a worker may send before it is taken for broken
OUTPUT_CHUNK = 65536  # bytes read from a worker's output at a time: no line length can stall it
AFTER_EXIT = 2.0  # seconds the channel and output may take to end once the worker's tree is gone
NO_TERMINAL = DebugTerminal.none(
    "asgireload runs inside a Python program (serve(), Reloader or the pytest fixture), which lends "
    "it no terminal."
)

Emit = Callable[[events.Event], None]


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
    """A worker (spawned or forked: its `child`), its channels, and what this side told it (to
    check what it says back)."""

    def __init__(self, worker_id: int, child: Child, channel: Channel, handoff: socket.socket) -> None:
        self.id = worker_id  # the machine's name for it
        self.child = child  # the process, and how it ends
        self.channel = channel
        self.handoff = handoff  # idle keep-alive connections travel over this, see _handoff.py
        self.debug: socket.socket | None = None  # breakpoint() asks for the terminal over this
        self.stop_relaying: Callable[[], None] | None = None
        self.stop_debugging: Callable[[], None] | None = None
        self.pid = child.pid
        self.tasks: list[asyncio.Task[None]] = []
        # the protocol so far, as this side saw it
        self.greeted = False
        self.generation: int | None = None  # the generation it was told to load
        self.answered = False  # it said ready or failed for that load
        self.told_to_drain = False
        self.shows_failure = False

    def __repr__(self) -> str:
        return f"<worker {self.id} pid={self.pid} generation={self.generation}>"

    @property
    def alive(self) -> bool:
        return self.child.alive

    def send(self, message: protocol.SupervisorMessage) -> None:
        if isinstance(message, protocol.Load):
            self.generation = message.generation
            self.shows_failure = message.failure is not None  # then its `ready` is an error page
        elif isinstance(message, protocol.Drain):
            self.told_to_drain = True
        self.channel.send(message)

    async def aclose(self, wait: float) -> bool:
        """Give it `wait` seconds to exit, then end it and all it started (Child.aclose), and
        release its channels. Returns whether it was still running when killed.

        Cancelling it does not stop it half-way: the kill is sent and the channels are closed
        before CancelledError propagates."""
        try:
            return await self.child.aclose(wait)
        finally:
            self.release()

    def release(self) -> None:
        """Close what this side holds of it: channels, output pipe, the tasks reading them."""
        self.channel.close()
        if self.stop_relaying is not None:
            self.stop_relaying()
        if self.stop_debugging is not None:
            self.stop_debugging()
        self.handoff.close()
        if self.debug is not None:
            self.debug.close()
        for task in self.tasks:
            task.cancel()
        self.child.release()

    def event_of(self, message: protocol.Message) -> events.WorkerEvent:
        """What it said, as the machine's event; ProtocolError if it could not have said that now."""
        if not self.greeted:
            if not isinstance(message, protocol.Hello):
                raise protocol.ProtocolError(f"a {message.TYPE!r} message before 'hello'")
            self.greeted = True
            return events.WorkerGreeted(self.id, message.preload_failed)
        match message:
            case protocol.Hello():
                raise protocol.ProtocolError("a second 'hello'")
            case protocol.Files(files, modules, imports, env, fingerprints, settings, django_env, setup):
                django = DjangoSetup(settings, dict(django_env), frozenset(setup)) if settings else None
                return events.FilesReported(self.id, files, modules, imports, env, fingerprints, django)
            case protocol.Draining() if self.told_to_drain:
                return events.WorkerDraining(self.id)
            case protocol.Draining():
                raise protocol.ProtocolError("a 'draining' message from a worker that was not told to drain")
            case protocol.Ready(error_page=error_page) if error_page != self.shows_failure:
                raise protocol.ProtocolError(
                    "a 'ready' message for the error page from a worker told to load the app"
                    if error_page
                    else "a 'ready' message for the app from a worker told to show a failure"
                )
            case protocol.Ready() | protocol.Failed() if (
                message.generation == self.generation and not self.answered
            ):
                self.answered = True
                if isinstance(message, protocol.Ready):
                    return events.WorkerReady(self.id, message.error_page)
                return events.WorkerFailed(self.id, message.failure)
            case protocol.Ready() | protocol.Failed():
                raise protocol.ProtocolError(
                    f"a {message.TYPE!r} message for generation {message.generation}"
                )
        raise protocol.ProtocolError(f"a {message.TYPE!r} message, which only the supervisor sends")


async def spawn(
    worker_id: int,
    settings: Callable[[int, int, int], protocol.Settings],
    listener: socket.socket,
    emit: Emit,
    output: Callable[[str], None] | None,
    terminal: DebugTerminal | None = None,
) -> WorkerProcess:
    """Start a worker process; its messages, garbage and exit arrive through `emit` as events.

    `settings(handoff_fd, listen_fd, debug_fd)` makes its settings, given the descriptors it will
    find. Its debug socketpair (breakpoint() asking for the terminal) is served by `terminal`.

    The settings travel over the control channel, not argv: they grow with the app (the preload
    list) and argv has a per-string limit. Raises SpawnError if the OS will not start it.
    """
    parent, child, handoff, handoff_child, debug, debug_child = socketpairs()
    handoff_child_fd, debug_child_fd = handoff_child.fileno(), debug_child.fileno()
    tag = _reaper.new_tag(worker_id)
    try:
        fds = (child.fileno(), handoff_child_fd, listener.fileno(), debug_child_fd)
        spawned, stdout = await _exec(tag, fds, capture=output is not None)
    except OSError as exc:
        for sock in (parent, handoff, debug):
            sock.close()
        raise SpawnError(f"could not start a worker process: {exc.strerror or exc}") from exc
    except BaseException:
        for sock in (parent, handoff, debug):
            sock.close()
        raise
    finally:
        for sock in (child, handoff_child, debug_child):
            sock.close()
    try:
        return await attach(
            worker_id,
            spawned,
            (parent, handoff, debug),
            settings(handoff_child_fd, listener.fileno(), debug_child_fd),
            emit,
            (stdout, output) if output is not None and stdout is not None else None,
            terminal,
        )
    except BaseException:
        spawned.release()
        raise


async def _exec(
    tag: str, fds: tuple[int, ...], capture: bool
) -> tuple[SpawnedChild, asyncio.StreamReader | None]:
    """`python -P -m asgireload._worker CONTROL_FD` in a session of its own, carrying `tag`, with
    `fds` (its control end first) and its output captured or not."""
    environment = dict(os.environ)
    environment[_reaper.TAG_VARIABLE] = tag
    pipe = asyncio.subprocess.PIPE if capture else None
    loop = asyncio.get_running_loop()
    transport, protocol_ = await loop.subprocess_exec(
        lambda: _Protocol(limit=OUTPUT_CHUNK, loop=loop),
        sys.executable,
        "-P",  # the worker's own imports never see the current folder (nor the project)
        "-m",
        "asgireload._worker",
        str(fds[0]),
        pass_fds=fds,
        start_new_session=True,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=pipe,
        stderr=asyncio.subprocess.STDOUT if pipe else None,
        env=environment,
    )
    return SpawnedChild(tag, transport, protocol_.exited), protocol_.stdout


def socketpairs() -> tuple[socket.socket, ...]:
    """A new worker's three socketpairs, this side's end first in each: control, handoff, debug."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(3):
            sockets.extend(socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM))
    except OSError as exc:  # out of descriptors, most likely
        for sock in sockets:
            sock.close()
        raise SpawnError(f"could not start a worker process: {exc.strerror or exc}") from exc
    return tuple(sockets)


async def attach(
    worker_id: int,
    child: Child,
    sockets: tuple[socket.socket, socket.socket, socket.socket],
    settings: protocol.Settings | Channel,
    emit: Emit,
    output: tuple[asyncio.StreamReader, Callable[[str], None]] | None = None,
    terminal: DebugTerminal | None = None,
) -> WorkerProcess:
    """Open the channel of a worker just started (spawned or forked: `sockets` are this side's
    control, handoff and debug ends) and send its settings (or take the channel they were sent
    on); from then on, what it says and its exit arrive through `emit`, and its breakpoint()s
    ask `terminal`. If that fails, the worker is ended and SpawnError (or the exception) raised."""
    parent, handoff, debug = sockets
    try:
        if isinstance(settings, Channel):
            channel = settings  # opened already, the settings sent
        else:
            channel = await open_channel(parent, settings)
    except BaseException as exc:
        for sock in sockets:
            sock.close()
        await child.aclose(0)
        if isinstance(exc, OSError):
            raise SpawnError(f"could not talk to a new worker process: {exc.strerror or exc}") from exc
        raise
    worker = WorkerProcess(worker_id, child, channel, handoff)
    worker.stop_debugging = (terminal or NO_TERMINAL).attach(
        lambda: f"generation {worker.generation or '?'} (pid {worker.pid})",
        worker.pid,
        debug,
        lambda paused, announce: emit(
            events.WorkerPaused(worker.id, announce) if paused else events.WorkerResumed(worker.id)
        ),
    )
    worker.debug = debug
    worker.tasks.append(asyncio.create_task(_read_channel(worker, emit)))
    if output is not None:
        worker.tasks.append(asyncio.create_task(_read_output(*output)))
    worker.tasks.append(asyncio.create_task(_watch_exit(worker, emit, list(worker.tasks))))
    return worker


async def open_channel(parent: socket.socket, settings: protocol.Settings) -> Channel:
    """This side of a worker's control channel, its settings sent first (buffered: the worker
    may not be reading yet)."""
    channel = await Channel.open(parent, protocol.WORKER_MESSAGES, send_limit=protocol.TRUSTED_MAX_LINE)
    channel.send(settings)
    return channel


async def _read_channel(worker: WorkerProcess, emit: Emit) -> None:
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
            emit(worker.event_of(message))
    except protocol.ProtocolError as exc:
        emit(events.ChannelBroken(worker.id, str(exc)))
    finally:
        worker.channel.close()
    if worker.alive:
        try:
            async with asyncio.timeout(EXIT_AFTER_EOF):
                await worker.child.wait()
        except TimeoutError:
            emit(
                events.ChannelBroken(
                    worker.id, "nothing more: it closed its control channel but kept running"
                )
            )


async def _watch_exit(worker: WorkerProcess, emit: Emit, readers: list[asyncio.Task[None]]) -> None:
    """When the worker exits, end what it started, then report the exit.

    The exit is known from the process, not from the channel's end of file: a child of the app
    that inherited a descriptor by forking could keep the channel (or the output pipe) open.
    Once the tree is gone they end by themselves; whatever is still open after AFTER_EXIT is cut.
    """
    returncode = await worker.child.wait()
    worker.child.kill()  # what it started goes with it
    _done, pending = await asyncio.wait(readers, timeout=AFTER_EXIT)
    for task in pending:
        task.cancel()
    emit(events.WorkerExited(worker.id, returncode))


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
