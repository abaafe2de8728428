"""A worker: `python -P -m asgireload._worker CONTROL_FD`, spawned by the supervisor.

Life of a worker: read its settings from the control channel, start warm (uvicorn imported,
optionally third-party modules preloaded, never the project's), say `hello`, wait for `load`;
import the app, report the files it was built from, run lifespan start-up, say `ready` (or
`failed`), and then wait: only when the supervisor answers `serve` does it accept connections
(the app, or the error page after a failure), so a generation that was superseded meanwhile
never answers a request. On `drain`, finish in-flight requests and exit.

It exits at once when the supervisor goes away (end of file on the control socket), even in
the middle of importing the app: a watchdog thread waits for the hang-up, and takes down what
the app started too (hangup.py).
"""

from __future__ import annotations

import sys

_AT_START = frozenset(sys.modules)  # the interpreter's start-up, runpy and asgireload/__init__


def _set_aside_pythonpath() -> list[str]:
    """Take PYTHONPATH's folders off sys.path until the app loads (they may hold the project)."""
    import os

    entries = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    for entry in entries:
        if entry in sys.path:
            sys.path.remove(entry)
    return entries


_PYTHONPATH = _set_aside_pythonpath()

import uvicorn  # noqa: E402  (first, so that what uvicorn imports is known: see _shadowed_modules)

_UVICORN = frozenset(sys.modules)

import asyncio  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import importlib  # noqa: E402
import importlib.machinery  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
from typing import Any  # noqa: E402

from .. import _handoff, _logging, _wire  # noqa: E402
from .. import _protocol as protocol  # noqa: E402
from .._channel import Channel  # noqa: E402
from .._paths import relative  # noqa: E402
from .._protocol import Failure  # noqa: E402
from .._watchfilter import WatchFilter  # noqa: E402
from . import debugger, djangosetup, layerenv  # noqa: E402
from .errorpage import error_app  # noqa: E402
from .hangup import exit_with_children, watch_for_hangup  # noqa: E402
from .importreports import layer_checks, preload, report_chunks  # noqa: E402
from .imports import ImportGraphRecorder  # noqa: E402
from .livereload import Hub, LiveReload, adds_script, quiet_access_log  # noqa: E402
from .loader import AppLoadError, ImportRecorder, load_app  # noqa: E402
from .loadfailure import catch_lifespan_failure, failure_from_exception  # noqa: E402
from .server import Server  # noqa: E402

LAZY_IMPORT_CHECK = 0.5  # seconds between looks for modules imported after start-up


def _read_settings(control: socket.socket) -> tuple[protocol.Settings, bytes]:
    """The first message, read before any event loop exists (it chooses the loop)."""
    lines = _wire.Lines(protocol.TRUSTED_MAX_LINE)
    while (received := lines.next()) is None:
        chunk = control.recv(1 << 20)
        if not chunk:
            exit_with_children()
        lines.feed(chunk)
    settings = protocol.message_of(received[0], {protocol.Settings.TYPE: protocol.Settings})
    assert isinstance(settings, protocol.Settings)
    return settings, lines.rest()


def _uvicorn_imports(options: dict[str, Any]) -> frozenset[str]:
    """Import what uvicorn's Config loads for these options (protocols, lifespan, loop), and
    return what `uvicorn APP` has imported when it puts the app's folder first on sys.path: the
    interpreter's start-up and uvicorn itself, nothing more. What its Config loads comes after
    that, so a project module of such a name wins under uvicorn: it must here too."""
    config = uvicorn.Config(_placeholder_app, **dict(options, loop="none", log_config=None))
    config.load()
    return _AT_START | _UVICORN


async def _placeholder_app(scope: Any, receive: Any, send: Any) -> None:
    raise RuntimeError("never called")


def _shadowed_modules(project_paths: list[str], imported_by_uvicorn: frozenset[str]) -> list[str]:
    """Modules this worker imported (for itself, or preloading) that a project module of the same
    name would have shadowed under `uvicorn APP`, which imports the app with the project first
    on sys.path. Forgetting them lets the app import its own module, exactly as under uvicorn."""
    names = []
    for name in list(sys.modules):
        if "." in name or name in imported_by_uvicorn or name == "asgireload":
            continue
        if importlib.machinery.PathFinder.find_spec(name, project_paths) is not None:
            names.append(name)
    return [m for m in list(sys.modules) if m.partition(".")[0] in names]


class WorkerRun:
    """One worker's run: settings, preload, hello, load, ready, serve, drain (see run())."""

    def __init__(self, settings: protocol.Settings, control_fd: int) -> None:
        self.settings = settings
        self.control_fd = control_fd
        self.project = WatchFilter(settings.roots, settings.includes, settings.excludes)
        self.recorder = ImportRecorder(self.project)
        self.graph = ImportGraphRecorder(self.project.is_project_file)
        self.held: frozenset[str] = frozenset()  # project modules a project layer imported (layer.py)
        inherited = getattr(sys.modules.get("asgireload._worker.layer"), "INHERITED", None)
        if inherited is not None:  # forked from a project layer: its files' stats, its graph
            self.recorder.stats.update(inherited.stats)
            self.graph, self.held = inherited.graph, inherited.held
            self.graph.held = inherited.held  # (a package run again adopts its held submodules)
        self.env_set: tuple[str, ...] = ()  # environment variables the app's import set
        self.generation = 0
        self.shown: dict[str, Any] = {}  # the failure the error page shows (it follows updates)
        self.server: Server | None = None
        self.channel: Channel | None = None
        self.imported_by_uvicorn: frozenset[str] = frozenset()
        self.live: Hub | None = None  # the pages' event streams, when live reload is on

    async def run(self, received: bytes = b"") -> None:
        """Hello, load, ready (or failed), serve once told to, drain once told to."""
        control = socket.socket(fileno=self.control_fd)
        self.channel = channel = await Channel.open(
            control, protocol.SUPERVISOR_MESSAGES, max_line=protocol.TRUSTED_MAX_LINE
        )
        channel.feed(received)
        preload_failed = preload(self.settings.preload)
        self.recorder.note_preloaded(self.settings.preload)
        channel.send(protocol.Hello(os.getpid(), protocol.PROTOCOL_VERSION, preload_failed))
        message = await self._receive()
        if not isinstance(message, protocol.Load):
            return
        started = await self._load(message)
        # Accept nothing until the supervisor says this generation is the one it wants serving.
        message = await self._receive()
        if not isinstance(message, protocol.Serve):
            if self.server is not None and started:
                await self.server.lifespan.shutdown()
            return
        listener = socket.socket(fileno=self.settings.listen_fd)
        if not started:
            await self._start_server(self._error_app(), interface="asgi3", error_page=True)
        assert self.server is not None
        await self.server.start_accepting([listener])
        await channel.flush()
        await self._serve_then_drain(self.server, channel)

    async def _load(self, message: protocol.Load) -> bool:
        """Load the generation `message` names (or show its failure); say `ready` unless the app
        failed. True if the app started (else the error page will serve)."""
        assert self.channel is not None
        self.generation = message.generation
        self._prepare_imports()
        os.environ.update(message.env)
        if message.failure is not None:
            self._show(message.failure)
            self.channel.send(protocol.Ready(self.generation, error_page=True))
            return False
        started = await self._start_app()
        if started:
            self.channel.send(protocol.Ready(self.generation, error_page=False))
        return started

    async def _serve_then_drain(self, server: Server, channel: Channel) -> None:
        """Serve (and adopt the connections handed over) until `drain`; then drain, handing idle
        connections over to the next generation at their request boundaries."""
        handoff = socket.socket(fileno=self.settings.handoff_fd)
        draining = False

        def arrived(connections: list[_handoff.Connection]) -> None:
            if draining:  # too late to serve them here: back to the supervisor, for the new generation
                _handoff.pass_back(handoff, connections)
            else:
                server.adopt(connections)

        stop_listening = _handoff.listen(handoff, arrived)
        reporter = asyncio.create_task(self._report_lazy_imports())
        drain_timeout = await self._serve_until_drain()
        if self.live is not None:
            self.live.close()  # the pages reconnect, to the new generation, at once
        reporter.cancel()
        draining = True
        await server.drain(
            drain_timeout,
            hand_off=lambda fd, pending: _handoff.send_connection(handoff, fd, pending),
            on_stopped=lambda: channel.send(protocol.Draining()),
        )
        stop_listening()
        await channel.flush()

    async def _receive(self) -> protocol.Message:
        assert self.channel is not None
        try:
            message = await self.channel.receive()
        except protocol.ProtocolError as exc:
            print(f"asgireload worker: {exc}; exiting.", file=sys.stderr)
            os._exit(1)
        if message is None:
            exit_with_children()
        return message

    def _prepare_imports(self) -> None:
        """Put the project where `uvicorn APP` has it: first on sys.path, PYTHONPATH after it."""
        project_paths = [self.settings.app_dir, *_PYTHONPATH]
        for name in _shadowed_modules(project_paths, self.imported_by_uvicorn | self.held):
            del sys.modules[name]
        sys.path[0:0] = project_paths
        importlib.invalidate_caches()

    async def _start_app(self) -> bool:
        """Import the app and run its lifespan start-up (not accepting yet); on failure report it."""
        environment = dict(os.environ)
        self.graph.install()
        try:
            app = load_app(
                self.settings.app,
                factory=self.settings.factory,
                app_dir=self.settings.app_dir,
                project=self.project,
            )
        except AppLoadError as exc:
            self.graph.uninstall()
            self._report_files()
            self._fail(exc.failure)
            return False
        self.graph.uninstall()
        self.env_set = tuple(sorted(layerenv.set_by_import(environment)))
        self._report_files()
        django, failure = djangosetup.report(environment, self.graph)  # (a layer may set it up)
        if django is not None and self.channel is not None:
            self.channel.send(django)
        failure = failure or layerenv.stale_environment()
        if failure is not None:
            self._fail(failure)  # the supervisor loads this generation again, with no layer
            return False
        sink: dict[str, Failure] = {}
        try:
            ok = await self._start_server(app, lifespan_sink=sink)
        except Exception as exc:
            ok = False
            sink.setdefault("failure", failure_from_exception(exc, "startup", project=self.project))
        if ok:
            return True
        self.server = None
        self._report_files()
        self._fail(sink.get("failure") or Failure("lifespan", "lifespan start-up failed"))
        return False

    async def _start_server(
        self,
        app: Any,
        interface: str | None = None,
        lifespan_sink: dict[str, Failure] | None = None,
        *,
        error_page: bool = False,
    ) -> bool:
        """A uvicorn server for `app`, through its lifespan start-up; False if that failed."""
        options = dict(self.settings.uvicorn, loop="none")  # the loop runs already
        if options.get("log_config"):  # applied once, at the worker's start (see main())
            options["log_config"] = None
        if interface is not None:
            options["interface"] = interface
        # uvicorn types it as int, and uses it as a number of seconds: a fraction is kept
        drain = self.settings.drain_timeout
        config = uvicorn.Config(app, **options, timeout_graceful_shutdown=drain)  # type: ignore[arg-type]
        config.load()  # resolves the interface: from here on the app is ASGI 3, whatever it was
        if lifespan_sink is not None:
            config.loaded_app = catch_lifespan_failure(config.loaded_app, lifespan_sink, project=self.project)
        if self.settings.live_reload:
            self.live = Hub(self.settings.run, self.generation, error_page=error_page)
            config.loaded_app = LiveReload(config.loaded_app, self.live)
        self.server = Server(config)
        return await self.server.start_lifespan()

    def _fail(self, failure: Failure) -> None:
        self._show(failure)
        assert self.channel is not None
        self.channel.send(protocol.Failed(self.generation, failure))

    def _show(self, failure: Failure) -> None:
        """What the error page shows from now on (the files relative to the current folder)."""
        self.shown.clear()
        self.shown.update(failure.to_json(), files=[relative(p) for p in failure.files])

    def _error_app(self) -> Any:
        return error_app(
            self.shown,
            show_details=self.settings.show_errors,
            only_loopback_hosts=self.settings.only_loopback_hosts,
            # live reload's stream tells the page instead, where its script goes in
            poll=(lambda scope: not adds_script(scope)) if self.settings.live_reload else True,
        )

    def _report_files(self) -> None:
        """Report what was imported, in messages well under the supervisor's line limit."""
        assert self.channel is not None
        files, modules = self.recorder.new_modules()
        imports = self.graph.new_entries()
        for chunk in report_chunks({"files": files, "modules": modules, "imports": imports}):
            files_, modules_, imports_ = (tuple(chunk[kind]) for kind in ("files", "modules", "imports"))
            self.channel.send(protocol.Files(files_, modules_, imports_))
        for message in layer_checks(self.env_set, imports, self.held):
            self.channel.send(message)
        self.env_set = ()

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
                if isinstance(message, protocol.Drain):
                    return message.timeout
                if isinstance(message, protocol.ShowFailure):
                    before = dict(self.shown)
                    self._show(message.failure)
                    if self.live is not None and self.shown != before:
                        # a retry failing alike changes nothing; what it shows, for the curious
                        self.live.publish({"type": "reload", "shows": message.failure.summary})
                if isinstance(message, protocol.Assets) and self.live is not None:
                    self.live.publish(
                        {"type": "css" if message.restyle else "reload", "files": list(message.paths)}
                    )
        finally:
            self.server.request_stop()
            with contextlib.suppress(asyncio.CancelledError):
                await serving


def main() -> None:
    run(int(sys.argv[1]))


def run(control_fd: int, descriptors: tuple[int, int, int] | None = None) -> None:
    """Be a worker on this control socket. A worker forked by the template (template.py) passes
    `descriptors`: where its handoff, listening and debug sockets landed, which the supervisor
    cannot know."""
    watch_for_hangup(control_fd)
    with socket.socket(fileno=os.dup(control_fd)) as control:
        settings, received = _read_settings(control)
    if descriptors is not None:  # forked: the template tells what they are in this process
        handoff_fd, listen_fd, debug_fd = descriptors
        settings = dataclasses.replace(
            settings, handoff_fd=handoff_fd, listen_fd=listen_fd, debug_fd=debug_fd
        )
    for fd in (control_fd, settings.handoff_fd, settings.listen_fd, settings.debug_fd):
        if fd is not None:
            os.set_inheritable(fd, False)  # the app's children must not hold the port or our channels
    debugger.install(settings.debug_fd)
    os.environ.update(settings.env)  # the env file, before anything is preloaded
    _handoff.restore_fd_limit(settings.fd_limit)  # the app runs under the usual limit
    os.environ["ASGIRELOAD_WORKER"] = "1"  # serve() refuses to start a server from inside a worker
    _logging.configure(settings.uvicorn["log_level"], settings.uvicorn.get("use_colors"))
    if settings.live_reload:
        quiet_access_log()
    worker = WorkerRun(settings, control_fd)
    worker.imported_by_uvicorn = _uvicorn_imports(settings.uvicorn)
    worker.recorder.install()
    log_file = settings.uvicorn.get("log_config")
    # with a file, only the file (as uvicorn does): uvicorn's default set-up would add its handlers
    default = None if log_file else uvicorn.config.LOGGING_CONFIG
    loop_factory = uvicorn.Config(
        app="unused:app",
        loop=settings.uvicorn["loop"],
        log_config=default,
        log_level=settings.uvicorn["log_level"],
    ).get_loop_factory()
    if log_file:
        try:
            _logging.apply_config_file(log_file, settings.uvicorn["log_level"], settings.app_dir)
        except _logging.LogConfigError as exc:  # checked before binding: the file changed since
            print(f"asgireload worker: {exc}", file=sys.stderr)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(worker.run(received))
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
