"""Supervisor side of one worker: spawn it, read its channel, stop it.

The state machine in `supervisor.py` decides what a worker is for; this module only knows how
to start a process with the listening socket and a control socketpair, turn what it says
into events, and make sure it is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from . import protocol

EXIT_AFTER_EOF = 1.0  # seconds a worker may live on after closing its channel
FLOOD_LIMIT = 2000  # messages a second a worker may send before it is taken for broken

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


class WorkerProcess:
    """A spawned worker and what the supervisor knows of it."""

    def __init__(
        self, seq: int, process: asyncio.subprocess.Process, channel: protocol.Channel, handoff: socket.socket
    ) -> None:
        self.seq = seq
        self.process = process
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
        self.on_failure = "error_page"  # or "exit": what the worker does when its app fails to load
        self.pending_load: dict[str, Any] | None = None
        self.spawned_at = self.loaded_at = time.monotonic()
        self.tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"<worker {self.seq} pid={self.pid} {self.state} generation={self.generation}>"

    @property
    def alive(self) -> bool:
        return self.process.returncode is None and self.state != "gone"

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
        """SIGKILL the worker's whole process group (it leads its own session)."""
        self.state = "gone" if self.process.returncode is not None else self.state
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def close(self) -> None:
        self.channel.close()
        if self.stop_relaying is not None:
            self.stop_relaying()
        self.handoff.close()
        for task in self.tasks:
            task.cancel()


async def spawn(
    seq: int,
    settings: dict[str, Any],
    listener: socket.socket,
    emit: Callable[[Event], None],
    output: Callable[[str], None] | None,
) -> WorkerProcess:
    """Start a worker process; its messages, garbage and exit arrive through `emit`."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    handoff, handoff_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        settings = {
            **settings,
            "control_fd": child.fileno(),
            "handoff_fd": handoff_child.fileno(),
            "listen_fd": listener.fileno(),
        }
        pipe = asyncio.subprocess.PIPE if output is not None else None
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "asgireload.worker",
            json.dumps(settings),
            pass_fds=(child.fileno(), handoff_child.fileno(), listener.fileno()),
            start_new_session=True,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=pipe,
            stderr=asyncio.subprocess.STDOUT if pipe else None,
        )
    except BaseException:
        parent.close()
        handoff.close()
        raise
    finally:
        child.close()
        handoff_child.close()
    try:
        channel = await protocol.Channel.open(parent, protocol.WORKER_MESSAGES)
    except BaseException:
        parent.close()
        handoff.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        raise
    worker = WorkerProcess(seq, process, channel, handoff)
    worker.tasks.append(asyncio.create_task(_read_channel(worker, emit)))
    if output is not None and process.stdout is not None:
        worker.tasks.append(asyncio.create_task(_read_output(process.stdout, output)))
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
    try:
        async with asyncio.timeout(EXIT_AFTER_EOF):
            await worker.process.wait()
    except TimeoutError:
        emit(("garbage", worker, "nothing more: it closed its control channel but kept running"))
        await worker.process.wait()
    emit(("exited", worker, worker.process.returncode))


def _check(worker: WorkerProcess, message: dict[str, Any]) -> None:
    """The fields the supervisor relies on, with the types it relies on."""
    kind = message["type"]
    if not worker.greeted:
        if kind != protocol.HELLO:
            raise protocol.ProtocolError(f"a {kind!r} message before 'hello'")
        if message.get("protocol") != protocol.PROTOCOL_VERSION:
            raise protocol.ProtocolError(f"protocol version {message.get('protocol')!r}, expected 1")
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
    while line := await stream.readline():
        output(line.decode(errors="replace"))
