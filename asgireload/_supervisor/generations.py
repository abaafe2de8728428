"""The generation policy: which worker loads the next generation, when it serves, and when the
one before drains and the reload is announced.

A change supersedes a loading generation and loads a new one, on the warm standby if there is
one; the new one serves once it is ready, and only then is the old one told to drain; it is
announced once the old one said `draining`, or after ANNOUNCE_DEADLINE. Once the app proved it
cannot run beside its older generation (see recovery.py), every reload waits for the older ones
to exit first. Nothing here does I/O: each decision appends commands to the step's list.
"""

from __future__ import annotations

import logging

from .. import _protocol as protocol
from .._protocol import Failure
from . import commands as c
from . import machineevents as e
from .records import Announcement, Backoff, Cause, MachineContext, PendingLoad, Shows, Worker
from .reporting import Reporter
from .roster import Roster
from .standby import WarmStandby
from .table import Trigger, WorkerStage

# seconds an old generation has to say draining before the new one is announced anyway
ANNOUNCE_DEADLINE = 1.0
KILL_MARGIN = 1.0  # seconds past its drain timeout that a draining worker is killed
STANDBY_WAIT = 2.0  # seconds a reload waits for a warm worker still preloading, then starts a cold one
SLOW_START_REPORT = 5.0  # seconds between reports of a generation that has not said ready


class Generations:
    """The newest generation, why it loads, and the moves from load to serve to drain."""

    def __init__(
        self,
        context: MachineContext,
        roster: Roster,
        standby: WarmStandby,
        reporter: Reporter,
        backoff: Backoff,
    ) -> None:
        self._context = context
        self._out = context.out
        self._roster = roster
        self._standby = standby
        self._reporter = reporter
        self._backoff = backoff
        self.generation = 0  # the newest generation started (ready, failed, or still loading)
        self.cause: Cause | None = None  # why the newest generation loads
        self.after_exit: Cause | None = None  # a load that waits until no other generation runs
        self.exclusive = context.policy.sequential  # True once the app proved it cannot overlap itself

    def begin(self, cause: Cause) -> None:
        """Start the next generation, superseding one that is still loading."""
        if self.after_exit is not None:
            # The older generations are still finishing: fold this into the load that waits.
            self.after_exit = self.after_exit.merged_with(cause)
            return
        stale = self._roster.loading
        if stale is not None:
            ended = "; its debugger session was ended" if stale.paused else ""
            self._out.log(
                logging.INFO, f"Generation {stale.generation} is superseded by a newer change{ended}."
            )
            self._roster.kill(stale)  # it was never told to serve, so it has accepted nothing
            self._reporter.settle_failure()  # a superseded generation that had failed did fail
            if self.cause is not None:
                cause = self.cause.merged_with(cause)
        if self.exclusive and self._roster.apps_running():
            self.load_when_alone(cause)
            return
        self.load(cause)

    def load_when_alone(self, cause: Cause) -> None:
        """Stop every generation, and load once the last of them has exited."""
        current = self._roster.serving
        if current is not None:
            self.drain(current)
        self.after_exit = cause

    def load_after_exit(self) -> None:
        """A worker exited: the load that waited for every older generation to exit goes now."""
        if self.after_exit is not None and not self._roster.apps_running():
            cause, self.after_exit = self.after_exit, None
            self.load(cause)

    def load(self, cause: Cause, failure: Failure | None = None, cold: bool = False) -> None:
        """Start generation N+1: the standby loads it, or a worker spawned for it does."""
        self.generation += 1
        self.cause = cause
        worker = self._roster.standby
        if worker is None or cold:
            if worker is not None:
                self._roster.kill(worker)
            spawned = self._roster.spawn(WorkerStage.STARTING, self._standby.modules(not cold), cold=cold)
            spawned.pending_load = PendingLoad(failure)  # prepared once it runs, as if spawned right here
            return
        if worker.stage is WorkerStage.WARMING:
            self._out.later(STANDBY_WAIT, e.TimerKind.STANDBY_LATE, worker.id)
        self._roster.move(worker, Trigger.LOAD)
        self.prepare_load(worker, failure)

    def load_again_cold(self, cause: Cause, failure: Failure | None) -> None:
        """The same generation again, on a worker spawned without preloading (the OS refused one)."""
        self.generation -= 1
        self.load(cause, failure, cold=True)

    def end_load(self) -> None:
        """The newest generation's load is over, and it will not serve (it failed, or never started)."""
        self.cause = None

    def prepare_load(self, worker: Worker, failure: Failure | None) -> None:
        """Read the env file and tell the worker to load (at its hello, if it has not said it yet)."""
        env, env_failure = self._context.read_env()
        if env_failure is not None:
            self._out.log(logging.ERROR, env_failure.summary)
        now = self._context.clock()
        assert self.cause is not None
        self.cause.mark("load sent", now)
        worker.shows = Shows.GIVEN_FAILURE if failure or env_failure else Shows.APP
        worker.generation, worker.loaded_at = self.generation, now
        load = protocol.Load(self.generation, dict(env), failure or env_failure)
        if worker.stage is WorkerStage.STARTING:
            worker.pending_load = PendingLoad(failure, load)
        else:
            self._out.emit(c.Tell(worker.id, load))
        self._out.later(SLOW_START_REPORT, e.TimerKind.SLOW_START, worker.id)
        if env_failure is not None:
            worker.failure = env_failure
            self._reporter.record_failure(worker, env_failure, self.cause)

    def send_pending_load(self, worker: Worker) -> None:
        """It said hello: the load that waited for it goes out."""
        pending, worker.pending_load = worker.pending_load, None
        if pending is not None and pending.message is not None:
            self._out.emit(c.Tell(worker.id, pending.message))

    def serve(self, worker: Worker, shows: Shows) -> None:
        """The loading generation is ready (or shows its error page): it serves, the old one drains."""
        self._out.emit(c.Tell(worker.id, protocol.Serve()))
        old = self._roster.serving
        self._roster.move(worker, Trigger.SERVE)
        worker.shows = shows
        now = self._context.clock()
        cause = self.cause or Cause((), now, "start")
        cause.mark("ready", now)
        self.cause = None
        if shows is Shows.APP:
            self._backoff.reset()  # a healthy generation: the next crash starts the backoff afresh
            self._standby.started_well()
            self._reporter.healthy()
        if cause.retried and shows is Shows.APP and not self.exclusive:
            self.exclusive = True
            self._out.log(
                logging.WARNING,
                f"Generation {worker.generation} started only once the old one had stopped: the app "
                "seems to hold something exclusively at import (a port, a lock or a file). Reloading "
                "sequentially from now on (pass --sequential to start that way).",
            )
        # only now does the page answer in place of the app (its failure is reported then)
        announcement = Announcement(worker, cause) if shows is Shows.APP else Announcement(None)
        if old is not None:
            # Announced once the old generation answers nothing new, so that after the
            # "Reloaded" line (or an awaited ReloadEvent) every request gets the new code.
            self.drain(old, then=announcement)
        else:
            self._reporter.announce(announcement)
        self._standby.ensure()

    def drain(self, worker: Worker, then: Announcement | None = None) -> None:
        """Tell the serving generation to finish its requests and exit; `then` is announced once
        it said it answers nothing new."""
        self._roster.move(worker, Trigger.DRAIN)
        worker.after_drain = then
        if worker.paused:
            self.log_paused_drain(worker)
        self._out.emit(c.Tell(worker.id, protocol.Drain(self._context.policy.drain_timeout)))
        self._out.later(ANNOUNCE_DEADLINE, e.TimerKind.ANNOUNCE_DEADLINE, worker.id)
        self.arm_kill_deadline(worker)

    def arm_kill_deadline(self, worker: Worker) -> None:
        """The worker gives its requests the drain timeout from now: it is killed a little after."""
        self._out.later(
            self._context.policy.drain_timeout + KILL_MARGIN, e.TimerKind.KILL_DEADLINE, worker.id
        )

    def drained(self, worker: Worker) -> None:
        """It stopped answering new requests (it said so, exited, or took too long to say)."""
        then, worker.after_drain = worker.after_drain, None
        if then is not None:
            self._reporter.announce(then)

    def log_paused_drain(self, worker: Worker) -> None:
        current = self._roster.serving
        instead = f"generation {current.generation} serves" if current is not None else "no generation takes"
        self._out.log(
            logging.INFO,
            f"Generation {worker.generation} is paused at a breakpoint: {instead} new requests, and the "
            f"paused request finishes on generation {worker.generation}'s code when you continue; then "
            "it exits (no drain timeout while it is paused).",
        )

    def slow_start(self, worker: Worker) -> None:
        """Say every SLOW_START_REPORT seconds that the loading generation is not ready yet."""
        if not worker.paused:  # stopped at a breakpoint while starting: slow on purpose
            waited = self._context.clock() - worker.loaded_at
            importing = worker.stage in (WorkerStage.STARTING, WorkerStage.IMPORTING)
            doing = f"importing {self._context.policy.app}" if importing else "running lifespan start-up"
            self._out.log(
                logging.WARNING,
                f"Generation {worker.generation} is still starting after {waited:.0f} s: {doing} "
                f"(pid {worker.pid}).",
            )
        self._out.later(SLOW_START_REPORT, e.TimerKind.SLOW_START, worker.id)

    def standby_late(self, worker: Worker) -> None:
        """The standby told to load has not said hello in time: a cold worker loads instead."""
        self._out.log(
            logging.WARNING,
            f"The warm worker was not ready {STANDBY_WAIT:.0f} s after the reload began; starting a "
            "fresh one.",
        )
        self._roster.kill(worker)
        self.load(self.cause or Cause((), self._context.clock(), "reload"), cold=True)
