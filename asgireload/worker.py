"""A worker: `python -m asgireload.worker SETTINGS`, spawned by the supervisor.

Life of a worker: start warm (uvicorn imported, channel up, optionally third-party modules
preloaded), say `hello`, wait for `load`; import the app, report the files it was built from,
run lifespan start-up, say `ready`, serve; on `drain`, finish in-flight requests and exit.
If the app cannot be loaded the worker says `failed` and then, when asked to, serves the
error page instead, so the browser shows the error rather than hanging.

It exits at once when the supervisor goes away (end of file on the control socket), even in
the middle of importing the app: a watchdog thread waits for the hang-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import select
import signal
import socket
import sys
import threading
from typing import Any, NoReturn

import uvicorn

from . import _handoff, protocol
from ._loader import AppLoadError, ImportRecorder, catch_lifespan_failure, failure_from_exception, load_app
from ._server import Server
from .errorpage import error_app
from .watchfilter import WatchFilter

LAZY_IMPORT_CHECK = 0.5  # seconds between looks for modules imported after start-up
REPORT_CHUNK = 2000  # files per `files` message


def _exit_with_children() -> NoReturn:
    """The supervisor is gone: take down this worker and whatever the app started (our group)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.killpg(os.getpgrp(), signal.SIGKILL)
    os._exit(0)  # not reached: the signal above includes us


def _watch_for_hangup(fd: int) -> None:
    """Exit the process the moment the supervisor's end of the channel closes."""

    def wait() -> None:
        poller = select.poll()
        poller.register(fd, 0)  # hang-up and error are always reported
        while True:
            for _, events in poller.poll():
                if events & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                    _exit_with_children()

    threading.Thread(target=wait, name="asgireload-hangup", daemon=True).start()


class Worker:
    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.project = WatchFilter(settings["roots"], settings["includes"], settings["excludes"])
        self.recorder = ImportRecorder(self.project)
        self.generation = 0
        self.failure: dict[str, Any] = {}
        self.server: Server | None = None
        self.channel: protocol.Channel | None = None

    async def run(self) -> None:
        control = socket.socket(fileno=self.settings["control_fd"])
        self.channel = channel = await protocol.Channel.open(control, protocol.SUPERVISOR_MESSAGES)
        preload_failed = self._preload()
        channel.send(
            {
                "type": protocol.HELLO,
                "pid": os.getpid(),
                "protocol": protocol.PROTOCOL_VERSION,
                "preload_failed": preload_failed,
            }
        )
        message = await self._receive()
        if message["type"] != protocol.LOAD:
            return
        self.generation = message["generation"]
        os.environ.update(message.get("env") or {})
        listener = socket.socket(fileno=self.settings["listen_fd"])

        started = False
        if message.get("failure"):
            self.failure.update(message["failure"])
        else:
            started = await self._start_app(message)
        if not started:
            fatal = self.failure.get("kind") == "usage" and self.generation == 1
            if fatal or message.get("on_failure") != "error_page":
                return  # a mistake in the command (or --keep-last-good): no error page
            await self._start_server(self._error_app(), [listener], interface="asgi3")
        assert self.server is not None
        channel.send({"type": protocol.READY, "generation": self.generation, "error_page": not started})
        await channel.flush()

        handoff = socket.socket(fileno=self.settings["handoff_fd"])
        stop_adopting = _handoff.listen(handoff, self.server.adopt)
        reporter = asyncio.create_task(self._report_lazy_imports())
        drain_timeout = await self._serve_until_drain()
        reporter.cancel()
        stop_adopting()
        returned = _handoff.receive_fds(handoff) or []  # handed to us too late to serve: pass on
        handoff.setblocking(True)
        _handoff.close_all(_handoff.send_all(handoff, returned))
        await self.server.drain(
            drain_timeout,
            hand_off=lambda fds: _handoff.send_fds(handoff, fds),
            on_stopped=lambda: channel.send({"type": protocol.DRAINING}),
        )
        await channel.flush()

    async def _receive(self) -> dict[str, Any]:
        assert self.channel is not None
        try:
            message = await self.channel.receive()
        except protocol.ProtocolError as exc:
            print(f"asgireload worker: {exc}; exiting.", file=sys.stderr)
            os._exit(1)
        if message is None:
            _exit_with_children()
        return message

    def _preload(self) -> dict[str, str] | None:
        """Import the third-party modules the last generation used, so a reload need not.

        Stops at the first that fails (the supervisor drops it from the list and says so once).
        """
        for name in self.settings.get("preload") or ():
            try:
                importlib.import_module(name)
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    raise
                return {"module": name, "error": f"{type(exc).__name__}: {exc}"}
        return None

    async def _start_app(self, message: dict[str, Any]) -> bool:
        """Import the app and start serving it; on failure report it and return False."""
        listener = socket.socket(fileno=os.dup(self.settings["listen_fd"]))
        try:
            app = load_app(
                self.settings["app"], factory=self.settings["factory"], app_dir=self.settings["app_dir"]
            )
        except AppLoadError as exc:
            listener.close()
            self._report_files()
            self._fail(exc.failure)
            return False
        self._report_files()
        sink: dict[str, Any] = {}
        try:
            ok = await self._start_server(app, [listener], lifespan_sink=sink)
        except Exception as exc:
            ok = False
            sink.setdefault("failure", failure_from_exception(exc, "startup"))
        if ok:
            return True
        listener.close()
        self._report_files()
        self._fail(
            sink.get("failure")
            or {"kind": "lifespan", "summary": "lifespan start-up failed", "traceback": "", "files": []}
        )
        return False

    async def _start_server(
        self,
        app: Any,
        sockets: list[socket.socket],
        interface: str | None = None,
        lifespan_sink: dict[str, Any] | None = None,
    ) -> bool:
        options = dict(self.settings["uvicorn"], loop="none")  # the loop runs already
        if interface is not None:
            options["interface"] = interface
        config = uvicorn.Config(app, **options, timeout_graceful_shutdown=self.settings["drain_timeout"])
        config.load()  # resolves the interface: from here on the app is ASGI 3, whatever it was
        if lifespan_sink is not None:
            config.loaded_app = catch_lifespan_failure(config.loaded_app, lifespan_sink)
        self.server = Server(config)
        return await self.server.start(sockets)

    def _fail(self, failure: dict[str, Any]) -> None:
        self.failure.clear()
        self.failure.update(failure, files=[_relative(p) for p in failure.get("files", [])])
        assert self.channel is not None
        self.channel.send({"type": protocol.FAILED, "generation": self.generation, "failure": failure})

    def _error_app(self) -> Any:
        return error_app(self.failure, show_details=self.settings["show_errors"])

    def _report_files(self) -> None:
        assert self.channel is not None
        files, modules = self.recorder.new_modules()
        for start in range(0, max(len(files), len(modules), 1), REPORT_CHUNK):
            self.channel.send(
                {
                    "type": protocol.FILES,
                    "files": files[start : start + REPORT_CHUNK],
                    "modules": modules[start : start + REPORT_CHUNK],
                }
            )

    async def _report_lazy_imports(self) -> None:
        """Modules imported inside request handlers are watched too, within a second."""
        while True:
            await asyncio.sleep(LAZY_IMPORT_CHECK)
            if self.recorder.has_new_modules():
                self._report_files()

    async def _serve_until_drain(self) -> float:
        """Serve until the supervisor says `drain`; return its timeout."""
        assert self.server is not None
        assert self.channel is not None
        serving = asyncio.create_task(self.server.serve_until_stopped())
        try:
            while True:
                message = await self._receive()
                if message["type"] == protocol.DRAIN:
                    return float(message.get("timeout", self.settings["drain_timeout"]))
                if message["type"] == protocol.FAILURE:
                    self.failure.clear()
                    self.failure.update(message["failure"])
        finally:
            self.server.request_stop()
            with contextlib.suppress(asyncio.CancelledError):
                await serving


def _relative(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def main() -> None:
    settings = json.loads(sys.argv[1])
    _watch_for_hangup(settings["control_fd"])
    os.environ["ASGIRELOAD_WORKER"] = "1"  # serve() refuses to start a server from inside a worker
    sys.path.insert(0, settings["app_dir"])
    worker = Worker(settings)
    worker.recorder.install()
    loop_factory = uvicorn.Config(app="unused:app", loop=settings["uvicorn"]["loop"]).get_loop_factory()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(worker.run())
    sys.stdout.flush()
    sys.stderr.flush()


if __name__ == "__main__":
    main()
