"""The Supervisor: the public surface of a reloading server, and its start and stop.

It binds the socket once, starts the scanners (watching.py) and the machine's command runner
(commandrunner.py), and at the end stops them and every worker. What happens in between is the
machine's to decide (machine.py) and the runner's to carry out.

A generation is ready before the one it replaces is told to drain (in sequential mode the old
one is drained first), so no request finds nobody listening: connections that arrive while no
worker accepts wait in the kernel's backlog of the socket the supervisor holds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any

from .. import _handoff
from .. import _protocol as protocol
from ..config import Config
from ..errors import AsgireloadError, ReloadTimeout, StartupError
from ..events import EventStream, ReloadEvent, State
from . import commands as c
from . import forkserver, projectlayers, settings, sockets
from . import machineevents as e
from .commandrunner import CommandRunner, WorkerSettings
from .debugging import DebugTerminal, coverage_misses_workers
from .liveconfig import LiveSettings
from .machine import Machine
from .outcomes import Outcomes
from .preflight import preflight
from .processes import Processes
from .records import Policy
from .scanner import Scanner
from .watching import Watching

logger = logging.getLogger("asgireload")

FORCED_STOP_WAIT = 2.0  # seconds workers killed at once are given to be reaped


class Supervisor:
    """Runs generations of workers for one Config. Use it through serve() or Reloader."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._fd_limit: int | None = None  # the soft limit before start() raised it
        self._queue: asyncio.Queue[e.Event] = asyncio.Queue()
        self._watching = Watching(config, self._queue.put_nowait)
        self.project = self._watching.project
        self.live = self._watching.live
        self.url = ""
        self.output: collections.deque[str] = collections.deque(maxlen=20000)
        self.error: BaseException | None = None  # an internal error that stopped the supervisor
        self._machine: Machine | None = None
        self._processes: Processes | None = None
        self._runner: CommandRunner | None = None
        self._listener: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._outcomes = Outcomes()
        self._broken: asyncio.Future[None] | None = None  # fails with an internal error
        self._stop_task: asyncio.Future[None] | None = None
        self._stopped = False
        # lent to a worker stopped at breakpoint(); the command line sets its own before start()
        self.debug_terminal: DebugTerminal | None = None
        self.on_command: Callable[[c.Command], None] | None = None  # the command line's screen clearing
        self.live_settings: LiveSettings | None = None  # the command line's settings files, re-read

    # ---------------------------------------------------------------- public surface

    @property
    def state(self) -> State:
        """starting, ready, reloading (a healthy generation serves, a newer one loads), failed
        (the error page serves), or stopped."""
        if self._stopped or self.error is not None:
            return "stopped"
        return self._machine.state if self._machine is not None else "starting"

    @property
    def generation(self) -> int:
        """The newest generation started (ready, failed, or still loading)."""
        return self._machine.generation if self._machine is not None else 0

    @property
    def failure(self) -> protocol.Failure | None:
        return self._machine.failure if self._machine is not None else None

    @property
    def pids(self) -> dict[str, int]:
        """The workers by role: serving, loading, standby, and draining (an older generation)."""
        return self._runner.pids() if self._runner is not None else {}

    @property
    def sockname(self) -> Any:
        return self._listener.getsockname() if self._listener is not None else None

    @property
    def watched(self) -> Scanner | tuple[()]:
        """The watched files (supports `in` and `len`)."""
        scanner = self._watching.scanner
        return scanner if scanner is not None else ()

    async def start(self, timeout: float | None = None) -> None:
        """Check, bind, start generation 1 and wait for its outcome (ready or failed).

        Raises StartupError (with nothing left bound or running) for a mistake in the command:
        a folder or module that does not exist, a port in use, an attribute that is not an app.
        Cancelled, or on any error, it stops everything it started before re-raising.
        """
        # connections held across a reload must not starve the next spawn; the app gets the old limit
        self._fd_limit = _handoff.raise_fd_limit()
        preflight(self.config)
        if coverage_misses_workers():
            logger.warning(
                "Coverage measures asgireload but not its workers, where the app runs: add "
                "`patch = subprocess` to the [run] section of your coverage configuration "
                "(coverage 7.10 or later; see the README's Debugging section)."
            )
        self._listener = sockets.bind(self.config)
        self.url = sockets.describe(self._listener, self.config)
        if not self.config.is_loopback and self.config.show_errors is None:
            logger.warning(
                "Listening on %s, not only on this machine: the error page will hide tracebacks and "
                "file paths. Pass --show-errors to show them anyway.",
                self.url,
            )
        runner = self._start_runner()
        self._broken = asyncio.get_running_loop().create_future()
        self._broken.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved here
        try:
            self._start_task(self._run(runner), "asgireload-supervisor")
            self._watching.start(
                self._start_task,
                live_settings=self.live_settings,
                tell_pages=runner.tell_pages,
                reconfigured=self._reconfigured,
                code_changed=self._layers_changed,
            )
            if self._watching.scanner is not None and self._machine is not None:
                projectlayers.connect(
                    self._processes.layers if self._processes is not None else None,
                    self._machine,
                    projectlayers.view_of(self._watching.scanner),
                    self._queue.put_nowait,
                )
            await self._queue.put(e.ReloadRequested("start"))
            first = await self.wait_for_generation(1, timeout=timeout)
            failure = self.failure
            if first.outcome == "failed" and failure is not None and failure.kind == "usage":
                raise StartupError(first.summary)
        except BaseException:
            await stop_completely(self, force=True)
            raise

    def _start_runner(self) -> CommandRunner:
        """The machine, the worker processes, and the runner that carries out what it decides."""
        read_env = functools.partial(settings.read_env, self.config)
        self._machine = machine = Machine(self._policy(), clock=time.time, read_env=read_env)
        output = self._capture if self.config.capture_output else None
        serving = lambda: machine.serving.id if machine.serving is not None else None  # noqa: E731
        self._processes = Processes(
            self._listener,
            self._queue.put_nowait,
            output,
            serving,
            self.debug_terminal,
            forkserver.for_config(self.config, self._listener, output),
        )
        self._runner = CommandRunner(
            machine,
            self._processes,
            self._queue,
            self._outcomes,
            settings_for=self._worker_settings,
            watch=self._watching.watch,
            on_command=self.on_command,
        )
        return self._runner

    async def stop(self, *, force: bool = False) -> None:
        """Drain every worker (kill at the deadline, or at once with force) and release everything.

        A second call while stopping waits for the first. Cancelled, it leaves the stop running:
        use stop_completely() to finish it whatever happens.
        """
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop(force))
        await asyncio.shield(self._stop_task)

    def kill_all(self) -> None:
        """Kill every worker now (a second Ctrl-C); stop() then finishes at once."""
        if self._processes is not None:
            self._processes.kill_all()

    def request_reload(self, reason: str = "requested") -> None:
        self._watching.check_site()
        self._queue.put_nowait(e.ReloadRequested(reason))

    async def wait_for_generation(self, generation: int, timeout: float | None) -> ReloadEvent:
        """Wait until generation `generation` (or a later one) is ready or has failed.

        Cancelling it cancels the wait only. Raises ReloadTimeout past `timeout`, StartupError if
        the server stops first, AsgireloadError if the supervisor stopped on an internal error.
        """
        try:
            event = await self._outcomes.wait(
                generation, timeout, unless=lambda: self._stopped or self.error is not None
            )
        except TimeoutError:
            raise ReloadTimeout(
                f"generation {generation} did not become ready or fail within {timeout} s "
                f"(the newest is {self.generation}, state {self.state})."
            ) from None
        if event is None:
            self.raise_error()
            raise StartupError("the server stopped before that generation settled.")
        return event

    def events(self) -> EventStream:
        """Every outcome from now on (subscribed at this call); a stream made after stop() is over."""
        return self._outcomes.stream()

    async def wait_until_broken(self) -> None:
        """Return never; raise AsgireloadError if the supervisor stops on an internal error.
        Cancelling it cancels the wait only."""
        assert self._broken is not None
        await asyncio.shield(self._broken)
        self.raise_error()

    def raise_error(self) -> None:
        """Raise AsgireloadError if the supervisor stopped on an internal error."""
        if self.error is not None:
            raise AsgireloadError(
                f"the supervisor stopped on an internal error (a bug in asgireload, please report it): "
                f"{self.error!r}"
            ) from self.error

    # ---------------------------------------------------------------- what the parts are given

    def _policy(self) -> Policy:
        files = self.live_settings.files if self.live_settings is not None else ()
        return dataclasses.replace(settings.policy_for(self.config, self.url), settings_files=files)

    def _reconfigured(self, config: Config) -> None:
        """A settings file was saved and read: the next generation gets the new Config (the
        machine replaces the warm worker)."""
        self.config = config
        if self._machine is not None:
            self._machine.policy = self._policy()

    def _layers_changed(self, paths: list[str]) -> None:
        """Code changed: a project layer holding one of these files forks no more."""
        layers = self._processes.layers if self._processes is not None else None
        if layers is not None:
            layers.changed(paths)

    def _worker_settings(self, preload: tuple[str, ...]) -> WorkerSettings:
        roots, run = self.project.roots, self.live.run
        return functools.partial(settings.worker_settings, self.config, roots, preload, self._fd_limit, run)

    def _capture(self, line: str) -> None:
        self.output.append(line)

    async def _run(self, runner: CommandRunner) -> None:
        """The runner's task: an exception there is a bug, and stops everything."""
        try:
            await runner.run()
        except Exception as exc:
            self._fail(exc)

    def _start_task(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """A task of ours that must never end with an error unseen: one that does stops us."""
        task = asyncio.create_task(work, name=name)
        self._tasks.append(task)

        def ended(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and isinstance(task.exception(), Exception) and self.error is None:
                self._fail(task.exception())  # type: ignore[arg-type]

        task.add_done_callback(ended)

    def _fail(self, exc: Exception) -> None:
        self.error = exc
        logger.error("asgireload stopped: the supervisor hit an internal error.", exc_info=exc)
        if self._broken is not None and not self._broken.done():
            self._broken.set_exception(exc)
        self._outcomes.wake()
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop(False))

    # ---------------------------------------------------------------- stopping

    async def _stop(self, force: bool) -> None:
        """The one stop (its own task, see stop()): no more events, then every worker ends."""
        if self._runner is not None:
            self._runner.cancel_timers()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        deadline = FORCED_STOP_WAIT if force else self.config.drain_timeout + 1.0
        if self._processes is not None and self._runner is not None:
            try:
                left_draining = self._runner.tell_workers_to_stop(force, machine_trusted=self.error is None)
            except Exception as exc:  # a bug in the machine must not leave workers running
                logger.error("asgireload could not stop its workers in order; killing them.", exc_info=exc)
                left_draining = set()
            await self._processes.close_all(left_draining, deadline)
        _handoff.restore_fd_limit(self._fd_limit)
        if self._listener is not None:
            self._listener.close()
            if self.config.uds is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self.config.uds)
        self._stopped = True
        self._outcomes.end()


async def run_until_cancelled(supervisor: Supervisor) -> None:
    """Start, serve until cancelled (or an internal error), then stop: the body of serve(reload=True).

    Cancelled at any point, it stops everything (see stop_completely) before CancelledError
    propagates; after an internal error it stops everything, then raises AsgireloadError."""
    try:
        await supervisor.start()
        await supervisor.wait_until_broken()
    finally:
        await stop_completely(supervisor)


async def stop_completely(supervisor: Supervisor, *, force: bool = False) -> None:
    """Stop, and finish stopping even if cancelled meanwhile (then re-raise CancelledError):
    afterwards no worker runs, no descriptor is open and the socket is closed."""
    stopping = asyncio.ensure_future(supervisor.stop(force=force))
    cancelled = False
    while not stopping.done():
        try:
            await asyncio.shield(stopping)
        except asyncio.CancelledError:
            cancelled = True
    stopping.result()
    if cancelled:
        raise asyncio.CancelledError


__all__ = ["EventStream", "ReloadEvent", "State", "Supervisor", "run_until_cancelled", "stop_completely"]
