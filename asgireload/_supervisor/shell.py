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
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any

from .. import _handoff
from .. import _protocol as protocol
from .._paths import relative
from .._watchfilter import WatchFilter
from ..config import Config
from ..errors import AsgireloadError, ReloadTimeout, StartupError
from ..events import EventStream, ReloadEvent, State
from . import commands as c
from . import editable, forkserver, projectlayers, settings, sockets
from . import events as e
from .assets import LiveAssets, is_stylesheet_change, log_line
from .debugging import DebugTerminal, coverage_misses_workers
from .liveconfig import LiveSettings
from .machine import Machine
from .outcomes import Outcomes
from .preflight import preflight
from .processes import Processes
from .records import Policy
from .scanner import Scanner, stat_key
from .sitestate import SiteWatch
from .table import Role

logger = logging.getLogger("asgireload")

PACKAGES_POLL = 30.0  # seconds between full scans of preloaded packages (file events are the hint)
FORCED_STOP_WAIT = 2.0  # seconds workers killed at once are given to be reaped


class Supervisor:
    """Runs generations of workers for one Config. Use it through serve() or Reloader."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._fd_limit: int | None = None  # the soft limit before start() raised it
        roots = editable.editable_roots(config.app_dir) if config.watch_editable else []
        self.project = WatchFilter(
            (*config.watch_roots, *roots), config.reload_includes, config.reload_excludes
        )
        if roots:
            logger.info(
                "Also watching packages installed in editable mode from this checkout: %s "
                "(--no-watch-editable turns this off).",
                ", ".join(relative(p) for p in roots),
            )
        self.live = LiveAssets(config, self.project.roots)
        self.url = ""
        self.output: collections.deque[str] = collections.deque(maxlen=20000)
        self.error: BaseException | None = None  # an internal error that stopped the supervisor
        self._machine: Machine | None = None
        self._queue: asyncio.Queue[e.Event] = asyncio.Queue()
        self._listener: Any = None
        self._scanner: Scanner | None = None
        self._packages: Scanner | None = None  # installed packages the standby preloads
        self._site: SiteWatch | None = None  # what a process started now would import from
        self._tasks: list[asyncio.Task[None]] = []
        self._processes: Processes | None = None
        self._timers: dict[e.TimerFired, asyncio.TimerHandle] = {}
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
        machine = self._machine
        if machine is None:
            return {}
        assert self._processes is not None
        pids = {}
        for role, worker in (
            ("serving", machine.serving),
            ("loading", machine.loading),
            ("standby", machine.standby),
        ):
            process = self._processes.get(worker.id if worker is not None else None)
            if process is not None and process.alive:
                pids[role] = process.pid
        if self._processes.forkserver is not None and (template := self._processes.forkserver.pid):
            pids["template"] = template
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
        self._broken = asyncio.get_running_loop().create_future()
        self._broken.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved here
        try:
            self._scanner = Scanner(
                self._on_change,
                interval=self.config.poll_interval,
                includes=self.live.scan_rules if self.live.scan_rules.includes else None,
                force_polling=self.config.force_polling,
                quiet_gap=self.config.reload_delay,
            )
            projectlayers.connect(
                self._processes.layers, machine, self._scanner.stat_of, self._queue.put_nowait
            )
            self._start_task(self._run(), "asgireload-supervisor")
            self._start_task(self._scanner.run(), "asgireload-scanner")
            if self.config.standby:  # warm processes, started before the next reload
                self._site = SiteWatch(lambda paths: self._on_packages_change(paths, time.time()))
                self._start_task(self._site.run(), "asgireload-site")
            if self.config.preload and self.config.standby:
                self._packages = Scanner(
                    self._on_packages_change,
                    interval=PACKAGES_POLL,
                    force_polling=self.config.force_polling,
                    fast_poll=None,  # an upgrade is found by the next full scan: no fast polling
                )
                self._start_task(self._packages.run(), "asgireload-packages")
            if self.config.env_file is not None:
                self._scanner.watch([(self.config.env_file, stat_key(self.config.env_file))])
            for path in self.live_settings.files if self.live_settings is not None else ():
                self._scanner.watch([(path, stat_key(path))])
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
        await asyncio.shield(self._stop_task)

    def kill_all(self) -> None:
        """Kill every worker now (a second Ctrl-C); stop() then finishes at once."""
        if self._processes is not None:
            self._processes.kill_all()

    def request_reload(self, reason: str = "requested") -> None:
        self._check_site()
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

    # ---------------------------------------------------------------- events in, commands out

    def _on_change(self, paths: list[str], since: float) -> None:
        assets, code = self.live.split(paths)
        if assets:
            self._tell_pages(assets)
        if code and self.live_settings is not None:
            code = self._reconfigure(code)
        if code:
            if self._processes is not None and self._processes.layers is not None:
                self._processes.layers.changed(code)  # layers holding these files fork no more
            self._check_site()
            self._queue.put_nowait(e.FileChanged(tuple(code), since))

    def _reconfigure(self, paths: list[str]) -> list[str]:
        """A settings file was saved: the next generation gets the new Config (the machine replaces
        the warm worker); an invalid or meaningless save starts no reload."""
        assert self.live_settings is not None
        reread = self.live_settings.reread(paths)
        if reread.config is not None:
            self.config = reread.config
            if self._machine is not None:
                self._machine.policy = self._policy()
        return [path for path in paths if path not in reread.quiet]

    def _policy(self) -> Policy:
        files = self.live_settings.files if self.live_settings is not None else ()
        return dataclasses.replace(settings.policy_for(self.config, self.url), settings_files=files)

    def _check_site(self) -> None:
        """Before a reload uses a warm process: one that predates a change to site-packages is
        replaced first, so the reload imports what a fresh interpreter would."""
        if self._site is not None:
            self._site.check()

    def _tell_pages(self, assets: list[str]) -> None:
        """Live reload: the serving generation tells its open pages; the app does not restart."""
        restyle = is_stylesheet_change(assets)
        machine, processes = self._machine, self._processes
        serving = machine.serving if machine is not None and processes is not None else None
        logger.info("%s", log_line(assets, restyle, served=serving is not None))
        if serving is not None and processes is not None:
            processes.send(serving.id, protocol.Assets(tuple(assets), restyle))

    def _on_packages_change(self, paths: list[str], since: float) -> None:
        if self._processes is not None and self._processes.forkserver is not None:
            self._processes.forkserver.replace()  # before the machine asks for a new standby
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
        assert self._processes is not None
        if isinstance(event, e.WorkerExited):
            self._processes.exited(event.worker)
        results: collections.deque[e.Event] = collections.deque([event])
        unfit = projectlayers.standby_check(self._processes.layers, self._machine, event)
        if unfit is not None:
            results.appendleft(unfit)  # before it: what loads next must not be that standby
        if isinstance(event, e.StandbyUnfit) and not event.why:
            results.remove(event)  # (only a nudge to look again)
        while results:
            for command in self._machine.handle(results.popleft()):
                result = await self._execute(command)
                if result is not None:
                    results.append(result)
        projectlayers.prepare_when_idle(self._processes.layers, self._machine)

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

    async def _execute(self, command: c.Command) -> e.Event | None:
        processes = self._processes
        assert processes is not None
        if self.on_command is not None:
            self.on_command(command)
        match command:
            case c.Spawn(worker, preload):
                roots = self.project.roots
                record = self._machine.workers.get(worker) if self._machine is not None else None
                return await processes.spawn(
                    worker,
                    functools.partial(
                        settings.worker_settings, self.config, roots, preload, self._fd_limit, self.live.run
                    ),
                    fork=record is not None and not record.cold,
                )
            case c.Tell(worker, message):
                processes.send(worker, message)
                if isinstance(message, protocol.Serve):
                    processes.serve_held()
            case c.Kill(worker):
                processes.kill(worker)
            case c.Watch():
                self._watch(command)
            case c.ReportOutcome():
                self._outcomes.report(command)
            case c.ArmTimer(delay, event):
                if (earlier := self._timers.pop(event, None)) is not None:
                    earlier.cancel()
                self._timers[event] = asyncio.get_running_loop().call_later(delay, self._timer_fired, event)
            case c.Log(level, text):
                logger.log(level, text)
        return None

    def _timer_fired(self, event: e.TimerFired) -> None:
        self._timers.pop(event, None)
        self._queue.put_nowait(event)

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
        self.live.note_code(path for path, _ in entries)
        self.live.note_code(command.paths)
        if entries:
            self._scanner.watch(entries)
        if packages and self._packages is not None:
            self._packages.watch(packages)
        self._scanner.watch((p, stat_key(p)) for p in dict.fromkeys(command.paths) if p not in self._scanner)

    def _capture(self, line: str) -> None:
        self.output.append(line)

    # ---------------------------------------------------------------- stopping

    async def _stop(self, force: bool) -> None:
        """The one stop (its own task, see stop()): no more events, then every worker ends."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        deadline = FORCED_STOP_WAIT if force else self.config.drain_timeout + 1.0
        if self._processes is not None:
            try:
                left_draining = self._tell_workers_to_stop(force)
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

    def _tell_workers_to_stop(self, force: bool) -> set[int]:
        """Let the machine say who drains and who is killed; the ids of those left to finish."""
        machine, processes = self._machine, self._processes
        assert processes is not None
        draining: set[int] = set()
        if machine is not None and self.error is None:
            for command in machine.handle(e.Stop(force)):
                if isinstance(command, c.Tell):
                    processes.send(command.worker, command.message)  # a drain
                elif isinstance(command, c.Kill):
                    processes.kill(command.worker)
            draining = {w.id for w in machine.workers.values() if w.role is Role.DRAINING}
        for process in processes:
            if process.id not in draining:
                processes.kill(process.id)  # one the machine has not heard of yet (spawned while stopping)
        return draining


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
