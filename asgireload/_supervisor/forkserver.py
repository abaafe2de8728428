"""The fork server, supervisor side: a template process that forks warm workers (Linux).

Spawning a worker means a new interpreter importing uvicorn and the app's installed packages
again, on the cores the serving generation needs. The template (`_worker/template.py`) does
that once; every worker after the first is forked from it in a few milliseconds, shares its
pages, and is from then on an ordinary worker: its own session, its own generation tag, the
same control channel and Settings as a spawned one (`workers.attach`). The supervisor learns
of its exit from a pidfd the template sends with each answer, and of its exit status from the
template, which reaps it.

Every decision about templates (when to launch, replace, retire or give up on them, which
modules they import, whether a fork request forks, waits or spawns) is made in templatelife.py,
with no I/O. This module carries those decisions out: it launches templates (templatespawn.py;
the command's early one when templatelife takes it), reads their wire, turns what they say into
templatelife's events, and sends fork requests. The template's own tag is long enough that a
forked worker can write its own over it (see template._retag), so `_reaper` finds forked
workers' descendants.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from .. import _protocol as protocol
from .. import _reaper, _wire
from .._channel import Channel
from ..config import Config
from . import debugging, templatelife, templatespawn, workers
from . import templatetable as tt
from .children import ForkedChild, TemplateChild, end_forker
from .debugging import DebugTerminal
from .projectlayers import ProjectLayers
from .workers import Emit, SpawnError, WorkerProcess

logger = logging.getLogger("asgireload")

HISTORY = 256  # the latest events templatelife took, kept for diagnostics and tests


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
    off, reason = templatelife.forking_off(config.fork, config.standby, config.preload, unsafe_to_fork())
    if off:
        templatespawn.discard_early()
        if reason is not None:
            logger.debug("Spawning workers instead of forking them: %s.", reason)
        return None
    server = ForkServer(listener, output)
    server.layers = ProjectLayers(server) if config.project_layer else None
    return server


class TemplateHandle:
    """One template as the fork server holds it: its process, its channel, the fork requests
    waiting for an answer, and the workers it forked (it reaps them and reports their status)."""

    def __init__(self, template_id: int, process: templatespawn.TemplateProcess) -> None:
        self.id = template_id  # templatelife's name for it
        self.child = TemplateChild(process)
        self.pid = process.pid
        self.channel = process.channel
        self.receiver = _wire.LineReceiver(self.channel)
        self.answers: collections.deque[asyncio.Future[ForkedChild]] = collections.deque()
        self.forked: dict[int, ForkedChild] = {}
        self.sending: asyncio.Task[None] | None = None  # the last long line on its way

    def end(self) -> None:
        """Kill the template alone (the workers it forked lead sessions of their own) and close
        its channel: a fork request waiting on it spawns instead; its workers' exits need no
        status any more."""
        end_forker(self, SpawnError("the fork server ended"))


class ForkServer:
    """Carries out templatelife's decisions: launches templates, reads them, forks from them."""

    def __init__(self, listener: socket.socket, output: Callable[[str], None] | None) -> None:
        self._listener = listener
        self._output = output
        self.life = templatelife.TemplateLife()  # every decision
        self._templates: dict[int, TemplateHandle] = {}  # every template started and not yet reaped
        self._changed = asyncio.Event()  # set (and replaced) once templatelife took an event
        self.history: collections.deque[tt.Event] = collections.deque(maxlen=HISTORY)  # the latest
        self._tasks: set[asyncio.Task[None]] = set()
        self.layers: ProjectLayers | None = None  # the project layers, unless turned off

    @property
    def started(self) -> bool:
        return self.life.settings is not None

    @property
    def pid(self) -> int | None:
        """The running template's pid (for diagnostics and tests)."""
        template = self._templates.get(self.life.current) if self.life.current is not None else None
        return template.pid if template is not None and template.child.alive else None

    def start(self, settings: protocol.Settings) -> None:
        """Start the template now, in the background, with `settings`' preload list."""
        self._feed(tt.Start(settings))

    def replace(self) -> None:
        """Installed packages changed: the next fork comes from a new template."""
        self._feed(tt.InstalledPackagesChanged())

    def _feed(self, event: tt.Event) -> None:
        self.history.append(event)
        for command in self.life.handle(event):
            self._carry_out(command)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()  # fork requests waiting on a template look again

    def _carry_out(self, command: tt.Command) -> None:
        match command:
            case tt.LogLine(level, message):
                logger.log(level, "%s", message)
            case tt.Launch(template_id, settings):
                self._run(self._launch(template_id, settings))
            case tt.Retire(template_id):
                template = self._templates.get(template_id)
                if template is not None:
                    try:
                        _wire.send(template.channel, {"type": "retire"})
                    except OSError:
                        template.end()
            case tt.End(template_id):
                if (template := self._templates.get(template_id)) is not None:
                    template.end()
            case tt.Preload(template_id, modules):
                if (template := self._templates.get(template_id)) is not None:
                    line = _wire.frame({"type": "preload", "modules": list(modules)})
                    template.sending = self._run(self._send(template, line, after=template.sending))
            case tt.EndEarly():
                templatespawn.discard_early()
            case _:
                raise AssertionError(f"{command} is a fork request's step, not a command")

    async def fork(
        self, worker_id: int, wanted: protocol.Settings, emit: Emit, terminal: DebugTerminal | None = None
    ) -> WorkerProcess | None:
        """A worker forked from the template, with these settings (its breakpoint()s ask
        `terminal`); None when it must be spawned instead (SpawnError if the OS has no sockets
        left for it)."""
        if self.layers is not None and (forked := await self.layers.fork(worker_id, wanted, emit, terminal)):
            return forked
        request = tt.ForkRequest(wanted)
        loop = asyncio.get_running_loop()
        phase, phase_started = request.phase, loop.time()
        while True:
            current = self._templates.get(self.life.current) if self.life.current is not None else None
            process = current.child.process if current is not None else None
            request.environment_changed = templatespawn.changed_variable(process) if process else None
            *commands, step = self.life.route(request)
            for command in commands:
                self._carry_out(command)
            match step:
                case tt.Fork(template_id, answer_wait):
                    template = self._templates.get(template_id)
                    if template is None or not template.child.alive:
                        return None  # it exited a moment ago: its exit is news to templatelife yet
                    return await self._fork_from(template, worker_id, wanted, answer_wait, emit, terminal)
                case tt.Wait(deadline):
                    if request.phase is not phase:
                        phase, phase_started = request.phase, loop.time()
                    changed = self._changed
                    try:
                        async with asyncio.timeout(phase_started + deadline - loop.time()):
                            await changed.wait()
                    except TimeoutError:
                        request.timed_out = True
                case _:
                    return None

    async def _fork_from(
        self,
        template: TemplateHandle,
        worker_id: int,
        wanted: protocol.Settings,
        answer_wait: float,
        emit: Emit,
        terminal: DebugTerminal | None,
    ) -> WorkerProcess | None:
        parent, child, handoff, handoff_child, debug, debug_child = workers.socketpairs()
        tag = _reaper.new_tag(worker_id)
        answer: asyncio.Future[ForkedChild] = asyncio.get_running_loop().create_future()
        channel: Channel | None = None
        try:
            # its settings wait in its channel before it exists: no round trip after the fork
            channel = await workers.open_channel(parent, wanted)
            if template.sending is not None:
                await asyncio.shield(template.sending)  # the lines before it are all out
            template.answers.append(answer)
            fds = (child.fileno(), handoff_child.fileno(), self._listener.fileno(), debug_child.fileno())
            _wire.send(template.channel, {"type": "fork", "tag": tag}, fds)
            async with asyncio.timeout(answer_wait):
                process = await answer
        except (OSError, SpawnError, TimeoutError) as exc:
            if channel is not None:
                channel.close()
            for sock in (parent, handoff, debug):
                sock.close()
            answer.cancel()  # its answer, if it still comes, kills the worker
            self._feed(tt.ForkFailed(template.id, str(exc) or "no answer"))
            return None
        finally:
            for sock in (child, handoff_child, debug_child):
                sock.close()
        assert channel is not None
        process.tag = tag
        sockets = (parent, handoff, debug)
        return await workers.attach(worker_id, process, sockets, channel, emit, None, terminal)

    def _run(self, work: Coroutine[object, object, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _launch(self, template_id: int, settings: protocol.Settings) -> None:
        """Start a template (the task ends once it runs); it is forked from once it says hello."""
        if not self.life.launching(template_id):
            self._feed(tt.LaunchFailed(template_id, "replaced or stopped first"))
            return  # replaced or stopped before it began: nothing to start
        try:
            template = await self._spawn(template_id, settings)
        except SpawnError as exc:
            self._feed(tt.LaunchFailed(template_id, str(exc)))
            return
        self._feed(tt.Launched(template_id, template.pid))

    @staticmethod
    async def _send(template: TemplateHandle, line: bytes, after: asyncio.Task[None] | None = None) -> None:
        """Send a line to the template, after the one being sent; if it is gone, its exit says so."""
        if after is not None:
            await asyncio.gather(after, return_exceptions=True)
        with contextlib.suppress(OSError):
            await asyncio.get_running_loop().sock_sendall(template.channel, line)

    def _early_process(
        self, template_id: int, settings: protocol.Settings
    ) -> templatespawn.TemplateProcess | None:
        """The command's early template, if there is one and templatelife takes it."""
        early = templatespawn.peek_early()
        if early is None:
            return None
        changed = templatespawn.changed_variable(early)
        unlike = templatelife.unlike_now(self._output is not None, settings.env, changed)
        taken = None
        self.history.append(event := tt.EarlyFound(template_id, early.pid, unlike))
        for command in self.life.handle(event):
            if isinstance(command, tt.TakeEarly):
                taken = templatespawn.take_early()
            else:
                self._carry_out(command)
        return taken

    async def _spawn(self, template_id: int, settings: protocol.Settings) -> TemplateHandle:
        process = self._early_process(template_id, settings)
        try:
            process = process or templatespawn.spawn(self._output is not None)
        except OSError as exc:
            raise SpawnError(f"could not start the fork server: {exc.strerror or exc}") from exc
        loop = asyncio.get_running_loop()
        template = TemplateHandle(template_id, process)
        self._templates[template_id] = template
        template.child.exited.add_done_callback(lambda _: self._templates.pop(template_id, None))
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
                template.child.release()
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

    def _readable(self, template: TemplateHandle) -> None:
        try:
            messages = template.receiver.receive()
        except BlockingIOError:
            return
        except (OSError, _wire.ProtocolError) as exc:
            self._feed(tt.WireBroken(template.id, f"The fork server's channel broke: {exc}."))
            return
        if messages is None:
            self._feed(tt.WireBroken(template.id, "end of file", announce=False))
            return
        for message, fds in messages:
            if not self._take(template, message, fds):
                for fd in fds:
                    os.close(fd)
                self._feed(tt.WireBroken(template.id, f"The fork server sent {message!r}; ending it."))

    def _take(self, template: TemplateHandle, message: dict[str, Any], fds: list[int]) -> bool:
        """Act on one line of the template's; False if it could not have said it now."""
        if fds == [] and (event := tt.event_of(template.id, message)) is not None:
            trigger = tt.TemplateTrigger.HELLO if isinstance(event, tt.Greeted) else tt.TemplateTrigger.WARM
            if not self.life.allows(template.id, trigger):
                return False
            self._feed(event)
            return True
        match message.get("type"), fds:
            case "forked", [pidfd] if template.answers and isinstance(pid := message.get("pid"), int):
                # known at once, so that its exit status (maybe in this same read) finds it
                process = ForkedChild(pid, pidfd)
                template.forked[process.pid] = process
                answer = template.answers.popleft()
                if answer.done():  # the request gave up waiting: this worker is not wanted
                    process.kill()
                else:
                    answer.set_result(process)
                if self.life.allows(template.id, tt.TemplateTrigger.FORKED):
                    self._feed(tt.Forked(template.id))
            case "refused", [] if template.answers:
                if not (answer := template.answers.popleft()).done():
                    answer.set_exception(SpawnError(str(message.get("error"))))
            case "exited", [] if isinstance(returncode := message.get("returncode"), int) and isinstance(
                pid := message.get("pid"), int
            ):
                worker = template.forked.pop(pid, None)
                if worker is not None:
                    worker.status(returncode)
            case _:
                return False
        return True

    async def _watch(
        self, template: TemplateHandle, pipe: asyncio.BaseTransport | None, reading: asyncio.Task[None] | None
    ) -> None:
        """When a template exits, templatelife decides what next. Its output pipe stays open
        until the workers it forked (which write to it too) are gone."""
        try:
            await template.child.wait()
        except asyncio.CancelledError:
            if pipe is not None:
                pipe.close()
            raise
        template.end()
        if pipe is not None and reading is not None:
            reading.add_done_callback(lambda _: pipe.close())
        self._feed(tt.Exited(template.id))

    async def aclose(self) -> None:
        """End the templates (the workers they forked are ended by their owners) and wait for them."""
        templates = list(self._templates.values())  # in use, retired, or ended and not yet gone
        if self.layers is not None:
            self.layers.close()
        self._feed(tt.Close())  # the early one too, if it was never taken
        # the supervisor is stopping: whatever still carries a template's tag goes too
        await asyncio.gather(*(template.child.aclose(0) for template in templates))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for template in {*templates, *self._templates.values()}:
            template.end()
            template.child.release()
            for worker in template.forked.values():  # killed by their owners by now: no status comes
                worker.release()
