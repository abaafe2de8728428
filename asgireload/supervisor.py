"""The supervisor's shell: sockets, processes, the scanner, timers and logging around the core.

Every event (a worker's message, its exit, a file change, a manual reload, a timer) goes through
one queue to one task, which hands it to the pure state machine (`_supervisor/machine.py`, whose
table and diagram say which moves are legal) and carries out the commands it returns, in order.
Nothing here decides anything about generations: it only does what the machine asks and tells it
what happened.

A generation is ready before the one it replaces is told to drain (in sequential mode the old
one is drained first), so no request finds nobody listening: connections that arrive while no
worker accepts wait in the kernel's backlog of the socket the supervisor holds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from . import _editable, _handoff, _sockets, _workers, protocol
from ._paths import relative
from ._preflight import preflight
from ._supervisor import commands as c
from ._supervisor import events as e
from ._supervisor.machine import Machine
from ._supervisor.records import Policy
from ._supervisor.table import Role
from ._workers import SpawnError, WorkerProcess
from .config import Config
from .envfile import EnvFileError, read_env_file
from .errors import AsgireloadError, ReloadTimeout, StartupError
from .events import EventStream, ReloadEvent, State
from .scanner import Scanner, stat_key
from .watchfilter import WatchFilter

logger = logging.getLogger("asgireload")

PACKAGES_POLL = 30.0  # seconds between full scans of preloaded packages (file events are the hint)
FORCED_STOP_WAIT = 2.0  # seconds workers killed at once are given to be reaped


class Supervisor:
    """Runs generations of workers for one Config. Use it through serve() or Reloader."""

    def __init__(self, config: Config) -> None:
        self.config = config
        editable = _editable.editable_roots(config.app_dir) if config.watch_editable else []
        self.project = WatchFilter(
            (*config.watch_roots, *editable), config.reload_includes, config.reload_excludes
        )
        if editable:
            logger.info(
                "Also watching packages installed in editable mode from this checkout: %s "
                "(--no-watch-editable turns this off).",
                ", ".join(relative(p) for p in editable),
            )
        self.url = ""
        self.output: collections.deque[str] = collections.deque(maxlen=20000)
        self.error: BaseException | None = None  # an internal error that stopped the supervisor
        self._machine: Machine | None = None
        self._queue: asyncio.Queue[e.Event] = asyncio.Queue()
        self._listener: Any = None
        self._scanner: Scanner | None = None
        self._packages: Scanner | None = None  # installed packages the standby preloads
        self._tasks: list[asyncio.Task[None]] = []
        self._processes: dict[int, WorkerProcess] = {}  # by the machine's worker id
        self._timers: dict[e.TimerFired, asyncio.TimerHandle] = {}
        self._settled = asyncio.Condition()
        self._outcomes: dict[int, ReloadEvent] = {}
        self._subscribers: list[asyncio.Queue[ReloadEvent | None]] = []
        self._broken: asyncio.Future[None] | None = None  # fails with an internal error
        self._stop_task: asyncio.Future[None] | None = None
        self._stopped = False
        self._held = _handoff.Held()  # handed-over connections waiting for a generation to serve them

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
        machine = self._machine
        if machine is None:
            return {}
        pids = {}
        for role, worker in (
            ("serving", machine.serving),
            ("loading", machine.loading),
            ("standby", machine.standby),
        ):
            process = self._processes.get(worker.id) if worker is not None else None
            if process is not None and process.alive:
                pids[role] = process.pid
        for worker in machine.workers.values():  # until its exit is handled, and all it started has ended
            process = self._processes.get(worker.id)
            if worker.role is Role.DRAINING and process is not None:
                pids["draining"] = process.pid
        return pids

    @property
    def sockname(self) -> Any:
        return self._listener.getsockname() if self._listener is not None else None

    @property
    def watched(self) -> Scanner | tuple[()]:
        """The watched files (supports `in` and `len`)."""
        return self._scanner if self._scanner is not None else ()

    async def start(self, timeout: float | None = None) -> None:
        """Check, bind, start generation 1 and wait for its outcome (ready or failed).

        Raises StartupError (with nothing left bound or running) for a mistake in the command:
        a folder or module that does not exist, a port in use, an attribute that is not an app.
        Cancelled, or on any error, it stops everything it started before re-raising.
        """
        _handoff.raise_fd_limit()  # connections held across a reload must not starve the next spawn
        preflight(self.config)
        self._listener = _sockets.bind(self.config)
        self.url = _sockets.describe(self._listener, self.config)
        if not self.config.is_loopback and self.config.show_errors is None:
            logger.warning(
                "Listening on %s, not only on this machine: the error page will hide tracebacks and "
                "file paths. Pass --show-errors to show them anyway.",
                self.url,
            )
        self._machine = Machine(self._policy(), clock=time.time, read_env=self._read_env)
        self._broken = asyncio.get_running_loop().create_future()
        self._broken.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved here
        try:
            self._scanner = Scanner(
                self._on_change,
                interval=self.config.poll_interval,
                includes=self.project if self.config.reload_includes else None,
                force_polling=self.config.force_polling,
            )
            self._tasks.append(asyncio.create_task(self._run(), name="asgireload-supervisor"))
            self._tasks.append(asyncio.create_task(self._scanner.run(), name="asgireload-scanner"))
            if self.config.preload and self.config.standby:
                self._packages = Scanner(
                    self._on_packages_change,
                    interval=PACKAGES_POLL,
                    force_polling=self.config.force_polling,
                    fast_poll=None,  # an upgrade is found by the next full scan: no fast polling
                )
                self._tasks.append(asyncio.create_task(self._packages.run(), name="asgireload-packages"))
            if self.config.env_file is not None:
                self._scanner.watch([(self.config.env_file, stat_key(self.config.env_file))])
            await self._queue.put(e.ReloadRequested("start"))
            first = await self.wait_for_generation(1, timeout=timeout)
            failure = self.failure
            if first.outcome == "failed" and failure is not None and failure.kind == "usage":
                raise StartupError(first.summary)
        except BaseException:
            await stop_completely(self, force=True)
            raise

    async def stop(self, *, force: bool = False) -> None:
        """Drain every worker (kill at the deadline, or at once with force) and release everything.

        A second call while stopping waits for the first. Cancelled, it leaves the stop running:
        use stop_completely() to finish it whatever happens.
        """
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop(force))
        await self._stop_task

    def kill_all(self) -> None:
        """Kill every worker now (a second Ctrl-C); stop() then finishes at once."""
        for process in list(self._processes.values()):
            process.kill()

    def request_reload(self, reason: str = "requested") -> None:
        self._queue.put_nowait(e.ReloadRequested(reason))

    async def wait_for_generation(self, generation: int, timeout: float | None) -> ReloadEvent:
        """Wait until generation `generation` (or a later one) is ready or has failed.

        Cancelling it cancels the wait only. Raises ReloadTimeout past `timeout`, StartupError if
        the server stops first, AsgireloadError if the supervisor stopped on an internal error.
        """

        def settled() -> bool:
            return self._stopped or self.error is not None or any(g >= generation for g in self._outcomes)

        try:
            async with asyncio.timeout(timeout), self._settled:
                await self._settled.wait_for(settled)
        except TimeoutError:
            raise ReloadTimeout(
                f"generation {generation} did not become ready or fail within {timeout} s "
                f"(the newest is {self.generation}, state {self.state})."
            ) from None
        if not any(g >= generation for g in self._outcomes):
            self.raise_error()
            raise StartupError("the server stopped before that generation settled.")
        return self._outcomes[min(g for g in self._outcomes if g >= generation)]

    def events(self) -> EventStream:
        """Every outcome from now on (subscribed at this call); a stream made after stop() is over."""
        return EventStream(self._subscribers, ended=self._stopped)

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

    # ---------------------------------------------------------------- events in, commands out

    def _policy(self) -> Policy:
        c = self.config
        return Policy(
            app=str(c.app),
            url=self.url,
            sequential=c.sequential,
            keep_last_good=c.keep_last_good,
            standby=c.standby,
            preload=c.preload,
            drain_timeout=c.drain_timeout,
            env_file=c.env_file,
            cwd=os.getcwd(),
        )

    def _on_change(self, paths: list[str], since: float) -> None:
        self._queue.put_nowait(e.FileChanged(tuple(paths), since))

    def _on_packages_change(self, paths: list[str], since: float) -> None:
        self._queue.put_nowait(e.PackagesChanged(tuple(paths)))

    async def _run(self) -> None:
        """Feed the machine one event at a time; an exception here is a bug, and stops everything."""
        try:
            while True:
                await self._feed(await self._queue.get())
        except Exception as exc:
            self._fail(exc)

    async def _feed(self, event: e.Event) -> None:
        """Hand one event to the machine and carry out its commands. What a command reports back
        (a spawn's result) is handled next, before any other event."""
        assert self._machine is not None
        if isinstance(event, e.WorkerExited) and (process := self._processes.pop(event.worker, None)):
            process.close()
        results: collections.deque[e.Event] = collections.deque([event])
        while results:
            for command in self._machine.handle(results.popleft()):
                result = await self._execute(command)
                if result is not None:
                    results.append(result)

    def _fail(self, exc: Exception) -> None:
        self.error = exc
        logger.error("asgireload stopped: the supervisor hit an internal error.", exc_info=exc)
        if self._broken is not None and not self._broken.done():
            self._broken.set_exception(exc)
        asyncio.get_running_loop().create_task(self._notify())
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop(False))

    async def _execute(self, command: c.Command) -> e.Event | None:
        process = self._processes.get(getattr(command, "worker", -1))
        match command:
            case c.Spawn():
                return await self._spawn(command)
            case c.Load():
                if process is not None:
                    process.send(protocol.Load(command.generation, dict(command.env), command.failure))
            case c.Serve():
                if process is not None:
                    process.send(protocol.Serve())
                if self._held:
                    self._relay(None, self._held.take())
            case c.ShowFailure():
                if process is not None:
                    process.send(protocol.ShowFailure(command.failure))
            case c.Drain():
                if process is not None:
                    process.send(protocol.Drain(command.timeout))
            case c.Kill():
                if process is not None:
                    process.kill()
            case c.Watch():
                self._watch(command)
            case c.ReportOutcome():
                self._report(command)
            case c.ArmTimer():
                if (earlier := self._timers.pop(command.event, None)) is not None:
                    earlier.cancel()
                loop = asyncio.get_running_loop()
                self._timers[command.event] = loop.call_later(command.delay, self._timer_fired, command.event)
            case c.Log():
                logger.log(command.level, command.text)
        return None

    def _timer_fired(self, event: e.TimerFired) -> None:
        self._timers.pop(event, None)
        self._queue.put_nowait(event)

    async def _spawn(self, command: c.Spawn) -> e.Event:
        """Start a worker process; its result (started, or could not be) is the machine's next event."""
        spawning = asyncio.ensure_future(
            _workers.spawn(
                command.worker,
                functools.partial(self._worker_settings, command.preload),
                self._listener,
                self._queue.put_nowait,
                self._capture if self.config.capture_output else None,
            )
        )
        try:
            process = await asyncio.shield(spawning)
        except SpawnError as exc:
            return e.SpawnFailed(command.worker, str(exc))
        except asyncio.CancelledError:
            # stop() cancelled us mid-spawn: finish it, so that stop() sees the worker and ends it
            with contextlib.suppress(SpawnError):
                late = await spawning
                self._processes[late.id] = late
            raise
        self._processes[process.id] = process
        process.stop_relaying = _handoff.listen(process.handoff, lambda fds: self._relay(process, fds))
        return e.WorkerStarted(command.worker, process.pid)

    def _relay(self, sender: WorkerProcess | None, connections: list[_handoff.Connection]) -> None:
        """Pass connections a draining worker handed over to the serving one (or hold them)."""
        current = self._machine.serving if self._machine is not None else None
        target = self._processes.get(current.id) if current is not None else None
        if target is not None and target is not sender and target.alive:
            self._held.forward(target.handoff, connections)
        else:
            self._held.hold(connections)

    def _watch(self, command: c.Watch) -> None:
        if self._scanner is None:
            return
        entries, packages = [], []
        for path, mtime, size, ino in command.reported:
            stat = None if mtime is None or size is None or ino is None else (mtime, size, ino)
            if self.project.is_project_file(path):
                entries.append((path, stat))
            elif self.config.preload and self.project.is_installed_package(path):
                packages.append((path, stat))
        if entries:
            self._scanner.watch(entries)
        if packages and self._packages is not None:
            self._packages.watch(packages)
        self._scanner.watch((p, stat_key(p)) for p in dict.fromkeys(command.paths) if p not in self._scanner)

    def _report(self, command: c.ReportOutcome) -> None:
        """The one path an outcome takes: recorded, streamed, and every waiter woken."""
        failure = command.failure
        event = ReloadEvent(
            generation=command.generation,
            outcome=command.outcome,
            changed=command.changed,
            duration=command.duration,
            summary=failure.summary if failure is not None else "",
            traceback=failure.traceback if failure is not None else "",
        )
        self._outcomes[command.generation] = event
        for queue in self._subscribers:
            queue.put_nowait(event)
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._settled:
            self._settled.notify_all()

    def _capture(self, line: str) -> None:
        self.output.append(line)

    def _read_env(self) -> tuple[Mapping[str, str], protocol.Failure | None]:
        if self.config.env_file is None:
            return {}, None
        try:
            return read_env_file(self.config.env_file), None
        except EnvFileError as exc:
            return {}, protocol.Failure(kind="env", summary=str(exc), files=(self.config.env_file,))

    def _worker_settings(
        self, preload: tuple[str, ...], handoff_fd: int, listen_fd: int
    ) -> protocol.Settings:
        c = self.config
        env, env_failure = self._read_env()  # a broken env file is reported by the load that reads it
        if env_failure is not None:
            logger.error("%s", env_failure.summary)
        return protocol.Settings(
            app=c.import_string,
            factory=c.factory,
            app_dir=c.app_dir,
            roots=tuple(self.project.roots),
            includes=tuple(c.reload_includes),
            excludes=tuple(c.reload_excludes),
            drain_timeout=c.drain_timeout,
            show_errors=c.errors_visible,
            # details only for loopback Host headers, unless --show-errors asked for them anyway
            only_loopback_hosts=c.is_loopback and c.show_errors is None,
            env=dict(env),
            preload=preload,
            uvicorn=c.uvicorn_options(),
            handoff_fd=handoff_fd,
            listen_fd=listen_fd,
        )

    # ---------------------------------------------------------------- stopping

    async def _stop(self, force: bool) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        await asyncio.gather(*(t for t in self._tasks if t is not current), return_exceptions=True)
        left_draining = self._tell_workers_to_stop(force)
        processes = list(self._processes.values())
        deadline = FORCED_STOP_WAIT if force else self.config.drain_timeout + 1.0
        waits = [p.aclose(deadline if p.id in left_draining else 0.0) for p in processes]
        killed = sum(await asyncio.gather(*waits))
        if killed:
            logger.warning("Killing %d worker(s) that did not stop within %.1f s.", killed, deadline)
        for process in processes:
            await asyncio.gather(*process.tasks, return_exceptions=True)
        self._processes.clear()
        self._held.close()
        if self._listener is not None:
            self._listener.close()
            if self.config.uds is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self.config.uds)
        self._stopped = True
        for queue in self._subscribers:
            queue.put_nowait(None)
        await self._notify()

    def _tell_workers_to_stop(self, force: bool) -> set[int]:
        """Let the machine say who drains and who is killed; the ids of those left to finish."""
        machine = self._machine
        draining: set[int] = set()
        if machine is not None and self.error is None:
            for command in machine.handle(e.Stop(force)):
                process = self._processes.get(getattr(command, "worker", -1))
                if isinstance(command, c.Drain) and process is not None:
                    process.send(protocol.Drain(command.timeout))
                elif isinstance(command, c.Kill) and process is not None:
                    process.kill()
            draining = {w.id for w in machine.workers.values() if w.role is Role.DRAINING}
        for process in self._processes.values():
            if process.id not in draining:
                process.kill()  # a worker the machine has not heard of yet (spawned while stopping)
        return draining


async def run_until_cancelled(supervisor: Supervisor) -> None:
    """Start, serve until cancelled (or an internal error), then stop: the body of serve(reload=True)."""
    try:
        await supervisor.start()
        await supervisor.wait_until_broken()
    finally:
        await stop_completely(supervisor)


async def stop_completely(supervisor: Supervisor, *, force: bool = False) -> None:
    """Stop, and finish stopping even if cancelled again meanwhile (then re-raise that)."""
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
