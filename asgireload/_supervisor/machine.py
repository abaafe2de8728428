"""The supervisor's core: a state machine with no I/O and no asyncio.

`Machine.handle(event)` takes one event (machineevents.py) and returns the commands
(commands.py) the shell must carry out, in order. The wall clock and the env file reach it only
through the two callables it is given, so a test drives it with a fake clock and a fake env
file: events in, commands out, no process. Workers are named by ids; the shell maps them to
processes.

Every event about a worker first moves it to the one stage the table gives (table.py, with its
diagram); then the machine decides what follows, with its parts, each of one concept:

- `Roster` (roster.py): the workers by id; spawns, kills, and moves them through the table;
- `Generations` (generations.py): which worker loads the next generation, when it serves, when
  the one before drains, and when the reload is announced;
- `Recovery` (recovery.py): what a failed load, a crash or a spawn failure leads to;
- `WarmStandby` (standby.py): the warm worker and the modules it preloads;
- `Reporter` (reporting.py): each generation's outcome and log line, the app's failure.

They share a `MachineContext` (the policy, the clock, the env file, the step's commands).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

from .. import _protocol as protocol
from .._protocol import Failure
from . import commands as c
from . import machineevents as e
from .generations import Generations
from .records import Backoff, Cause, MachineContext, Policy, ReadEnv, Shows, Worker, describe_exit
from .recovery import Recovery
from .reporting import Reporter
from .roster import Roster
from .standby import WarmStandby
from .table import IGNORED, IllegalTransition, Role, Trigger, WorkerStage, after_event, trigger_of


class Machine:
    """The reload logic of one server. Feed it events; carry out the commands it returns."""

    def __init__(self, policy: Policy, *, clock: Callable[[], float], read_env: ReadEnv) -> None:
        self._context = context = MachineContext(policy, clock, read_env)
        self._out = context.out
        self.stopped = False
        self._packages_replaced_at = float("-inf")  # when a package change last replaced the template
        backoff = Backoff()
        self.roster = Roster(context)
        self.standby_keeper = WarmStandby(context, self.roster)
        self.reporter = Reporter(context)
        self.generations = Generations(context, self.roster, self.standby_keeper, self.reporter, backoff)
        self.recovery = Recovery(context, self.roster, self.generations, self.reporter, backoff)
        self._backoff = backoff

    # ---------------------------------------------------------------- what the shell reads

    @property
    def policy(self) -> Policy:
        return self._context.policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        """A settings file was saved: the next decisions follow the new policy."""
        self._context.policy = policy

    @property
    def workers(self) -> dict[int, Worker]:
        return self.roster.workers

    @property
    def serving(self) -> Worker | None:
        return self.roster.serving

    @property
    def loading(self) -> Worker | None:
        return self.roster.loading

    @property
    def standby(self) -> Worker | None:
        return self.roster.standby

    @property
    def generation(self) -> int:
        """The newest generation started (ready, failed, or still loading)."""
        return self.generations.generation

    @property
    def failure(self) -> Failure | None:
        """Why the app does not run, while it does not."""
        return self.reporter.failure

    @property
    def preload(self) -> list[str]:
        return self.standby_keeper.preload

    @property
    def state(self) -> Literal["starting", "ready", "failed", "reloading"]:
        """starting, ready, reloading (a healthy generation serves, a newer one loads), or failed."""
        if not self.reporter.any_outcome:
            return "starting"
        current = self.serving
        healthy = current is not None and not current.error_page
        if self.loading is not None and (healthy or self.failure is None):
            return "reloading"
        if healthy:
            return "ready"
        return "reloading" if self.failure is None else "failed"

    # ---------------------------------------------------------------- the one way in

    def handle(self, event: e.Event) -> list[c.Command]:
        """Take one event; return the commands it calls for. Raises IllegalTransition."""
        if self.stopped:
            raise IllegalTransition(f"The server has stopped, so {event} cannot happen any more.")
        self._out.take()  # (nothing is left over, unless the step before raised)
        match event:
            case e.TimerFired(kind=e.TimerKind.RETRY):
                self.recovery.retry_due()
            case e.FileChanged():
                self._file_changed(event)
            case e.ReloadRequested(reason):
                self.generations.begin(Cause((), self._context.clock(), reason))
            case e.PackagesChanged(paths, since):
                self._packages_changed(paths, since)
            case e.StandbyUnfit(why):
                self._out.log(logging.DEBUG, f"Replacing the warm worker: {why}.")
                self.standby_keeper.replace()
            case e.Stop(force):
                self._stop(force)
            case _:
                self._worker_event(event)
        return self._out.take()

    def _file_changed(self, event: e.FileChanged) -> None:
        self._backoff.reset()
        policy = self._context.policy
        settings_files = (policy.env_file, *policy.settings_files)
        if any(path in event.paths for path in settings_files if path is not None):
            self.standby_keeper.replace()  # it imported packages, or was started, under the old values
        cause = Cause(event.paths, event.since, "change")
        cause.mark("detected", self._context.clock())
        self.generations.begin(cause)

    def _packages_changed(self, paths: tuple[str, ...], since: float | None) -> None:
        """A new template and a new standby, unless they were made after this change was first
        seen: one install is often reported twice (the site watch, the packages' scanner)."""
        if since is not None and since < self._packages_replaced_at:
            return
        self._packages_replaced_at = self._context.clock()
        names = ", ".join(self._context.relative(p) for p in paths[:3])
        self._out.log(logging.INFO, f"Installed packages changed ({names}); replacing the warm worker.")
        self._out.emit(c.ReplaceTemplate())  # first: the new standby is forked from the new template
        self.standby_keeper.replace()

    def _stop(self, force: bool) -> None:
        """Drain what serves (kill it, with force), let a draining worker that was ready finish,
        kill the rest."""
        self.stopped = True
        for worker in list(self.workers.values()):
            if not force and worker.stage is WorkerStage.SERVING:
                self.roster.move(worker, Trigger.DRAIN)  # no deadlines: the shell waits for its exit
                self._out.emit(c.Tell(worker.id, protocol.Drain(self._context.policy.drain_timeout)))
            elif not force and worker.stage is WorkerStage.DRAINING and worker.shows is not Shows.ITS_FAILURE:
                pass  # it said ready: already finishing its requests
            else:
                self.roster.move(worker, Trigger.STOP)
                self._out.emit(c.Kill(worker.id))

    # ---------------------------------------------------------------- events about one worker

    def _worker_event(self, event: e.WorkerEvent) -> None:
        """Move the worker to the stage the table gives, then decide what follows."""
        worker = self.workers.get(event.worker) if event.worker is not None else None
        was = worker.stage if worker is not None else WorkerStage.GONE
        after = after_event(was, trigger_of(event), event.worker, event)
        if after is IGNORED or worker is None:
            return
        worker.stage = after
        match event:
            case e.WorkerStarted(_, pid, held):
                self._started(worker, pid, held)
            case e.SpawnFailed(_, reason):
                self._spawn_failed(worker, was, reason)
            case e.WorkerGreeted(_, preload_failed):
                self.standby_keeper.preloads_failed(preload_failed)
                if worker.stage is WorkerStage.IMPORTING:
                    self.generations.send_pending_load(worker)
            case e.FilesReported():
                self._files(worker, event)
            case e.WorkerReady(_, error_page):
                self.generations.serve(worker, Shows.GIVEN_FAILURE if error_page else Shows.APP)
            case e.WorkerFailed(_, failure):
                self.recovery.failed(worker, failure)
            case e.WorkerDraining() | e.TimerFired(kind=e.TimerKind.ANNOUNCE_DEADLINE):
                # (the deadline: announced even if the old one is unresponsive)
                self.generations.drained(worker)
            case e.WorkerExited(_, returncode):
                self._exited(worker, was, returncode)
            case e.ChannelBroken(_, reason):
                self._broke(worker, was, reason)
            case e.WorkerPaused(_, announce):
                self._paused(worker, announce)
            case e.WorkerResumed():
                self._resumed(worker)
            case e.TimerFired(kind=e.TimerKind.SLOW_START):
                self.generations.slow_start(worker)
            case e.TimerFired(kind=e.TimerKind.STANDBY_LATE):
                self.generations.standby_late(worker)
            case e.TimerFired(kind=e.TimerKind.FAILURE_GRACE):
                self.recovery.grace_over(worker)
            case e.TimerFired(kind=e.TimerKind.KILL_DEADLINE):
                self._past_drain_timeout(worker)

    def _started(self, worker: Worker, pid: int, held: int) -> None:
        worker.pid = pid
        worker.held = held
        pending = worker.pending_load
        if worker.stage is WorkerStage.STARTING and pending is not None and pending.message is None:
            self.generations.prepare_load(worker, pending.failure)  # spawned for this load

    def _spawn_failed(self, worker: Worker, was: WorkerStage, reason: str) -> None:
        self.roster.forget(worker)
        if was.role is Role.STANDBY:
            self._out.log(logging.WARNING, f"{reason}; the next reload starts one instead of a warm worker.")
        elif was.role is Role.LOADING:
            self.recovery.spawn_failed(worker, reason)

    def _files(self, worker: Worker, event: e.FilesReported) -> None:
        worker.imports.add(event.imports)
        worker.imports.env_set.update(event.env)
        if event.django is not None:
            worker.imports.django = event.django
        if event.files:
            self._out.emit(c.Watch(reported=event.files))
        self.standby_keeper.learn(event.modules)

    def _exited(self, worker: Worker, was: WorkerStage, returncode: int | None) -> None:
        self.roster.forget(worker)
        self.generations.drained(worker)
        how = describe_exit(returncode)
        if was.role is Role.STANDBY:
            self.standby_keeper.died(worker, greeted=was is WorkerStage.WARM)
        elif was.role is Role.LOADING:  # (a failure that waited for its grace is what it had to show)
            self.recovery.crashed(
                worker, f"The app's worker process {how} before it was ready", was is WorkerStage.FAILED
            )
        elif was.role is Role.SERVING:
            self.recovery.crashed(worker, f"The app's worker process {how} while serving")
        self.generations.load_after_exit()

    def _broke(self, worker: Worker, was: WorkerStage, reason: str) -> None:
        self._out.log(logging.ERROR, f"Worker {worker.id} (pid {worker.pid}) sent {reason}; stopping it.")
        if was.role is Role.STANDBY:  # never loaded: replace it now (a standby death)
            self.roster.kill(worker)
            self.standby_keeper.died(worker, greeted=was is WorkerStage.WARM)
        else:
            self._out.emit(c.Kill(worker.id))  # its stage stays: its exit is what counts

    def _paused(self, worker: Worker, announce: bool) -> None:
        if worker.paused_since is None:
            worker.paused_since = self._context.clock()
        if worker.stage is WorkerStage.DRAINING and announce:
            self.generations.log_paused_drain(worker)

    def _resumed(self, worker: Worker) -> None:
        if worker.paused_since is not None:
            worker.time_paused += self._context.clock() - worker.paused_since
            worker.paused_since = None
        if worker.stage is WorkerStage.DRAINING:
            # the worker gives its requests the drain timeout again from now: so does its deadline
            self.generations.arm_kill_deadline(worker)

    def _past_drain_timeout(self, worker: Worker) -> None:
        if worker.paused:  # it has its drain timeout again once resumed (see _resumed)
            self._out.log(
                logging.INFO,
                f"Generation {worker.generation} is past its drain timeout, but paused at a "
                "breakpoint: it is left to finish once you continue.",
            )
        elif self._context.policy.under_debugger:
            self._out.log(
                logging.WARNING,
                f"Generation {worker.generation} is still finishing its requests after the drain "
                "timeout; under a debugger it may be stopped at a breakpoint, so it is left to end "
                "by itself.",
            )
        else:
            self._out.log(logging.WARNING, f"Worker {worker.id} did not finish draining in time; killing it.")
            self._out.emit(c.Kill(worker.id))
