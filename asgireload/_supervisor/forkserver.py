"""The fork server, supervisor side: a template process that forks warm workers (Linux).

Spawning a worker means a new interpreter importing uvicorn and the app's installed packages
again, on the cores the serving generation needs. The template (`_worker/template.py`) does
that once; every worker after the first is forked from it in a few milliseconds, shares its
pages, and is from then on an ordinary worker: its own session, its own generation tag, the
same control channel and Settings as a spawned one (`workers.attach`). The supervisor learns
of its exit from a pidfd the template sends with each answer, and of its exit status from the
template, which reaps it.

When forking is not possible (not Linux, a tracer or debugger in the supervisor, a thread in
the template, a template that dies before it is ready), workers are spawned as before, and the
reason is logged once at debug level. A template that dies is replaced without a reload (a few
times); one whose installed packages changed is replaced, and the old one exits once the
workers it forked have; one that lacks installed modules the app turned out to import imports
them on request, before the next fork. The template's own tag is long enough that a forked
worker can write its own over it (see template._retag), so `_reaper` finds forked workers'
descendants. The first template of the `asgireload` command was started before the supervisor
imported anything (templatespawn.py); it is used if it is the template that would start now.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine

from .. import _forkwire, _reaper
from .. import _protocol as protocol
from ..config import Config
from . import debugging, templatespawn, workers
from .debugging import DebugTerminal
from .workers import Emit, SpawnError, WorkerProcess

logger = logging.getLogger("asgireload")

READY_WAIT = 2.0  # seconds a fork request waits for a template still importing, then spawns
FORK_WAIT = 5.0  # seconds a fork request waits for the template's answer
WARM_WAIT = 60.0  # seconds a fork waits for a template importing the preload list, then spawns
STATUS_WAIT = 1.0  # seconds to wait for the template's report of an exit status
MAX_DEATHS = 3  # templates that die before forking is given up


def unsafe_to_fork() -> str | None:
    """Why forking workers is off for this supervisor, or None. A debugger or tracer in the
    supervisor follows the processes it spawns, not those another process forks."""
    if not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"):
        return "forking a worker from a template needs Linux"
    if debugging.tracer_active():
        return "a debugger, tracer or coverage follows the supervisor"
    return None


def for_config(
    config: Config, listener: socket.socket, output: Callable[[str], None] | None
) -> ForkServer | None:
    """The fork server for this configuration, or None (and why, once, at debug level)."""
    if not (config.fork and config.standby and config.preload):
        templatespawn.discard_early()
        return None  # asked not to: --no-fork, or no warm worker to fork at all
    reason = unsafe_to_fork()
    if reason is not None:
        templatespawn.discard_early()
        logger.debug("Spawning workers instead of forking them: %s.", reason)
        return None
    return ForkServer(listener, output)


def _failed_imports(warm: dict[str, object]) -> list[str]:
    """The modules a template could not import (said once, at debug level): workers import them."""
    failed = warm.get("failed")
    names = [str(name) for name in failed] if isinstance(failed, list) else []
    if names:
        logger.debug("The fork server could not import %s; workers will import them themselves.", names)
    return names


def _missing(wanted: tuple[str, ...], preloaded: frozenset[str]) -> list[str]:
    """The installed packages' modules the workers need and the template lacks. Those of the
    standard library a fork imports itself (a few milliseconds); the next start-up's template
    has them (the warm cache lists them)."""
    stdlib = sys.stdlib_module_names
    return [
        name
        for name in wanted
        if name not in preloaded
        and name.partition(".")[0] not in stdlib
        and not name.startswith("_sysconfigdata_")  # the stdlib's, named after the platform
    ]


def _modules(hello: dict[str, object]) -> frozenset[str]:
    modules = hello.get("modules")
    return frozenset(str(name) for name in modules) if isinstance(modules, list) else frozenset()


class ForkedProcess:
    """A worker forked by a template, as much of asyncio's Process as the supervisor uses."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[None] = self._loop.create_future()
        self._pidfd: int | None = pidfd
        self._gone = False
        self._orphaned = False  # its template is gone: no status will come
        self._loop.add_reader(pidfd, self._on_exit)

    def _on_exit(self) -> None:
        self._close_pidfd()
        self._gone = True
        if self.returncode is not None or self._orphaned:
            self._set_exited()
        else:
            self._loop.call_later(STATUS_WAIT, self._set_exited)

    def status(self, returncode: int) -> None:
        self.returncode = returncode
        if self._gone:
            self._set_exited()

    def orphan(self) -> None:
        self._orphaned = True
        if self._gone:
            self._set_exited()

    def _set_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    async def wait(self) -> int | None:
        await asyncio.shield(self.exited)
        return self.returncode

    def close(self) -> None:
        """Stop watching (the supervisor is stopping and has killed it)."""
        self._close_pidfd()
        self._set_exited()


class Template:
    """One template process and its channel."""

    def __init__(self, process: templatespawn.TemplateProcess) -> None:
        self.process = process
        self.pid = process.pid
        self.exited: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.channel = channel = process.channel
        self.tag = process.tag
        self.receiver = _forkwire.Receiver(channel)
        self.hello: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()
        self.warm: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()
        self.answers: collections.deque[asyncio.Future[ForkedProcess]] = collections.deque()
        self.children: dict[int, ForkedProcess] = {}
        self.preloaded: frozenset[str] = frozenset()
        self.ready = False
        self.forked = False  # it forked a worker
        self.env: dict[str, str] = {}  # the env file's values it imported with
        self.sending: asyncio.Task[None] | None = None  # the last long line on its way
        self.settled: asyncio.Future[bool] = asyncio.get_running_loop().create_future()  # ready, or never
        self.tasks: list[asyncio.Task[None]] = []

    def kill(self) -> None:
        """End the template alone: the workers it forked live on (they lead sessions of their own)."""
        self.process.kill()

    def on_exit(self) -> None:
        """Its pidfd is readable: it has exited (reaped here; asyncio does not know of it)."""
        if self.process.reap() is not None:
            self._unwatch()
            os.close(self.process.pidfd)
            self.process.pidfd = -1
            self._set_exited()

    def finish(self) -> None:
        """The supervisor is done with it: killed, reaped if it can be within a second (see
        templatespawn.close), and nothing of it left open here."""
        self._unwatch()
        templatespawn.close(self.process)
        if self.process.returncode is not None:
            self._set_exited()

    def _unwatch(self) -> None:
        if self.process.pidfd >= 0:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self.process.pidfd)

    def _set_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def close(self) -> None:
        self.kill()
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.channel.fileno())
        self.channel.close()
        self.receiver.close()
        for answer in self.answers:
            if not answer.done():
                answer.set_exception(SpawnError("the fork server ended"))
        self.answers.clear()
        for stage in (self.hello, self.warm):
            if not stage.done():
                stage.set_exception(SpawnError("the fork server ended before it was ready"))
                stage.exception()  # retrieved: nobody may be waiting for it any more
        if not self.settled.done():
            self.settled.set_result(False)
        for child in self.children.values():
            child.orphan()


class ForkServer:
    """Forks workers from a template, replacing the template when needed; or says it cannot."""

    def __init__(self, listener: socket.socket, output: Callable[[str], None] | None) -> None:
        self._listener = listener
        self._output = output
        self._template: Template | None = None
        self._settings: protocol.Settings | None = None  # the last template's (preload list)
        self._off: str | None = None  # why forking was given up
        self._deaths = 0
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._launching: asyncio.Task[None] | None = None
        self._retired: set[Template] = set()  # replaced, until the workers they forked are gone
        self._alive: set[Template] = set()  # every template started and not yet reaped

    @property
    def started(self) -> bool:
        return self._settings is not None

    @property
    def pid(self) -> int | None:
        """The running template's pid (for diagnostics and tests)."""
        template = self._template
        return template.pid if template is not None and not template.exited.done() else None

    def start(self, settings: protocol.Settings) -> None:
        """Start the template now, in the background, with `settings`' preload list."""
        if self._off is None and not self._closing:
            self._settings = settings
            self._launching = self._run(self._launch(settings))

    def replace(self) -> None:
        """Installed packages changed: the next fork comes from a new template."""
        if self._settings is not None and self._off is None and not self._closing:
            if self._template is not None:
                self._retire(self._template)
                self._template = None
            self.start(self._settings)

    async def fork(
        self, worker_id: int, wanted: protocol.Settings, emit: Emit, terminal: DebugTerminal | None = None
    ) -> WorkerProcess | None:
        """A worker forked from the template, with these settings (its breakpoint()s ask
        `terminal`); None when it must be spawned instead (SpawnError if the OS has no sockets
        left for it)."""
        template = await self._usable()
        changed = None if template is None else templatespawn.changed_variable(template.process)
        if template is not None and (template.env != wanted.env or changed is not None):
            # the env file or the environment changed: the template and what it imported have
            # the old values, a worker spawned now would have the new ones
            logger.debug("The environment changed (%s); starting a new fork server.", changed or "env file")
            self._settings = wanted
            self.replace()
            template = await self._usable()
        if template is None:
            return None
        if template.hello.done() and not template.warm.done():
            # importing the preload list: a request now is served after it, so wait for that
            # here, not against FORK_WAIT (a reload meanwhile starts a worker of its own)
            try:
                async with asyncio.timeout(WARM_WAIT):
                    await asyncio.shield(template.warm)
            except (TimeoutError, SpawnError):
                return None
            if self._off is not None or template.exited.done():
                return None  # what it imported started a thread: no more forking
        if missing := _missing(wanted.preload, template.preloaded):
            # the app imports more than the template has: it imports them too, before this fork
            logger.debug("The fork server imports %s too.", ", ".join(missing[:5]))
            self._settings = dataclasses.replace(self._settings or wanted, preload=wanted.preload)
            template.preloaded |= frozenset(missing)
            line = _forkwire.encode({"type": "preload", "modules": missing})
            template.sending = self._run(self._send(template, line, after=template.sending))
        parent, child, handoff, handoff_child, debug, debug_child = workers.socketpairs()
        tag = _reaper.new_tag(worker_id)
        answer: asyncio.Future[ForkedProcess] = asyncio.get_running_loop().create_future()
        channel: protocol.Channel | None = None
        try:
            # its settings wait in its channel before it exists: no round trip after the fork
            channel = await workers.open_channel(parent, wanted)
            if template.sending is not None:
                await asyncio.shield(template.sending)  # the lines before it are all out
            template.answers.append(answer)
            fds = (child.fileno(), handoff_child.fileno(), self._listener.fileno(), debug_child.fileno())
            _forkwire.send(template.channel, {"type": "fork", "tag": tag}, fds)
            async with asyncio.timeout(WARM_WAIT if missing else FORK_WAIT):  # imports first?
                process = await answer
        except (OSError, SpawnError, TimeoutError) as exc:
            if channel is not None:
                channel.close()
            for sock in (parent, handoff, debug):
                sock.close()
            answer.cancel()  # its answer, if it still comes, kills the worker
            logger.debug("The fork server could not fork a worker (%s); spawning it.", exc or "no answer")
            self._template_failed(template)
            return None
        finally:
            for sock in (child, handoff_child, debug_child):
                sock.close()
        assert channel is not None
        sockets = (parent, handoff, debug)
        return await workers.attach(
            worker_id, process, tag, process.exited, sockets, channel, emit, None, terminal
        )

    async def _usable(self) -> Template | None:
        """The template to fork from: the ready one, else the one starting once it is ready; None
        if there is none by READY_WAIT (a slow or stuck import: this worker is spawned, a later
        one may fork) or forking was given up."""
        try:
            async with asyncio.timeout(READY_WAIT):
                while self._off is None and not self._closing:
                    template = self._template
                    if template is not None and template.ready and not template.exited.done():
                        return template
                    if template is not None and not template.hello.done() and not template.exited.done():
                        # still importing uvicorn: the request waits in its channel and is
                        # served first, before it imports the preload list
                        return template
                    if template is not None:
                        if not await asyncio.shield(template.settled):
                            return None  # it died or has threads: _watch or _launch decided what next
                        continue
                    if self._settings is None:
                        return None
                    if self._launching is None or self._launching.done():
                        self.start(self._settings)
                    if self._launching is None:
                        return None
                    await asyncio.shield(self._launching)
                    if self._template is None:
                        return None
        except TimeoutError:
            logger.debug("The fork server is not ready yet; spawning this worker.")
        return None

    def _give_up(self, reason: str) -> None:
        if self._off is None:
            self._off = reason
            logger.debug("Spawning workers instead of forking them: %s.", reason)
        if self._template is not None:
            self._retire(self._template)  # one that forked workers waits for them; else it ends now
        self._template = None

    def _template_failed(self, template: Template) -> None:
        """It did not fork (it died, or its channel broke): a new one forks the next worker."""
        if template is self._template:
            self._deaths += 1
            self.replace()

    def _retire(self, template: Template) -> None:
        """No more forks from it; it exits once the workers it forked have (it reaps them and
        reports how they ended, and they are never orphaned)."""
        if template.exited.done() or not template.forked:
            template.close()
            return
        template.ready = False
        self._retired.add(template)
        template.exited.add_done_callback(lambda _: self._retired.discard(template))
        try:
            _forkwire.send(template.channel, {"type": "retire"})
        except OSError:
            template.close()

    def _run(self, work: Coroutine[object, object, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _launch(self, settings: protocol.Settings) -> None:
        """Start a template (the task ends once it runs); it is forked from once it says hello."""
        if self._closing:  # a launch that only runs once aclose() has begun: nothing to start
            return
        try:
            template = await self._spawn(settings)
        except SpawnError as exc:
            self._give_up(str(exc))
            return
        self._template = template
        self._run(self._become_ready(template, settings))

    async def _become_ready(self, template: Template, settings: protocol.Settings) -> None:
        try:
            hello = await template.hello  # it can fork: the first worker need not wait for the preload
            if not self._threads_allow_forking(hello):
                return
            template.preloaded = _modules(hello) | frozenset(settings.preload)  # soon
            self._mark_ready(template)
            warm = await template.warm
        except SpawnError:
            return
        if not self._threads_allow_forking(warm):
            return
        failed = _failed_imports(warm)
        template.preloaded = _modules(warm) | frozenset(failed)  # all it has, and what is no use trying
        logger.debug(
            "The fork server is ready (pid %d, %s modules preloaded).", template.pid, warm.get("preloaded")
        )

    @staticmethod
    async def _send(template: Template, line: bytes, after: asyncio.Task[None] | None = None) -> None:
        """Send a line to the template, after the one being sent; if it is gone, its exit says so."""
        if after is not None:
            await asyncio.gather(after, return_exceptions=True)
        with contextlib.suppress(OSError):
            await asyncio.get_running_loop().sock_sendall(template.channel, line)

    def _warmer(self, template: Template, warm: dict[str, object]) -> None:
        """A template imported more modules: what it has now, or no forking if a thread started."""
        if not self._threads_allow_forking(warm):
            return
        failed = _failed_imports(warm)
        template.preloaded |= _modules(warm) | frozenset(failed)
        logger.debug(
            "The fork server is ready (pid %d, %s modules preloaded).", template.pid, warm.get("preloaded")
        )

    def _threads_allow_forking(self, hello: dict[str, object]) -> bool:
        threads = hello.get("threads")
        if isinstance(threads, int) and threads > 1:
            self._give_up(f"{threads} threads were running in the fork server after its imports")
            return False
        return True

    @staticmethod
    def _mark_ready(template: Template) -> None:
        template.ready = True
        if not template.settled.done():
            template.settled.set_result(True)

    async def _spawn(self, settings: protocol.Settings) -> Template:
        capture = self._output is not None
        early = templatespawn.take_early()
        if early is not None and (why := templatespawn.unlike_now(early, capture, settings.env)):
            logger.debug("Starting the fork server again: the one the command started %s.", why)
            templatespawn.close(early)
            early = None
        elif early is not None:
            logger.debug("The fork server is the one the command started first (pid %d).", early.pid)
        try:
            process = early or templatespawn.spawn(capture)
        except OSError as exc:
            raise SpawnError(f"could not start the fork server: {exc.strerror or exc}") from exc
        loop = asyncio.get_running_loop()
        template = Template(process)
        template.env = dict(settings.env)
        self._alive.add(template)
        template.exited.add_done_callback(lambda _: self._alive.discard(template))
        loop.add_reader(process.pidfd, template.on_exit)
        reading: asyncio.Task[None] | None = None
        pipe: asyncio.BaseTransport | None = None
        if self._output is not None and process.output is not None:
            # forked workers write here too, for as long as they live: read until they are all gone
            stream = asyncio.StreamReader(limit=workers.OUTPUT_CHUNK, loop=loop)
            file = os.fdopen(process.output, "rb", buffering=0)
            process.output = None  # the transport owns it now
            try:
                pipe, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stream), file)
            except BaseException:  # cancelled (stopping), or out of descriptors: it is nobody's
                file.close()
                template.finish()
                raise
            reading = self._run(workers._read_output(stream, self._output))
        template.channel.setblocking(False)
        loop.add_reader(template.channel.fileno(), self._readable, template)
        self._run(self._watch(template, pipe, reading))
        # whole lines, however long (the preload list): a fork request may only follow a line
        template.sending = self._run(
            self._send(template, protocol.encode(settings, protocol.TRUSTED_MAX_LINE))
        )
        return template

    def _readable(self, template: Template) -> None:
        try:
            messages = template.receiver.receive()
        except BlockingIOError:
            return
        except (OSError, _forkwire.WireError) as exc:
            if not self._closing:
                logger.debug("The fork server's channel broke: %s.", exc)
            messages = None
        if messages is None:
            asyncio.get_running_loop().remove_reader(template.channel.fileno())
            template.kill()
            return
        for message, fds in messages:
            match message.get("type"), fds:
                case "warm", [] if template.warm.done():
                    self._warmer(template, message)  # it imported more, on request
                case "hello" | "warm", []:
                    for stage in (
                        (template.hello, template.warm) if message["type"] == "warm" else [template.hello]
                    ):
                        if not stage.done():
                            stage.set_result(message)
                case "forked", [pidfd] if template.answers and isinstance(message.get("pid"), int):
                    # known at once, so that its exit status (maybe in this same read) finds it
                    process = ForkedProcess(message["pid"], pidfd)
                    template.children[process.pid] = process
                    template.forked = True
                    answer = template.answers.popleft()
                    if answer.done():  # the request gave up waiting: this worker is not wanted
                        with contextlib.suppress(OSError):
                            os.kill(process.pid, signal.SIGKILL)
                    else:
                        answer.set_result(process)
                case "refused", [] if template.answers:
                    if not (answer := template.answers.popleft()).done():
                        answer.set_exception(SpawnError(str(message.get("error"))))
                case "exited", [] if isinstance(message.get("returncode"), int):
                    child = template.children.pop(message.get("pid"), None)  # type: ignore[arg-type]
                    if child is not None:
                        child.status(message["returncode"])
                case _:
                    for fd in fds:
                        os.close(fd)
                    logger.debug("The fork server sent %r; ending it.", message)
                    template.kill()

    async def _watch(
        self, template: Template, pipe: asyncio.BaseTransport | None, reading: asyncio.Task[None] | None
    ) -> None:
        """When a template exits: close it; replace it if it was the one in use (a few times).

        Its output pipe stays open until the workers it forked (which write to it too) are gone."""
        try:
            await asyncio.shield(template.exited)
        except asyncio.CancelledError:
            if pipe is not None:
                pipe.close()
            raise
        was_ready = template.ready
        template.close()
        if pipe is not None and reading is not None:
            reading.add_done_callback(lambda _: pipe.close())
        if self._closing or self._off is not None:
            return
        if template is self._template:
            self._template = None
            self._deaths += 1  # killed, or crashed at import (then it would again): a few times
            if self._deaths >= MAX_DEATHS:
                how = "after it was ready" if was_ready else "before it was ready"
                self._give_up(f"the fork server died {self._deaths} times, the last {how}")
                return
            logger.debug("The fork server (pid %d) exited; starting another.", template.pid)
            if self._settings is not None:
                self.start(self._settings)

    async def aclose(self) -> None:
        """Kill the templates (the workers they forked are ended by their owners) and wait for them."""
        self._closing = True
        templatespawn.discard_early()  # stopped before its first fork
        templates = list(self._alive)  # in use, retired, or ended and not yet gone
        for template in templates:
            template.kill()
            # the supervisor is stopping: whatever still carries the template's tag goes too
            _reaper.kill_generation(None, template.tag)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(workers.KILL_WAIT):
                await asyncio.gather(*(asyncio.shield(t.exited) for t in templates))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for template in {*templates, *self._alive}:
            template.close()
            template.finish()
            for child in template.children.values():  # killed by their owners by now: no status comes
                child.close()
        self._template = None
