"""Carrying out the machine's commands, one event at a time.

Every event (a worker's message, its exit, a file change, a manual reload, a timer) goes through
one queue to one task, which hands it to the pure state machine (`machine.py`, whose table says
which moves are legal) and carries out the commands it returns, in order. Nothing here decides
anything about generations: it only does what the machine asks and tells it what happened.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable

from .. import _protocol as protocol
from . import commands as c
from . import machineevents as e
from . import projectlayers
from .assets import is_stylesheet_change, log_line
from .machine import Machine
from .outcomes import Outcomes
from .processes import Processes
from .table import Role

logger = logging.getLogger("asgireload")

WorkerSettings = Callable[[int, int, int], protocol.Settings]


class CommandRunner:
    """The machine's one event queue and its task; each command carried out by the processes,
    the scanners (`watch`), the outcomes or a timer."""

    def __init__(
        self,
        machine: Machine,
        processes: Processes,
        queue: asyncio.Queue[e.Event],
        outcomes: Outcomes,
        *,
        settings_for: Callable[[tuple[str, ...]], WorkerSettings],
        watch: Callable[[c.Watch], None],
        on_command: Callable[[c.Command], None] | None,
    ) -> None:
        self.machine = machine
        self.processes = processes
        self._queue = queue
        self._outcomes = outcomes
        self._settings_for = settings_for  # a new worker's Settings, given its preload list
        self._watch = watch
        self._on_command = on_command  # the command line's screen clearing
        self._timers: dict[e.TimerFired, asyncio.TimerHandle] = {}

    async def run(self) -> None:
        """Feed the machine one event at a time, until cancelled; an exception here is a bug."""
        while True:
            await self.feed(await self._queue.get())

    async def feed(self, event: e.Event) -> None:
        """Hand one event to the machine and carry out its commands. What a command reports back
        (a spawn's result) is handled next, before any other event."""
        if isinstance(event, e.WorkerExited):
            self.processes.exited(event.worker)
        results: collections.deque[e.Event] = collections.deque([event])
        layers = self.processes.layers
        if layers is not None and isinstance(event, e.WorkerFailed) and event.failure.kind == "stale-layer":
            layers.retire_all(event.failure.summary)
        if layers is not None and isinstance(event, e.FilesReported):
            layers.fingerprints.update(event.fingerprints)  # what a layer's modules must agree with
        projectlayers.django_seen(layers, event)
        unfit = projectlayers.standby_check(layers, self.machine, event)
        if unfit is not None:
            results.appendleft(unfit)  # before it: what loads next must not be that standby
        if isinstance(event, e.StandbyUnfit) and not event.why:
            results.remove(event)  # (only a nudge to look again)
        while results:
            for command in self.machine.handle(results.popleft()):
                result = await self._execute(command)
                if result is not None:
                    results.append(result)
        projectlayers.prepare_when_idle(layers, self.machine)

    async def _execute(self, command: c.Command) -> e.Event | None:
        processes = self.processes
        if self._on_command is not None:
            self._on_command(command)
        match command:
            case c.Spawn(worker, preload):
                record = self.machine.workers.get(worker)
                fork = record is not None and not record.cold
                return await processes.spawn(worker, self._settings_for(preload), fork=fork)
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
            case c.ReplaceTemplate():
                if processes.forkserver is not None:
                    processes.forkserver.replace()
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

    def tell_pages(self, assets: list[str]) -> None:
        """Live reload: the serving generation tells its open pages; the app does not restart."""
        restyle = is_stylesheet_change(assets)
        serving = self.machine.serving
        logger.info("%s", log_line(assets, restyle, served=serving is not None))
        if serving is not None:
            self.processes.send(serving.id, protocol.Assets(tuple(assets), restyle))

    def pids(self) -> dict[str, int]:
        """The processes of the workers by the machine's roles, and the fork server's template."""
        machine, processes = self.machine, self.processes
        pids = {}
        for role, worker in (
            ("serving", machine.serving),
            ("loading", machine.loading),
            ("standby", machine.standby),
        ):
            process = processes.get(worker.id if worker is not None else None)
            if process is not None and process.alive:
                pids[role] = process.pid
        if processes.forkserver is not None and (template := processes.forkserver.pid):
            pids["template"] = template
        for worker in machine.workers.values():  # until its exit is handled, and all it started has ended
            process = processes.get(worker.id)
            if worker.role is Role.DRAINING and process is not None:
                pids["draining"] = process.pid
        return pids

    def cancel_timers(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def tell_workers_to_stop(self, force: bool, *, machine_trusted: bool) -> set[int]:
        """Let the machine say who drains and who is killed (unless it stopped on an internal
        error); the ids of those left to finish."""
        machine, processes = self.machine, self.processes
        draining: set[int] = set()
        if machine_trusted:
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
